"""CLI commands that wrap library modules: ``flipsearch models`` and ``flipsearch xstest-eval``,
and their ``python -m`` forms (the Makefile runs ``python -m flipsearch.models prepare``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flipsearch.cli import main as cli_main
from flipsearch.judges.xstest_eval import report

REPO = Path(__file__).resolve().parents[1]


def _python_m(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, env=env, timeout=120
    )


def test_python_m_models_prepare_and_path(embedded_model_path):
    done = _python_m("flipsearch.models", "prepare")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"model 'smollm2-135m' ready at {embedded_model_path}"
    done = _python_m("flipsearch.models", "path", "--model", "smollm2-135m")
    assert done.returncode == 0 and done.stdout.strip() == str(embedded_model_path)


def test_models_unknown_model_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli_main(["models", "path", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `model` must be") and "nowhere" in err and "Traceback" not in err


def test_xstest_eval_writes_and_prints_the_report(shared_data, tmp_path, capsys):
    out = tmp_path / "sub" / "judge_xstest.md"
    assert cli_main(["xstest-eval", "--data-dir", str(shared_data), "--out", str(out)]) == 0
    expected = report(shared_data)
    assert out.read_text(encoding="utf-8") == expected == capsys.readouterr().out
    assert "flipsearch xstest-eval --out results/judge_xstest.md" in expected


def test_python_m_xstest_eval_still_runs(shared_data):
    done = _python_m("flipsearch.judges.xstest_eval", "--data-dir", str(shared_data))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Refusal judge `refusal@")
    assert (REPO / "results" / "judge_xstest.md").read_text(encoding="utf-8") == done.stdout
