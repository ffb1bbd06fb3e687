"""Token-level KL analysis: the math by hand, the tables, the files."""

from __future__ import annotations

import math

import pytest
import torch

from opsa_train.analysis import (
    AnalysisConfig,
    kl_by_position_table,
    per_token_kl,
    summary_table,
    top_tokens_table,
    write_analysis,
)
from opsa_train.errors import ConfigError


def test_per_token_kl_matches_a_hand_computed_case():
    p = torch.tensor([[[0.0, 0.0]]])  # (1/2, 1/2)
    q = torch.tensor([[[0.0, math.log(3.0)]]])  # (1/4, 3/4)
    fwd, rev = per_token_kl(p, q)
    expect_fwd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    expect_rev = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(fwd) == pytest.approx(expect_fwd, abs=1e-6)
    assert float(rev) == pytest.approx(expect_rev, abs=1e-6)


def test_per_token_kl_is_zero_for_equal_and_nonnegative():
    x = torch.randn(2, 5, 11)
    fwd, rev = per_token_kl(x, x)
    assert float(fwd.abs().max()) < 1e-6 and float(rev.abs().max()) < 1e-6
    fwd, rev = per_token_kl(x, torch.randn(2, 5, 11))
    assert fwd.shape == (2, 5) and bool((fwd >= 0).all()) and bool((rev >= 0).all())


def _rows():
    rows = []
    for model, scale in (("base", 1.0), ("opsa", 0.1)):
        for pid in ("p1", "p2"):
            for pos, tok in enumerate(["Sure", ",", " here", " is"]):
                kl = scale * (4.0 if pos == 0 else 1.0)
                rows.append(
                    {
                        "model": model,
                        "prompt_id": pid,
                        "position": pos,
                        "token": tok,
                        "kl": kl,
                        "kl_fwd": kl,
                        "kl_rev": kl,
                    }
                )
    return rows


def test_tables_by_hand():
    by_pos = {(r["model"], r["position"]): r for r in kl_by_position_table(_rows())}
    assert by_pos[("base", 0)]["kl"] == 4.0 and by_pos[("base", 0)]["n"] == 2
    assert by_pos[("opsa", 3)]["kl"] == pytest.approx(0.1)
    top = [r for r in top_tokens_table(_rows(), top=2) if r["model"] == "base"]
    assert [r["token"] for r in top] == ["Sure", ","]
    assert top[0]["kl_mass"] == 8.0 and top[0]["share"] == pytest.approx(8.0 / 14.0)
    summary = summary_table(_rows(), first_n=1)
    assert summary["base"]["kl_first1"] == 4.0 and summary["base"]["kl_rest"] == 1.0
    assert summary["base"]["mass_share_first1"] == pytest.approx(8.0 / 14.0)
    assert summary["opsa"]["prompts"] == 2


def test_write_analysis_writes_csvs_plots_and_summary(tmp_path):
    cfg = AnalysisConfig(
        context_file="unused.json", models={"base": "m0", "opsa": "m1"}, out_dir=str(tmp_path)
    )
    summary = write_analysis(cfg, _rows())
    for name in (
        "token_kl.csv",
        "kl_by_position.csv",
        "kl_top_tokens.csv",
        "kl_summary.json",
        "kl_by_position.png",
        "kl_top_tokens.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert summary["models"]["base"]["kl_mean"] > summary["models"]["opsa"]["kl_mean"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rollouts": "mine"}, "`rollouts` must be one of"),
        ({"limit": 0}, "`limit` must be None or an integer >= 1"),
        ({"models": {}}, "`models` must name at least one"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        AnalysisConfig(**{"context_file": "x.json", **kw})


def test_teacher_defaults_to_base():
    cfg = AnalysisConfig(context_file="x.json", models={"opsa": "r/final", "base": "m0"})
    assert cfg.teacher == "base" and cfg.teacher_model == "m0"
