"""A real ``flipsearch sweep`` process SIGKILLed in the middle of a trial, then resumed.

The sweep runs the embedded model through the HF engine on the default SQLite storage,
kept tiny (3 harmful + 1 benign prompts, 4 tokens, one prompt per minibatch; most of its
time is two start-ups). The test
polls the study and cache files to kill it while a trial has generated part of its
prompts, then runs the same command again and checks that nothing finished is lost,
nothing is generated twice, and the dead trial is retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from flipsearch.cache import GenerationCache

REPO = Path(__file__).resolve().parents[1]

SPACE = """
name: faults
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

N_HARMFUL, N_BENIGN = 3, 1
PER_TRIAL = N_HARMFUL + N_BENIGN  # generations of one scored context (and of the baseline)


def sweep_command(tmp: Path, *extra: str, trials: int = 2) -> list[str]:
    """The ``flipsearch sweep`` command line of these tests (bruteforce: each context once)."""
    space = tmp / "faults.yaml"
    space.write_text(SPACE)
    return [
        sys.executable,
        "-m",
        "flipsearch.cli",
        "sweep",
        "--space",
        str(space),
        "--study",
        "faults",
        "--trials",
        str(trials),
        "--sampler",
        "bruteforce",
        "--pruner",
        "none",
        "--limit-harmful",
        str(N_HARMFUL),
        "--limit-benign",
        str(N_BENIGN),
        "--minibatch",
        "1",
        "--max-tokens",
        "4",
        "--max-over-refusal",
        "1.0",
        "--engine",
        "hf",
        "--results-dir",
        str(tmp / "results"),
        "--cache",
        str(tmp / "cache.sqlite"),
        "--no-progress",
        *extra,
    ]


def sweep_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _query(db: Path, sql: str) -> list[tuple] | None:
    # One short read of a file another process is writing; None while it is locked or
    # not created yet (the caller polls again).
    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=0.5)) as con:
            return con.execute(sql).fetchall()
    except sqlite3.Error:
        return None


def cached_generations(cache: Path) -> int | None:
    rows = _query(cache, "SELECT COUNT(*) FROM generations")
    return rows[0][0] if rows else None


def trial_states(db: Path) -> list[str] | None:
    rows = _query(db, "SELECT state FROM trials ORDER BY number")
    return None if rows is None else [r[0] for r in rows]


def integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume_keeps_work_and_retries_the_trial(
    tmp_path, embedded_model_path
):
    cmd = sweep_command(tmp_path)
    db = tmp_path / "results" / "faults" / "study.db"
    cache = tmp_path / "cache.sqlite"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, env=sweep_env(), stdout=log, stderr=subprocess.STDOUT)

    # Kill once a trial has finished and the next one has cached some of its harmful
    # generations (the baseline and each finished context hold PER_TRIAL rows each).
    killed_at = None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            states, rows = trial_states(db), cached_generations(cache)
            if states and rows is not None:
                n_complete = states.count("COMPLETE")
                partial = rows - PER_TRIAL * (1 + n_complete)
                if n_complete >= 1 and states.count("RUNNING") == 1 and 1 <= partial < N_HARMFUL:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = (n_complete, rows)
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=60)
        log.close()
    output = (tmp_path / "first.log").read_text()
    assert killed_at is not None, (
        f"no mid-trial moment seen; rc={proc.returncode}\n{output[-3000:]}"
    )
    assert proc.returncode == -signal.SIGKILL

    # The files a SIGKILL interrupted open cleanly, and hold what was there at the kill.
    assert integrity(db) == "ok" and integrity(cache) == "ok"
    n_complete = killed_at[0]
    partial = cached_generations(cache) - PER_TRIAL * (1 + n_complete)
    assert 0 < partial < PER_TRIAL, "the kill must fall inside the trial's generations"
    storage = f"sqlite:///{db}"
    before = optuna.load_study(study_name="faults", storage=storage)
    done = {
        t.number: (t.params, t.values, t.datetime_complete)
        for t in before.trials
        if t.state == TrialState.COMPLETE
    }
    (dead,) = [t for t in before.trials if t.state == TrialState.RUNNING]
    assert len(done) == n_complete >= 1

    # Resume: the same command.
    rerun = subprocess.run(cmd, env=sweep_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert f"marked stale trials [{dead.number}] FAIL" in rerun.stderr

    study = optuna.load_study(study_name="faults", storage=storage)
    trials = study.trials
    # Every finished trial is kept as it was.
    for number, (params, values, completed) in done.items():
        t = trials[number]
        assert t.state == TrialState.COMPLETE
        assert (t.params, t.values, t.datetime_complete) == (params, values, completed)
    # The stale trial is FAIL, retried once with the same context, and the retry generated
    # only what the killed trial had not cached.
    assert trials[dead.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["generations"] == PER_TRIAL - partial
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2

    # No context was scored twice: each finished context's generations are in the cache
    # once, and the trials' own counts add up to the cache rows beyond the baseline.
    # (A trial that met an already scored context copies its result: duplicate_of.)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    scored = [t.user_attrs["candidate_id"] for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(scored) == len(set(scored))
    rows = GenerationCache(cache).counts()["generations"]
    assert rows == PER_TRIAL * (1 + len(scored))
    assert sum(t.user_attrs["generations"] for t in complete) + partial == rows - PER_TRIAL
    assert integrity(db) == "ok" and integrity(cache) == "ok"
    workers = json.loads((tmp_path / "results" / "faults" / "workers.json").read_text())
    assert workers == {}, "the dead worker's registry entry must be dropped"
