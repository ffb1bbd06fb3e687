"""Token-level KL analysis: the math by hand, the tables, the files."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from opsa_train.analysis import (
    AnalysisConfig,
    kl_by_position_table,
    summary_table,
    top_tokens_table,
    write_analysis,
)
from opsa_train.errors import OpsaConfigError


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


class _Bigram(torch.nn.Module):
    # The next token's logits depend on the current token only: row `table[token]`.
    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


def _log_softmax(row: list[float]) -> list[float]:
    z = math.log(sum(math.exp(x) for x in row))
    return [x - z for x in row]


def _kl(lp: list[float], lq: list[float]) -> float:
    return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True))


def test_token_rows_match_a_hand_computed_bigram_case():
    from flipsearch.prompts import PromptRow
    from opsa_train.analysis import _token_rows

    teacher_table = [[0.0, 1.0, 2.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    student_table = [[0.0, 0.0, 0.0], [1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]
    tokenizer = SimpleNamespace(decode=lambda ids: f"<{ids[0]}>")
    # Completion [1, 2]: the student (prompt [0]) predicts it from tokens 0 then 1, the
    # teacher (context prompt [2, 1]) from tokens 1 then 1.
    out = _token_rows(
        "base",
        [PromptRow("p1", "x", "harmful")],
        [[1, 2]],
        teacher=_Bigram(teacher_table),
        teacher_prompts=[[2, 1]],
        student=_Bigram(student_table),
        student_prompts=[[0]],
        pad=0,
        tokenizer=tokenizer,
    )
    assert [(r["prompt_id"], r["position"], r["token"]) for r in out] == [
        ("p1", 0, "<1>"),
        ("p1", 1, "<2>"),
    ]
    for row, (t_prev, s_prev, token) in zip(out, [(1, 0, 1), (1, 1, 2)], strict=True):
        lt, ls = _log_softmax(teacher_table[t_prev]), _log_softmax(student_table[s_prev])
        assert row["kl_fwd"] == pytest.approx(_kl(lt, ls), abs=1e-6)
        assert row["kl_rev"] == pytest.approx(_kl(ls, lt), abs=1e-6)
        assert row["kl"] == pytest.approx(0.5 * (_kl(lt, ls) + _kl(ls, lt)), abs=1e-6)
        assert row["teacher_lp"] == pytest.approx(lt[token], abs=1e-6)
        assert row["student_lp"] == pytest.approx(ls[token], abs=1e-6)


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
        ({"limit": 0}, "`limit` must be an integer >= 1 or None"),
        ({"models": {}}, "`models` must name at least one"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(OpsaConfigError, match=match):
        AnalysisConfig(**{"context_file": "x.json", **kw})


def test_teacher_defaults_to_base():
    cfg = AnalysisConfig(context_file="x.json", models={"opsa": "r/final", "base": "m0"})
    assert cfg.teacher == "base" and cfg.teacher_model == "m0"
