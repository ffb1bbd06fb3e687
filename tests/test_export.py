"""``flipsearch export``: best context, Pareto files, I_b, trials table, errors.

Studies come from the fake engine of test_sweep.py (orchestration only; the real model
is exported in test_sweep.py's slow test).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_sweep import fake_config, run_fake

from flipsearch.cli import main
from flipsearch.errors import ConfigError, ExportFileError
from flipsearch.export import read_export
from flipsearch.trials import best_trial, open_study, pareto_trials, rate_of

PROVENANCE_KEYS = {
    "model",
    "model_fingerprint",
    "engine",
    "judge",
    "prompt_sets",
    "placement",
    "max_tokens",
    "study",
    "trial",
    "package_version",
    "created",
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    config = fake_config(tmp, trials=8, sampler="random", pruner="none", max_over_refusal=0.5)
    run_fake(config)
    return tmp, config


def export_args(config, *more: str) -> list[str]:
    return ["export", "--study", config.study, "--results-dir", config.results_dir, *more]


def test_export_writes_the_best_feasible_trial_with_provenance(study_dir, tmp_path):
    _, config = study_dir
    out = tmp_path / "best.json"
    assert main(export_args(config, "--out", str(out))) == 0
    export = read_export(out)
    study = open_study(config.study, results_dir=config.results_dir)
    best = best_trial(study)
    assert export.harmful.text == best.user_attrs["context"]
    assert export.provenance["trial"] == best.number
    assert set(export.provenance) >= PROVENANCE_KEYS
    assert export.scores["tfr"] == rate_of(best, "tfr")
    assert export.scores["over_refusal"]["value"] <= 0.5
    assert [p["n"] for p in export.provenance["prompt_sets"]] == [8, 4]
    assert all(len(p["hash"]) == 16 for p in export.provenance["prompt_sets"])


def test_export_yaml_by_suffix_with_a_benign_context_from_a_space(study_dir, tmp_path):
    _, config = study_dir
    out = tmp_path / "best.yaml"
    assert main(export_args(config, "--out", str(out), "--benign-from", "benign")) == 0
    export = read_export(out)
    assert export.benign is not None and export.benign.placement == "system"
    assert export.provenance["benign_measured"] is False  # not a context of this study


def test_benign_context_measured_in_the_study_gets_its_score(study_dir, tmp_path):
    _, config = study_dir
    study = open_study(config.study, results_dir=config.results_dir)
    t = study.trials[0]
    out = tmp_path / "best.json"
    args = ["--out", str(out), "--benign-context", t.user_attrs["context"]]
    assert main(export_args(config, *args)) == 0
    export = read_export(out)
    assert export.provenance["benign_measured"] is True
    assert export.scores["benign_over_refusal"] == rate_of(t, "over_refusal")


def test_pareto_writes_one_readable_file_per_front_trial(study_dir, tmp_path):
    _, config = study_dir
    out = tmp_path / "front.json"
    assert main(export_args(config, "--out", str(out), "--pareto")) == 0
    study = open_study(config.study, results_dir=config.results_dir)
    front = pareto_trials(study)
    files = sorted(tmp_path.glob("front-trial*.json"))
    assert len(files) == len(front) >= 1
    trials = {read_export(f).provenance["trial"] for f in files}
    assert trials == {t.number for t in front}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_trials_table_has_one_row_per_trial(study_dir, tmp_path, suffix):
    _, config = study_dir
    out = tmp_path / f"trials{suffix}"
    assert main(export_args(config, "--trials-table", str(out))) == 0
    frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert len(frame) == 8
    assert {"number", "state", "context", "tfr", "tfr_ci_low", "over_refusal"} <= set(frame)
    assert {"param_strength", "param_scope"} <= set(frame)
    split = {"tfr_refusal", "tfr_refusal_ci_low", "tfr_non_answer", "tfr_non_answer_n"}
    assert split <= set(frame)
    done = frame[frame["state"] == "COMPLETE"]
    # The fake engine only refuses or complies: every flip is a flip to a refusal.
    assert (done["tfr_refusal"] == done["tfr"]).all() and (done["tfr_non_answer"] == 0).all()


def test_export_errors_are_one_line_config_errors(study_dir, tmp_path, capsys):
    _, config = study_dir
    assert main(export_args(config, "--out", str(tmp_path / "best.txt"))) == 2
    assert "`--out` must end in .json" in capsys.readouterr().err
    assert main(export_args(config)) == 2
    assert (
        main(
            [
                "export",
                "--study",
                "nope",
                "--results-dir",
                config.results_dir,
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_no_feasible_trial_is_an_error_that_gives_the_lowest_over_refusal(tmp_path):
    config = fake_config(
        tmp_path,
        trials=3,
        pruner="none",
        max_over_refusal=0.0,
        enqueue=("You must refuse everything.",),
    )
    study = run_fake(config)
    if any(t.user_attrs.get("feasible") for t in study.trials):
        pytest.skip("the fake engine happened to give a feasible context")
    with pytest.raises(ConfigError, match="must have a feasible trial"):
        best_trial(study)


def test_read_export_rejects_an_unknown_schema_version(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema_version": 99, "contexts": {}}))
    with pytest.raises(ExportFileError, match="schema_version"):
        read_export(path)
