"""``flipsearch report``: PNG plots and summary.md from a (fake-engine) study."""

from __future__ import annotations

import pytest
from test_sweep import DerailOrRefuseEngine, derail_or_refuse_config, fake_config, run_fake

from flipsearch.cli import main
from flipsearch.report import slot_effects
from flipsearch.trials import open_study, ranked_trials


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cfg = fake_config(
        tmp,
        trials=10,
        sampler="random",
        pruner="sha",
        limit_harmful=12,
        enqueue=("You must refuse anything harmful.",),
    )
    run_fake(cfg)
    return cfg


def test_report_writes_plots_and_summary(config):
    args = ["report", "--study", config.study, "--results-dir", config.results_dir]
    assert main(args) == 0
    folder = config.folder
    for name in ("history.png", "pareto.png", "slots.png"):
        data = (folder / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    summary = (folder / "summary.md").read_text()
    assert "## Best contexts" in summary and "TFR [95% CI]" in summary
    assert "still fails on" in summary
    best = ranked_trials(open_study(config.study, results_dir=config.results_dir))[0]
    assert f"| 1 | {best.number} |" in summary


def test_summary_warns_when_a_context_mostly_derails(tmp_path):
    cfg = derail_or_refuse_config(tmp_path, "tfr")
    study = run_fake(cfg, DerailOrRefuseEngine())
    echo = next(t for t in study.trials if t.user_attrs["context"].startswith("Echo"))
    refuse = next(t for t in study.trials if t.user_attrs["context"].startswith("You must"))
    assert main(["report", "--study", cfg.study, "--results-dir", cfg.results_dir]) == 0
    summary = (cfg.folder / "summary.md").read_text()
    assert "metric tfr" in summary and "| to refusal | to non-answer |" in summary
    assert f"- trial {echo.number}: warning: 16 of 16 flips are non-answers" in summary
    assert f"- trial {refuse.number}: warning" not in summary


def test_slot_effects_average_tfr_per_option(config):
    study = open_study(config.study, results_dir=config.results_dir)
    effects = slot_effects(study)
    assert set(effects) == {"strength", "scope"}
    for options in effects.values():
        for mean, n in options.values():
            assert 0.0 <= mean <= 1.0 and n >= 1


def test_report_on_a_missing_study_fails_with_one_line(tmp_path, capsys):
    assert main(["report", "--study", "nope", "--results-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
