"""``opsa-train validate``: contexts spanning a study's flip-rate range, the safety gain
and its Spearman against the flip rate, and a resumable end-to-end run (a fake-engine
sweep study, OPSA on a tiny random model)."""

from __future__ import annotations

import math

import pytest
from test_sweep import fake_config, run_fake

from opsa_train.errors import OpsaConfigError
from opsa_train.validate import (
    ValidateConfig,
    ValidationRow,
    agreement,
    distinct_ranked,
    pick_spanning,
    safety_gain,
    validate,
    write_validation_report,
)


def test_pick_spanning_takes_the_ends_and_spreads_evenly():
    assert pick_spanning(9, 5) == [0, 2, 4, 6, 8]
    assert pick_spanning(5, 5) == [0, 1, 2, 3, 4]
    assert pick_spanning(2, 2) == [0, 1]
    picked = pick_spanning(20, 4)
    assert picked[0] == 0 and picked[-1] == 19 and len(picked) == 4
    with pytest.raises(OpsaConfigError, match="at least `contexts`=5"):
        pick_spanning(4, 5)
    with pytest.raises(OpsaConfigError, match=">= 2"):
        pick_spanning(4, 1)


def _rec(model: str, i: int, unsafe: bool | None, set_name: str = "a:eval") -> dict:
    return {"task": "harmful", "model": model, "set": set_name, "id": str(i), "unsafe": unsafe}


def test_safety_gain_pairs_prompts_and_counts_invalid_verdicts_as_harmful():
    base = [_rec("base", i, True) for i in range(8)]
    # The student is safe on 3 of 8, invalid (harmful) on 1; prompt 9 has no base answer.
    student = [_rec("student", i, i >= 3) for i in range(8)]
    student[4]["unsafe"] = None
    student.append(_rec("student", 9, False))
    other = [{"task": "over_refusal", "model": "student", "set": "x", "id": "0", "unsafe": False}]
    value, low, high, n = safety_gain(base + student + other)
    assert n == 8
    assert value == pytest.approx(3 / 8)
    assert low <= value <= high
    assert safety_gain(base) == (pytest.approx(math.nan, nan_ok=True),) * 3 + (0,)


def _row(rank: int, flip: float, gain: float, proxy: float | None) -> ValidationRow:
    return ValidationRow(
        rank=rank, trial=rank, context=f"c{rank}", placement="system", flip_rate=flip,
        flip_low=flip - 0.1, flip_high=flip + 0.1, proxy=proxy, gain=gain,
        gain_low=gain - 0.05, gain_high=gain + 0.05, teacher_gain=gain * 2, efficiency=0.5,
        student_harmful=0.5, student_over_refusal=0.1, n_harmful=10,
    )  # fmt: skip


def test_agreement_equals_scipy_and_the_report_has_its_files(tmp_path):
    from scipy.stats import spearmanr

    flips = [0.9, 0.7, 0.5, 0.3, 0.1]
    gains = [0.20, 0.25, 0.05, 0.10, -0.02]
    proxies = [1.0, 0.2, 0.5, None, -0.3]
    rows = [
        _row(i + 1, f, g, p) for i, (f, g, p) in enumerate(zip(flips, gains, proxies, strict=True))
    ]
    agree = agreement(rows)
    assert agree.flip_vs_gain.rho == pytest.approx(spearmanr(flips, gains).statistic)
    with_proxy = [(p, g) for p, g in zip(proxies, gains, strict=True) if p is not None]
    want = spearmanr([p for p, _ in with_proxy], [g for _, g in with_proxy]).statistic
    assert agree.proxy_vs_gain is not None and agree.proxy_vs_gain.rho == pytest.approx(want)
    assert agree.proxy_vs_gain.n == 4
    paths = write_validation_report(rows, tmp_path / "out", header="# t", metric="tfr")
    assert [p.name for p in paths] == ["validate.md", "validate.csv", "validate.png"]
    assert f"{agree.flip_vs_gain}" in paths[0].read_text()


def test_config_rejects_a_single_context_and_an_empty_harmful_list():
    with pytest.raises(OpsaConfigError, match="contexts"):
        ValidateConfig(study="s", contexts=1)
    with pytest.raises(OpsaConfigError, match="harmful_sets"):
        ValidateConfig(study="s", harmful_sets=())


@pytest.mark.slow
def test_validate_trains_each_picked_context_and_a_rerun_skips_them(tmp_path, tiny_model):
    study = run_fake(fake_config(tmp_path, trials=6, pruner="none", sampler="bruteforce"))
    ranked = distinct_ranked(study, "tfr")
    assert len(ranked) >= 3
    config = ValidateConfig(
        study="fake",
        results_dir=str(tmp_path / "results"),
        contexts=3,
        out_dir=str(tmp_path / "runs"),
        train={
            "model": str(tiny_model),
            "benign_prompts": [],
            "max_prompts": 2,
            "batch_size": 2,
            "max_new_tokens": 4,
            "steps": 1,
            "checkpoint_every": 0,
            "export_model_mismatch": "warn",  # the study was swept on a fake engine
        },
        harmful_sets=("advbench:eval", "harmbench:eval"),
        over_refusal_sets=("xstest:eval",),
        limit=2,
        max_tokens=4,
        cache=str(tmp_path / "eval-cache.sqlite"),
    )
    rows = validate(config)
    picked = [ranked[i] for i in pick_spanning(len(ranked), 3)]
    assert [r.trial for r in rows] == [t.number for t in picked]
    assert [t.number for t in distinct_ranked(study, "refusal_tfr")]  # scores key tfr_refusal
    assert [r.flip_rate for r in rows] == sorted((r.flip_rate for r in rows), reverse=True)
    assert all(r.n_harmful == 4 and -1 <= r.gain <= 1 for r in rows)
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 3
    stamps = {p: p.stat().st_mtime_ns for f in folders for p in f.rglob("*") if p.is_file()}

    again = validate(config)
    assert again == rows
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained or rewritten

    # The command, same sizes: reads every context back and writes the report.
    from opsa_train.cli import main

    train = [f"train.{k}={v}" for k, v in config.train.items() if k != "benign_prompts"]
    argv = [
        "validate", "--study", "fake", "--results-dir", config.results_dir, "--contexts", "3",
        "--runs", config.out_dir, "--out", str(tmp_path / "report"), "train.benign_prompts=[]",
        *train, "harmful_sets=[advbench:eval, harmbench:eval]", "over_refusal_sets=[xstest:eval]",
        "limit=2", "max_tokens=4", f"cache={config.cache}",
    ]  # fmt: skip
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    report = (tmp_path / "report" / "validate.md").read_text()
    assert str(agreement(rows).flip_vs_gain) in report
