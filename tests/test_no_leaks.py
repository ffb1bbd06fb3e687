"""Issue #18 end to end: no password, token or absolute cache path in anything the tool writes.

One real session on the embedded model, through the command lines a user types: a sweep
whose storage URL carries a marker password (it cannot connect), a sweep on the default
storage, export, report, and one training step, with a marker ``HF_TOKEN`` in the
environment. Then every file written and every line printed is searched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flipsearch.models import cache_dir

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pw7LeakMarker"
TOKEN = "hf_TokenLeakMarker42"


def _cli(module: str, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_sweep_export_report_and_training_leak_no_secret_and_no_cache_path(
    tmp_path, embedded_model_path
):
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg 3) is not installed")
    cache_root = str(cache_dir().resolve())
    assert str(embedded_model_path.resolve()).startswith(cache_root)  # the model lives there
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_TOKEN": TOKEN,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    env.pop("PGPASSWORD", None)
    sizes = ["--limit-harmful", "2", "--limit-benign", "1", "--max-tokens", "4"]
    sizes += ["--engine", "hf", "--no-progress", "--results-dir", "results"]
    printed: list[str] = []

    url = f"postgresql://ana:{PASSWORD}@127.0.0.1:1/sweeps?connect_timeout=3"
    rc, out = _cli(
        "flipsearch.cli",
        ["sweep", "--study", "pg", "--trials", "1", "--storage", url, *sizes],
        tmp_path,
        env,
    )
    printed.append(out)
    assert rc == 2 and "ana:***@127.0.0.1:1" in out, out[-2000:]

    steps = [
        ("flipsearch.cli", ["sweep", "--study", "s", "--trials", "1", *sizes]),
        ("flipsearch.cli", ["export", "--study", "s", "--out", "best.json"]),
        ("flipsearch.cli", ["report", "--study", "s"]),
        (
            "opsa_train.cli",
            [
                "run",
                "--context",
                "best.json",
                "--out",
                "runs/r",
                "--steps",
                "1",
                "batch_size=1",
                "max_new_tokens=4",
                "max_prompts=1",
                "engine=hf",
                "checkpoint_every=1",
            ],
        ),
    ]
    for module, args in steps:
        rc, out = _cli(module, args, tmp_path, env)
        printed.append(out)
        assert rc == 0, f"{module} {args[0]} failed:\n{out[-3000:]}"

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    for expected in ("best.json", "results/s/config.json", "runs/r/config.json"):
        assert expected in names, sorted(names)
    assert any(n.startswith("runs/r/final/") for n in names)
    for marker in (PASSWORD, TOKEN, cache_root):
        for text in printed:
            assert marker not in text, f"{marker!r} printed:\n{text[-3000:]}"
        for path in written:
            assert marker.encode() not in path.read_bytes(), f"{marker!r} in {path}"
