"""Storage URLs shown, logged or saved with the password masked (issue #18).

Unit tests of :func:`flipsearch.storage.mask_storage` and its helpers, and one run of
``flipsearch sweep`` whose storage URL carries a marker password: the marker must appear
in no file the run writes and no line it prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flipsearch.errors import ConfigError
from flipsearch.storage import _connectable
from flipsearch.sweep import SweepConfig
from flipsearch.sweep._provenance import check_config
from flipsearch.trials import (
    mask_storage,
    parse_storage,
    redact_storage_password,
    storage_identity,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ana:s3cret@db.lab/sweeps", "postgresql://ana:***@db.lab/sweeps"),
        (
            "postgresql+psycopg2://ana:s3cret@db.lab:5432/sweeps",
            "postgresql+psycopg2://ana:***@db.lab:5432/sweeps",
        ),
        # URL-encoded characters (%40 is '@', %2F '/', %3A ':') stay inside the mask.
        ("postgresql://ana:p%40ss%2Fw%3Ard@db/s", "postgresql://ana:***@db/s"),
        # A password with '/', '?' and ':' unencoded, as SQLAlchemy parses it (up to '@').
        ("mysql://root:a/b?c:d@127.0.0.1/opt", "mysql://root:***@127.0.0.1/opt"),
        ("postgresql://:onlypw@db/s", "postgresql://:***@db/s"),
        # No password: unchanged.
        ("postgresql://ana@db.lab/sweeps", "postgresql://ana@db.lab/sweeps"),
        ("postgresql://db.lab:5432/sweeps", "postgresql://db.lab:5432/sweeps"),
        ("postgresql:///sweeps?host=/tmp/pg", "postgresql:///sweeps?host=/tmp/pg"),
        # Passwords in the query string; other parameters kept.
        (
            "postgresql://ana@db/s?sslmode=require&password=s3cret&connect_timeout=5",
            "postgresql://ana@db/s?sslmode=require&password=***&connect_timeout=5",
        ),
        ("mysql://u@h/d?PASSWD=x1", "mysql://u@h/d?PASSWD=***"),
        (
            "postgresql://ana:pw1@db/s?sslpassword=pw2",
            "postgresql://ana:***@db/s?sslpassword=***",
        ),
        # SQLite and journal paths have no credentials, even with ':' or '@' in them.
        ("sqlite:///results/demo/study.db", "sqlite:///results/demo/study.db"),
        ("sqlite:////abs/p@th/study.db", "sqlite:////abs/p@th/study.db"),
        ("journal:results/a:b@c/study.log", "journal:results/a:b@c/study.log"),
        ("results/demo/study.log", "results/demo/study.log"),
        (None, None),
    ],
)
def test_mask_storage_hides_passwords_and_nothing_else(url, shown):
    assert mask_storage(url) == shown
    assert mask_storage(shown) == shown  # idempotent: a saved URL masks to itself


def test_masked_url_connects_without_a_password_so_libpq_reads_pgpassword():
    assert _connectable("postgresql://ana:***@db/s") == "postgresql://ana@db/s"
    assert _connectable("postgresql://ana:***@db/s?password=***") == "postgresql://ana@db/s"
    assert (
        _connectable("postgresql://ana@db/s?sslmode=require&password=***&x=1")
        == "postgresql://ana@db/s?sslmode=require&x=1"
    )
    # A real password is used as given.
    assert _connectable("postgresql://ana:s3cret@db/s") == "postgresql://ana:s3cret@db/s"


def test_redact_removes_the_password_as_written_and_decoded():
    url = "postgresql://ana:p%40ss@db/s?password=qw3rty"
    text = "auth failed for p%40ss / p@ss / qw3rty at db"
    assert redact_storage_password(text, url) == "auth failed for *** / *** / *** at db"
    assert redact_storage_password("x", "journal:s.log") == "x"


def test_bad_scheme_error_masks_the_password():
    with pytest.raises(ConfigError) as err:
        parse_storage("oracle://ana:s3cret@db/s", results_dir="r", study="s")
    assert "s3cret" not in str(err.value) and "oracle://ana:***@db/s" in str(err.value)


def test_config_json_holds_the_masked_url_and_resume_compares_masked_forms(tmp_path):
    url = "postgresql://ana:s3cret@db.lab/sweeps"
    config = SweepConfig(study="s", trials=1, results_dir=str(tmp_path), storage=url)
    check_config(config)
    saved = (tmp_path / "s" / "config.json").read_text()
    assert "s3cret" not in saved and "postgresql://ana:***@db.lab/sweeps" in saved
    assert config.storage == url  # the in-memory value keeps the password
    assert "s3cret" not in repr(config) and "ana:***@db.lab" in repr(config)
    check_config(config)  # resuming: the same storage matches its masked record
    # ... and so does the same URL with the password left to PGPASSWORD or .pgpass.
    env_pw = SweepConfig(
        study="s", trials=1, results_dir=str(tmp_path), storage="postgresql://ana@db.lab/sweeps"
    )
    check_config(env_pw)
    assert storage_identity(url) == storage_identity(env_pw.storage) == env_pw.storage
    other = SweepConfig(
        study="s", trials=1, results_dir=str(tmp_path), storage="postgresql://ana:s3cret@db2/x"
    )
    with pytest.raises(ConfigError) as err:
        check_config(other)
    assert "s3cret" not in str(err.value)
    assert "('postgresql://ana@db.lab/sweeps')" in str(err.value)  # the last run's record
    assert "got 'postgresql://ana:***@db2/x'" in str(err.value)


MARKER = "Zq7mMarkerPw"


def test_sweep_with_a_password_in_the_url_leaks_it_nowhere(tmp_path):
    # Port 1 on loopback refuses the connection: the sweep fails fast, after writing
    # config.json; the marker password must be in no file and no printed line.
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg 3) is not installed")
    url = f"postgresql://ana:{MARKER}@127.0.0.1:1/sweeps?connect_timeout=3&password={MARKER}x"
    results = tmp_path / "results"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PGPASSWORD", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flipsearch.cli",
            "-v",
            "sweep",
            "--study",
            "leak",
            "--trials",
            "1",
            "--storage",
            url,
            "--results-dir",
            str(results),
            "--cache",
            str(tmp_path / "cache.sqlite"),
            "--limit-harmful",
            "1",
            "--limit-benign",
            "1",
            "--max-tokens",
            "1",
            "--engine",
            "hf",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 2, printed[-3000:]
    assert "`storage` must be a database that accepts the connection" in printed
    assert "postgresql://ana:***@127.0.0.1:1/sweeps" in printed
    assert MARKER not in printed
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert results / "leak" / "config.json" in written
    for path in written:
        assert MARKER.encode() not in path.read_bytes(), path
