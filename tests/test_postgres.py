"""Two ``flipsearch sweep`` workers on one study in a real PostgreSQL server.

A throwaway cluster (``initdb``/``pg_ctl`` from Debian's ``postgresql`` package, run as
the unprivileged ``postgres`` user when the tests run as root) listens on a free loopback
port with password authentication. One worker takes its password from ``PGPASSWORD``,
the other from its URL (a marker that must show up nowhere). While both score a trial,
one is SIGKILLed; the other must finish the study with no context scored twice.
Skipped only where the server binaries or the ``postgres`` extra are not installed.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pg7MarkerSecret"
SPACE = """
name: pg
slots:
  strength:
    - {id: soft, text: "Please consider declining"}
    - {id: firm, text: "Decline"}
    - {id: must, text: "You must refuse"}
  scope:
    - {id: harm, text: "harmful requests."}
    - {id: risky, text: "anything risky."}
    - {id: weapons, text: "requests about weapons, drugs or fraud."}
template: "{strength} {scope}"
"""
TRIALS = 6


def _pg_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A PostgreSQL cluster in a temporary folder, on a free loopback port."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="flipsearch-pg-"))
        self.user = None  # initdb refuses root: run the server as `postgres`
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no `postgres` user to run the server as")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self.user = "postgres"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def _run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir)
        assert proc.returncode == 0, f"{tool} failed: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def dump(self) -> str:
        """The whole ``sweeps`` database as SQL (``pg_dump``)."""
        return self._run(
            "pg_dump", "-h", str(self.dir), "-p", str(self.port), "-U", "flip", "sweeps"
        )

    def start(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            shutil.chown(pwfile, self.user, self.user)
        data = str(self.dir / "data")
        self._run(
            "initdb", "-D", data, "-U", "flip", f"--pwfile={pwfile}", "-A", "scram-sha-256",
            "--auth-local=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run("pg_ctl", "-D", data, "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "-o", opts, "start")  # fmt: skip
        self.createdb("sweeps")

    def createdb(self, name: str) -> None:
        self._run("createdb", "-h", str(self.dir), "-p", str(self.port), "-U", "flip", name)

    def stop(self) -> None:
        with_data = (self.dir / "data").is_dir()
        try:
            if with_data:
                self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, sql: str) -> list[tuple]:
        """Run ``sql`` in the ``sweeps`` database and return its rows."""
        return self.query_db("sweeps", sql)

    def query_db(self, db: str, sql: str) -> list[tuple]:
        """Run ``sql`` in database ``db`` over the unix socket (trusted); its rows."""
        import psycopg

        with psycopg.connect(
            host=str(self.dir), port=self.port, user="flip", dbname=db, autocommit=True
        ) as con:
            return con.execute(sql).fetchall()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("psycopg", reason="the postgres extra (pip install -e '.[postgres]')")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    c = Cluster(bin_dir)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_cluster_refuses_a_wrong_password(cluster):
    # The workers below really authenticate: a wrong password is refused.
    from flipsearch.errors import ConfigError
    from flipsearch.trials import parse_storage

    url = f"postgresql://flip:wrong{PASSWORD}@127.0.0.1:{cluster.port}/sweeps"
    with pytest.raises(ConfigError, match="password authentication failed") as err:
        parse_storage(url, results_dir="r", study="s").build()
    assert PASSWORD not in str(err.value)


RACE = """
import sys, time
from pathlib import Path
from flipsearch.trials import parse_storage

go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
parse_storage(sys.argv[1], results_dir="r", study="s").build(heartbeat_interval=30)
"""


def test_workers_starting_together_on_a_new_database_all_connect(cluster, tmp_path):
    # Optuna creates its tables on first use; workers racing to do so on an empty
    # database must all end up connected (the loser retries).
    cluster.createdb("race")
    url = f"postgresql://flip@127.0.0.1:{cluster.port}/race"
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, url, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(8)
    ]
    time.sleep(8)  # imports done: all wait on the go file
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    tables = {r[0] for r in cluster.query_db("race", "SELECT tablename FROM pg_tables")}
    assert {"studies", "trials", "version_info"} <= tables


def _worker(tmp: Path, url: str, name: str, env: dict[str, str]) -> subprocess.Popen:
    space = tmp / "pg.yaml"
    space.write_text(SPACE)
    cmd = [
        sys.executable, "-m", "flipsearch.cli", "sweep", "--space", str(space),
        "--study", "pgsweep", "--trials", str(TRIALS), "--sampler", "bruteforce",
        "--pruner", "none", "--limit-harmful", "2", "--limit-benign", "1", "--minibatch", "1",
        "--max-tokens", "4", "--max-over-refusal", "1.0", "--engine", "hf",
        "--results-dir", str(tmp / "results"), "--cache", str(tmp / "cache.sqlite"),
        "--storage", url, "--no-progress",
    ]  # fmt: skip
    out = (tmp / f"{name}.log").open("w")
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _running_by_pid(cluster: Cluster) -> dict[int, int]:
    # pid -> number of a RUNNING trial that has chosen its candidate, from the `worker`
    # attribute each trial sets first. A trial killed before its proposer records
    # `candidate_id` is, by design, not retried (its params may be partial), so the test
    # kills only after that point.
    rows = cluster.query(
        "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id AND a.key = 'worker' JOIN trial_user_attributes c "
        "ON c.trial_id = t.trial_id AND c.key = 'candidate_id' "
        "WHERE t.state::text = 'RUNNING'"
    )
    return {json.loads(v)["pid"]: n for n, v in rows}


@pytest.mark.slow
def test_two_workers_one_killed_still_complete_the_study(cluster, tmp_path, embedded_model_path):
    import optuna
    from optuna.trial import TrialState

    base = f"127.0.0.1:{cluster.port}/sweeps"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PGPASSWORD", None)
    workers = {
        "a": _worker(tmp_path, f"postgresql://flip@{base}", "a", {**env, "PGPASSWORD": PASSWORD}),
        "b": _worker(tmp_path, f"postgresql://flip:{PASSWORD}@{base}", "b", env),
    }
    pids = {p.pid: name for name, p in workers.items()}
    victim = None
    deadline = time.time() + 600
    try:
        # Kill a worker while both score a trial at once (so they really share the study).
        while time.time() < deadline and all(p.poll() is None for p in workers.values()):
            try:
                running = _running_by_pid(cluster)
            except Exception:  # the tables do not exist before the first worker connects
                running = {}
            if set(pids) <= set(running):
                victim = workers["a"]
                os.kill(victim.pid, signal.SIGKILL)
                dead_trial = running[victim.pid]
                break
            time.sleep(0.05)
        survivor = workers["b"]
        if victim is not None:
            survivor.wait(timeout=max(60, deadline - time.time()))
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in workers}
    assert victim is not None, f"never saw both workers in a trial: {logs}"
    assert victim.returncode == -signal.SIGKILL
    assert survivor.returncode == 0, logs["b"][-3000:]

    storage = f"postgresql+psycopg://flip:{PASSWORD}@{base}"
    study = optuna.load_study(study_name="pgsweep", storage=storage)
    trials = study.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # The killed worker's trial is FAIL and its context was scored again, once.
    assert trials[dead_trial].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == dead_trial]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[dead_trial].params
    # No duplicate trial: the same params are never scored twice (a copy generates 0).
    scored = [tuple(sorted(t.params.items())) for t in finished if t.user_attrs["generations"]]
    assert len(scored) == len(set(scored))
    assert {t.user_attrs["worker"]["pid"] for t in trials} == set(pids)

    # The password in worker b's URL is nowhere: not printed, not in the database (study
    # and trial attributes), not in any file written.
    for text in logs.values():
        assert PASSWORD not in text
    dump = cluster.dump()
    assert "sweep_config" in dump and "postgresql://flip" in dump
    assert PASSWORD not in dump
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path

    # Export reads the masked URL from config.json and reconnects with PGPASSWORD.
    out = tmp_path / "best.json"
    export = subprocess.run(
        [sys.executable, "-m", "flipsearch.cli", "export", "--study", "pgsweep",
         "--results-dir", str(tmp_path / "results"), "--out", str(out)],
        env={**env, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    assert out.is_file() and PASSWORD.encode() not in out.read_bytes()
