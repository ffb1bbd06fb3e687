"""Calibration study: dev-only config, learning-curve points, a resumable grid study."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from flipsearch.export import write_export
from opsa_train.calibrate import CalibrationConfig, point_of, run_dir, train_config_of
from opsa_train.cli import main as cli_main
from opsa_train.errors import OpsaConfigError
from opsa_train.eval_metrics import Metric
from opsa_train.preflight import hand_written_export


def test_config_rejects_eval_splits_fixed_fields_and_unknown_train_fields():
    with pytest.raises(OpsaConfigError, match="must not be `:eval` splits"):
        CalibrationConfig(context_file="x.json", dev_harmful=("advbench:eval",))
    with pytest.raises(OpsaConfigError, match=r"must not vary \['steps'\]"):
        CalibrationConfig(context_file="x.json", grid={"steps": [10, 20]})
    with pytest.raises(OpsaConfigError, match="unknown config key `lrr`"):
        CalibrationConfig(context_file="x.json", grid={"lrr": [1e-4]})
    cfg = CalibrationConfig(context_file="x.json", grid={"lr": [1e-4, 3e-4], "top_k": [8, 64]})
    assert cfg.n_trials == 4 and cfg.storage_url.startswith("journal:")


def test_trial_config_layers_preset_shared_overrides_and_params(tmp_path):
    cfg = CalibrationConfig(
        context_file="x.json",
        out_dir=str(tmp_path),
        train={"batch_size": 4, "lr": 1e-5},
        steps=30,
        eval_every=10,
    )
    train = train_config_of(cfg, {"lr": 3e-4})
    assert (train.lr, train.batch_size, train.steps, train.checkpoint_every) == (3e-4, 4, 30, 10)
    assert train.max_new_tokens == 24  # from cpu_default
    assert Path(train.out_dir) == run_dir(cfg, {"lr": 3e-4}) == tmp_path / "trials" / "lr=0.0003"


def test_point_reads_pooled_efficiency_and_token_weighted_over_refusal():
    def m(model, metric, set_name, value, n=10, lo=0.0, hi=1.0):
        return Metric(model, metric, set_name, value, n, lo, hi)

    metrics = [
        m("base", "harmful_rate", "pooled", 0.9, 20),
        m("teacher", "harmful_rate", "pooled", 0.5, 20),
        m("student", "harmful_rate", "pooled", 0.7, 20),
        m("student", "refusal_rate", "pooled", 0.2, 20),
        m("student", "non_answer_rate", "pooled", 0.1, 20),
        m("student", "over_refusal", "xstest:search", 0.5, 10),
        m("student", "over_refusal", "benign_lookalike:search", 0.0, 30),
        m("teacher", "over_refusal", "xstest:search", 1.0, 10),
        m("student", "retention_kl", "benign:search", 0.02, 8),
        m("student", "distill_efficiency", "pooled", 0.5, 20, 0.1, 0.9),
    ]
    p = point_of(10, metrics)
    assert (p.efficiency, p.efficiency_low, p.efficiency_high) == (0.5, 0.1, 0.9)
    assert (p.harmful, p.base_harmful, p.teacher_harmful) == (0.7, 0.9, 0.5)
    assert p.over_refusal == pytest.approx(5 / 40) and p.teacher_over_refusal == 1.0
    assert (p.refusal, p.non_answer, p.retention_kl, p.n_harmful) == (0.2, 0.1, 0.02, 20)


def test_verdict_picks_the_best_feasible_final_point():
    from opsa_train.calibrate_report import verdict

    def row(trial, step, eff, over, teacher_over=0.1):
        return {"trial": trial, "step": step, "lr": 1e-4 * (trial + 1), "efficiency": eff,
                "efficiency_low": eff - 0.2, "efficiency_high": eff + 0.2,
                "over_refusal": over, "teacher_over_refusal": teacher_over}  # fmt: skip

    rows = [
        row(0, 10, 0.9, 0.0),  # feasible early, but its final point is not
        row(0, 20, 0.95, 0.4),
        row(1, 20, 0.6, 0.12),
        row(2, 20, 0.7, 0.1),
    ]
    text = verdict(rows, ["lr"], slack=0.05)
    assert "trial 2 (lr=0.0003)" in text and "2 of 3 trials feasible" in text
    assert "No feasible trial" in verdict(rows[:2], ["lr"], slack=0.05)


def test_dev_teacher_uses_the_trials_own_benign_context(tmp_path, monkeypatch):
    # A grid over I_b must compare each student with the teacher it was trained towards.
    from types import SimpleNamespace

    import opsa_train.evaluate as evaluate_module
    from opsa_train.calibrate import dev_point

    seen = []

    def fake_evaluate(eval_config):
        seen.append(eval_config)
        metrics = [
            Metric("student", "distill_efficiency", "pooled", 0.5, 4, 0.0, 1.0),
            Metric("student", "harmful_rate", "pooled", 0.5, 4, 0.0, 1.0),
        ]
        return SimpleNamespace(metrics=metrics)

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    cfg = CalibrationConfig(
        context_file="x.json",
        out_dir=str(tmp_path),
        grid={"benign_context": ["", "Answer helpfully."]},
    )
    for text in ("", "Answer helpfully."):
        params = {"benign_context": text}
        point = dev_point(cfg, params, 10, "student-folder")
        assert point.efficiency == 0.5
        assert seen[-1].teacher.benign_context == text
        assert Path(seen[-1].out_dir) == run_dir(cfg, params) / "dev-step-10"


@pytest.mark.slow
def test_cli_grid_study_writes_curves_and_a_rerun_trains_nothing(tiny_model, tmp_path):
    context = tmp_path / "ctx.json"
    write_export(context, hand_written_export("Refuse harmful requests.", "prefix"))
    out, report = tmp_path / "cal", tmp_path / "report"
    argv = [
        "calibrate",
        "--context",
        str(context),
        "--out",
        str(out),
        "--report",
        str(report),
        "grid.lr=[1e-4,1e-3]",
        "steps=2",
        "eval_every=1",
        "limit=2",
        "max_tokens=4",
        "dev_harmful=advbench:search",
        "dev_over_refusal=xstest:search",
        f"cache={tmp_path / 'cache.sqlite'}",
        f"train={{model: {tiny_model}, batch_size: 2, max_prompts: 2, max_new_tokens: 4, "
        "top_k: 8, benign_prompts: ''}",
    ]
    assert cli_main(argv) == 0
    with open(report / "calibration.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((float(r["lr"]), int(r["step"])) for r in rows) == [
        (1e-4, 1),
        (1e-4, 2),
        (1e-3, 1),
        (1e-3, 2),
    ]
    assert all(int(r["n_harmful"]) == 2 for r in rows)
    assert (report / "learning_curve.png").stat().st_size > 10_000
    assert "| trial | lr | step |" in (report / "calibration.md").read_text()
    # Each point is a dev evaluation of that step's student, kept on disk.
    evals = sorted(p.parent.name for p in out.glob("trials/*/dev-step-*/eval.json"))
    assert evals == ["dev-step-1", "dev-step-1", "dev-step-2", "dev-step-2"]
    finals = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/final/model.safetensors")}
    assert len(finals) == 2
    assert cli_main(argv) == 0  # a finished study: no trial, no training
    assert {p: p.stat().st_mtime_ns for p in finals} == finals
    assert not math.isnan(float(rows[0]["base_harmful"]))
