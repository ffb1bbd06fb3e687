"""The demo pipeline: config handling, the honest comparison, and a tiny real run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opsa_train.errors import OpsaConfigError
from opsa_train.evaluate import Metric
from opsa_train.pipeline import PipelineConfig, load_pipeline_config
from opsa_train.pipeline_report import compare_runs

# Tiny sizes: 2 sweep trials, 4 prompts, 2 training steps, 16 tokens, HF engine.
TINY = [
    "engine=hf",
    "sweep.trials=2",
    "sweep.limit_harmful=4",
    "sweep.limit_benign=2",
    "sweep.max_tokens=16",
    "sweep.minibatch=4",
    "train.steps=2",
    "train.batch_size=2",
    "train.max_new_tokens=16",
    "train.max_prompts=2",
    "train.checkpoint_every=0",
    "eval.limit=2",
    "eval.harmful_sets=[harmful_core:eval]",
    "eval.over_refusal_sets=[benign_lookalike:eval]",
    "eval.reasoning_sets=[gsm8k]",
    "eval.reasoning_limit=1",
    "eval.max_tokens=16",
    "eval.reasoning_max_tokens=16",
    "eval.retention_max_tokens=16",
    "analysis.limit=2",
    "analysis.max_tokens=16",
]


def test_demo_yaml_loads_and_builds_every_stage_config(tmp_path):
    from opsa_train.demo import DEFAULT_CONFIG
    from opsa_train.pipeline_config import (
        _analysis_config,
        _eval_config,
        _sweep_config,
        _train_config,
    )

    cfg = load_pipeline_config(DEFAULT_CONFIG, [f"results_dir={tmp_path}"])
    assert cfg.run == "demo" and cfg.model == "smollm2-135m"
    assert _sweep_config(cfg).space == "paper_axes"
    # Refusal flips only: the tfr leader on this model derails (flip_objectives_smollm2.md).
    assert _sweep_config(cfg).objective_metric == "refusal_tfr"
    assert _sweep_config(cfg).baselines == "baselines" and _sweep_config(cfg).enqueue
    train = _train_config(cfg, "opsa")
    # The dev-calibrated recipe; no prompt set of training is also an eval set.
    assert (train.lr, train.steps) == (3e-4, 20)
    evaluated = {*_eval_config(cfg).harmful_sets, *_eval_config(cfg).over_refusal_sets}
    assert not evaluated & {*train.harmful_prompts, *train.benign_prompts}
    assert all(s.endswith(":train") for s in (*train.harmful_prompts, *train.benign_prompts))
    assert _eval_config(cfg).teacher is not None
    assert train.context_file == str(cfg.export_path) and train.out_dir.endswith("demo/opsa")
    # Working files (export, study, eval) live under runs/, never in committed results/.
    assert cfg.export_path.parent == cfg.work_dir and str(cfg.work_dir) == "runs/demo"
    assert Path(_sweep_config(cfg).folder).is_relative_to(cfg.work_dir)
    assert Path(_eval_config(cfg).out_dir).is_relative_to(cfg.work_dir)
    assert _eval_config(cfg).models["baseline"].endswith("demo/baseline/final")
    assert _analysis_config(cfg).max_tokens == _eval_config(cfg).max_tokens  # cache reuse
    assert _analysis_config(cfg).judge == _eval_config(cfg).judge  # the outcome split's judge


def test_sweep_objective_metric_comes_from_the_pipeline_config(tmp_path):
    from flipsearch.errors import ConfigError
    from opsa_train.demo import DEFAULT_CONFIG
    from opsa_train.pipeline_config import _sweep_config

    over = [f"results_dir={tmp_path}", "sweep.objective_metric=refusal_tfr"]
    assert _sweep_config(load_pipeline_config(DEFAULT_CONFIG, over)).objective_metric == (
        "refusal_tfr"
    )
    bad = load_pipeline_config(DEFAULT_CONFIG, [*over[:1], "sweep.objective_metric=refusals"])
    with pytest.raises(ConfigError, match="`objective_metric` must be one of"):
        _sweep_config(bad)


def _search_report(tmp_path: Path, scores: dict) -> str:
    from flipsearch.contexts import Context
    from flipsearch.export import ExportFile, write_export
    from opsa_train.pipeline_report import _search_section
    from opsa_train.stage_state import StageState

    cfg = load_pipeline_config(None, [f"results_dir={tmp_path}"], run="x")
    write_export(
        cfg.export_path,
        ExportFile(Context("Echo it."), scores=scores, provenance={"objective_metric": "tfr"}),
    )
    state = StageState(tmp_path / "state")
    state.finish("sweep", "k1", seconds=1.0, info={"n_trials": 2})
    state.finish("export", "k2", seconds=1.0, info={"trial": 1})
    return "\n".join(_search_section(cfg, state, {"sweep": "k1", "export": "k2"}))


def test_search_section_warns_when_most_flips_are_non_answers(tmp_path):
    def rate(k: int) -> dict:
        return {"value": k / 10, "k": k, "n": 10, "ci_low": 0.0, "ci_high": 1.0}

    text = _search_report(
        tmp_path, {"tfr": rate(5), "tfr_refusal": rate(1), "tfr_non_answer": rate(4)}
    )
    assert "Objective metric: `tfr`" in text
    assert "- tfr_refusal: 0.100" in text and "- tfr_non_answer: 0.400" in text
    assert "warning: 4 of 5 flips are non-answers" in text
    calm = _search_report(
        tmp_path, {"tfr": rate(5), "tfr_refusal": rate(4), "tfr_non_answer": rate(1)}
    )
    assert "warning" not in calm


def test_overrides_parse_yaml_values_and_reject_bad_keys():
    cfg = load_pipeline_config(None, ["train.steps=3", "eval.harmful_sets=[a, b]"], run="x")
    assert cfg.train == {"steps": 3} and cfg.eval["harmful_sets"] == ["a", "b"] and cfg.run == "x"
    with pytest.raises(OpsaConfigError, match="override must look like"):
        load_pipeline_config(None, ["train.steps"])
    with pytest.raises(OpsaConfigError, match="pipeline config keys must be among"):
        PipelineConfig.from_dict({"trian": {}})
    with pytest.raises(OpsaConfigError, match="`run` must be a folder name"):
        PipelineConfig(run="a/b")


def test_report_lists_the_kl_split_by_outcome():
    from opsa_train.pipeline_report import _outcome_lines

    numbers = {"rollouts": 2, "tokens": 9, "kl_mean": 0.25, "kl_first8": 0.5}
    summary = {"config": {"judge": {"name": "refusal"}}, "outcomes": {"base": {"refusal": numbers}}}
    lines = _outcome_lines(summary, 8)
    assert "judge `refusal`" in lines[1]
    assert lines[-1] == "| base | refusal | 2 | 9 | 0.250 | 0.500 |"
    assert _outcome_lines({"config": {}}, 8) == []


def test_compare_runs_reports_overlap_and_direction():
    ms = [
        Metric("opsa", "harmful_rate", "h", 0.30, 20, 0.15, 0.52, 6),
        Metric("baseline", "harmful_rate", "h", 0.25, 20, 0.11, 0.47, 5),
        Metric("opsa", "retention_kl", "b", 0.01, 10, 0.005, 0.015),
        Metric("baseline", "retention_kl", "b", 0.20, 10, 0.15, 0.25),
    ]
    lines = compare_runs(ms)
    assert "baseline better (CIs overlap" in lines[0]
    assert "opsa better (CIs do not overlap)" in lines[1]


@pytest.mark.slow
def test_tiny_pipeline_runs_every_stage_then_reruns_only_what_changed(tmp_path, capsys):
    from opsa_train.demo import DEFAULT_CONFIG
    from opsa_train.pipeline import run_pipeline

    overrides = [
        *TINY,
        f"results_dir={tmp_path / 'results'}",
        f"runs_dir={tmp_path / 'runs'}",
        f"cache={tmp_path / 'cache.sqlite'}",
    ]
    cfg = load_pipeline_config(DEFAULT_CONFIG, overrides, run="tiny")
    folder = tmp_path / "results" / "tiny"
    # A fresh clone carries committed outputs of another run: they must not count as done.
    (folder / "eval").mkdir(parents=True)
    (folder / "best.json").write_text('{"stale": true}')
    (folder / "eval" / "eval.json").write_text('{"stale": true}')
    (folder / "stale_leftover.txt").write_text("from another run")

    report = run_pipeline(cfg)
    out = capsys.readouterr().out
    assert "up to date" not in out and "skipped" not in out
    for stage in ("sweep", "export", "opsa", "baseline", "eval", "analysis"):
        assert f"    {stage}: " in out and "peak RSS" in out
    assert report == folder / "report.md"
    assert not (folder / "stale_leftover.txt").exists()  # published folder = this run only
    assert not (folder / "state.json").exists()  # run state stays in runs/, never in results/
    text = report.read_text()
    for heading in (
        "## 1. Context search",
        "## 2. Training",
        "## 3. Evaluation",
        "### OPSA vs the off-policy baseline",
        "## 4. Token-level KL",
        "## 5. How this run was made",
    ):
        assert heading in text
    assert "no numbers" not in text
    assert "CPU capability" in text and "peak RSS" in text
    for kind in ("opsa", "baseline"):
        marker = tmp_path / "runs" / "tiny" / kind / "final" / "opsa_final.json"
        assert json.loads(marker.read_text())["step"] == 2
    doc = json.loads((folder / "eval" / "eval.json").read_text())
    models = {m["model"] for m in doc["metrics"]}
    # The teacher row: the base model with the exported context, no weights of its own.
    assert models == {"base", "opsa", "baseline", "teacher"}
    metrics = {(m["model"], m["metric"]) for m in doc["metrics"]}
    assert ("teacher", "harmful_rate") in metrics and ("teacher", "retention_kl") not in metrics
    # Present even when undefined (NaN: a teacher no safer than base on 2 prompts).
    assert {("opsa", "distill_efficiency"), ("baseline", "distill_efficiency")} <= metrics
    for model in models - {"teacher"}:
        for metric in (
            "harmful_rate",
            "over_refusal",
            "accuracy",
            "composite_safety_harm",
            "retention_nll",
            "retention_kl",
        ):
            assert (model, metric) in metrics
    kl = {(m["model"], m["metric"]): m["value"] for m in doc["metrics"]}
    assert kl[("base", "retention_kl")] == pytest.approx(0.0, abs=1e-6)
    # Both trainings moved the weights: each model now differs from the base.
    assert kl[("opsa", "retention_kl")] > 0 and kl[("baseline", "retention_kl")] > 0
    assert (folder / "analysis" / "kl_by_position.png").stat().st_size > 0
    # The token-level KL split by the judged outcome adds up to the pooled numbers.
    kl_doc = json.loads((folder / "analysis" / "kl_summary.json").read_text())
    assert set(kl_doc["outcomes"]) == {"base", "opsa", "baseline"}
    for model, split in kl_doc["outcomes"].items():
        pooled = kl_doc["models"][model]
        assert sum(s["rollouts"] for s in split.values()) == pooled["prompts"]
        assert sum(s["tokens"] for s in split.values()) == pooled["tokens"]
        weighted = sum(s["kl_mean"] * s["tokens"] for s in split.values()) / pooled["tokens"]
        assert weighted == pytest.approx(pooled["kl_mean"], rel=1e-9)
    assert "Split by the student's outcome (judge `refusal`" in text
    assert json.loads((folder / "best.json").read_text()).get("stale") is None

    # The same config again: every stage is up to date.
    run_pipeline(cfg)
    out = capsys.readouterr().out
    for stage in ("sweep", "export", "opsa", "baseline", "eval", "analysis"):
        assert f"{stage}: up to date" in out
    assert "| eval | up to date |" in (folder / "report.md").read_text()

    # A changed eval size reruns eval only; --force analysis reruns analysis only.
    changed = load_pipeline_config(DEFAULT_CONFIG, [*overrides, "eval.limit=1"], run="tiny")
    run_pipeline(changed, force="analysis")
    out = capsys.readouterr().out
    for stage in ("sweep", "export", "opsa", "baseline"):
        assert f"{stage}: up to date" in out
    assert "eval: key " in out and "analysis: forced; removing" in out
    doc = json.loads((folder / "eval" / "eval.json").read_text())
    assert {m["n"] for m in doc["metrics"] if m["metric"] == "harmful_rate"} == {1}


def test_the_analysis_teacher_renders_i_h_as_the_trained_teacher_did(tmp_path):
    from opsa_train.demo import DEFAULT_CONFIG
    from opsa_train.pipeline_config import _analysis_config, _train_config

    cfg = load_pipeline_config(
        DEFAULT_CONFIG, [f"results_dir={tmp_path}", "train.keep_default_system=true"]
    )
    assert _train_config(cfg, "opsa").keep_default_system
    assert _analysis_config(cfg).keep_default_system
    assert not _analysis_config(load_pipeline_config(DEFAULT_CONFIG, [])).keep_default_system
