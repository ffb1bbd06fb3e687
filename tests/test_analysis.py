"""Token-level KL analysis: the math by hand, the tables, the files."""

from __future__ import annotations

import math

import pytest
import torch

from opsa_train.analysis import (
    AnalysisConfig,
    kl_by_position_table,
    summary_table,
    top_tokens_table,
    write_analysis,
)
from opsa_train.errors import ConfigError


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


def test_token_rows_of_a_student_equal_to_its_teacher_have_zero_kl():
    # A tiny random Llama as both models on the same prompts: every KL is 0 and both
    # log-probs match; one row per completion token, positions counted from 0.
    import transformers

    from flipsearch.prompts import PromptRow
    from opsa_train.analysis import _token_rows

    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    tokenizer = type("Tok", (), {"decode": staticmethod(lambda ids: f"<{ids[0]}>")})()
    rows = [PromptRow("p1", "x", "harmful"), PromptRow("p2", "y", "harmful")]
    prompts, completions = [[1, 2, 3], [4, 5]], [[6, 7], [8, 9, 10]]
    out = _token_rows(
        "base",
        rows,
        completions,
        teacher=model,
        teacher_prompts=prompts,
        student=model,
        student_prompts=prompts,
        pad=0,
        tokenizer=tokenizer,
    )
    assert [(r["prompt_id"], r["position"], r["token"]) for r in out] == [
        ("p1", 0, "<6>"),
        ("p1", 1, "<7>"),
        ("p2", 0, "<8>"),
        ("p2", 1, "<9>"),
        ("p2", 2, "<10>"),
    ]
    for r in out:
        assert r["kl"] == pytest.approx(0.0, abs=1e-6)
        assert r["teacher_lp"] == pytest.approx(r["student_lp"], abs=1e-6)
        assert r["student_lp"] < 0


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
