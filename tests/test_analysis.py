"""Token-level KL analysis: the math by hand, the tables, the outcome split, the files."""

from __future__ import annotations

import json
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
from opsa_train.analysis_outcomes import judge_rollouts, outcome_table
from opsa_train.errors import OpsaConfigError


def _rows():
    rows = []
    for model, scale in (("base", 1.0), ("opsa", 0.1)):
        for pid, outcome in (("p1", "compliance"), ("p2", "refusal")):
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
                        "outcome": outcome,
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


def _outcome_rows() -> list[dict]:
    # Rollout a (refusal): KL 3, 1, 1; b (compliance): 6, 2; c (refusal): 1; d (no
    # verdict recorded): 5. kl_fwd = 2 kl, kl_rev = 0.
    spec = [("a", "refusal", [3.0, 1.0, 1.0]), ("b", "compliance", [6.0, 2.0])]
    spec += [("c", "refusal", [1.0]), ("d", None, [5.0])]
    return [
        {"model": "m", "prompt_id": pid, "position": pos, "outcome": outcome}
        | {"kl": kl, "kl_fwd": 2 * kl, "kl_rev": 0.0}
        for pid, outcome, kls in spec
        for pos, kl in enumerate(kls)
    ]


def test_outcome_table_splits_the_kl_by_hand():
    table = outcome_table(_outcome_rows(), first_n=1)
    assert [(r["model"], r["outcome"]) for r in table] == [
        ("m", "refusal"),
        ("m", "compliance"),
        ("m", "invalid"),
    ]
    refusal, compliance, invalid = table
    assert (refusal["rollouts"], refusal["tokens"]) == (2, 4)
    assert refusal["kl_mean"] == 1.5 and refusal["kl_first1"] == 2.0  # (3+1+1+1)/4, (3+1)/2
    assert refusal["kl_fwd_mean"] == 3.0 and refusal["kl_rev_mean"] == 0.0
    assert (compliance["rollouts"], compliance["tokens"]) == (1, 2)
    assert compliance["kl_mean"] == 4.0 and compliance["kl_first1"] == 6.0
    assert (invalid["rollouts"], invalid["tokens"], invalid["kl_mean"]) == (1, 1, 5.0)
    pooled = summary_table(_outcome_rows(), first_n=1)["m"]
    assert sum(r["tokens"] for r in table) == pooled["tokens"] == 7
    assert sum(r["rollouts"] for r in table) == pooled["prompts"] == 4
    weighted = sum(r["kl_mean"] * r["tokens"] for r in table) / pooled["tokens"]
    assert weighted == pytest.approx(pooled["kl_mean"]) and pooled["kl_mean"] == 19.0 / 7


class _CountingJudge:
    # Judges "I cannot ..." as a refusal, "?" as unreadable, anything else as compliance.
    name, version = "counting", "1"

    def __init__(self) -> None:
        self.calls = 0

    def judge(self, prompts, responses):
        from flipsearch.types import Verdict

        self.calls += len(responses)
        outcomes = {"I cannot": "refusal", "?": None}
        return [
            Verdict(outcomes.get(r, "compliance"), None if r == "?" else False, r, "counting@1")
            for r in responses
        ]


def test_judge_rollouts_reads_outcomes_through_the_verdict_cache(tmp_path):
    from flipsearch.cache import GenerationCache

    judge, cache = _CountingJudge(), GenerationCache(tmp_path / "c.sqlite")
    responses = {"base": ["Sure", "I cannot", "?"], "opsa": ["I cannot", "I cannot", "Sure"]}
    out = judge_rollouts(judge, cache, ["p1", "p2", "p3"], responses)
    assert out == {
        "base": ["compliance", "refusal", "invalid"],
        "opsa": ["refusal", "refusal", "compliance"],
    }
    assert judge.calls == 5  # ("p2", "I cannot") is judged once for both models
    assert judge_rollouts(judge, cache, ["p1", "p2", "p3"], responses) == out
    assert judge.calls == 5 and cache.stats.verdict_hits == 7


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
        ["compliance"],
        teacher=_Bigram(teacher_table),
        teacher_prompts=[[2, 1]],
        student=_Bigram(student_table),
        student_prompts=[[0]],
        pad=0,
        tokenizer=tokenizer,
    )
    assert [(r["prompt_id"], r["position"], r["token"], r["outcome"]) for r in out] == [
        ("p1", 0, "<1>", "compliance"),
        ("p1", 1, "<2>", "compliance"),
    ]
    for row, (t_prev, s_prev, token) in zip(out, [(1, 0, 1), (1, 1, 2)], strict=True):
        lt, ls = _log_softmax(teacher_table[t_prev]), _log_softmax(student_table[s_prev])
        assert row["kl_fwd"] == pytest.approx(_kl(lt, ls), abs=1e-6)
        assert row["kl_rev"] == pytest.approx(_kl(ls, lt), abs=1e-6)
        assert row["kl"] == pytest.approx(0.5 * (_kl(lt, ls) + _kl(ls, lt)), abs=1e-6)
        assert row["teacher_lp"] == pytest.approx(lt[token], abs=1e-6)
        assert row["student_lp"] == pytest.approx(ls[token], abs=1e-6)


def test_token_rows_mark_where_the_trace_ends():
    from flipsearch.prompts import PromptRow
    from opsa_train.analysis import _token_rows
    from opsa_train.analysis_report import summary_table

    table = [[0.0, 1.0, 2.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    pieces = {0: "<think>", 1: "</think>", 2: "No"}
    tokenizer = SimpleNamespace(decode=lambda ids: pieces[ids[0]])
    completions = [[0, 1, 2, 2], [2, 2]]  # a closed trace, then an answer; no trace
    out = _token_rows(
        "base",
        [PromptRow("p1", "x", "harmful"), PromptRow("p2", "y", "harmful")],
        completions,
        ["refusal", "refusal"],
        teacher=_Bigram(table),
        teacher_prompts=[[2, 1], [2, 1]],
        student=_Bigram(table),
        student_prompts=[[0], [0]],
        pad=0,
        tokenizer=tokenizer,
    )
    assert [(r["prompt_id"], r["in_trace"]) for r in out] == [
        ("p1", True),  # <think>
        ("p1", True),  # </think> closes the trace
        ("p1", False),
        ("p1", False),
        ("p2", False),
        ("p2", False),
    ]
    assert summary_table(out)["base"]["trace_tokens"] == 2


def test_write_analysis_writes_csvs_plots_and_summary(tmp_path):
    cfg = AnalysisConfig(
        context_file="unused.json", models={"base": "m0", "opsa": "m1"}, out_dir=str(tmp_path)
    )
    summary = write_analysis(cfg, _rows())
    for name in (
        "token_kl.csv",
        "kl_by_position.csv",
        "kl_top_tokens.csv",
        "kl_by_outcome.csv",
        "kl_summary.json",
        "kl_by_position.png",
        "kl_top_tokens.png",
        "kl_by_position_outcome.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert summary["models"]["base"]["kl_mean"] > summary["models"]["opsa"]["kl_mean"]
    base = summary["outcomes"]["base"]
    assert list(base) == ["refusal", "compliance"] and base["refusal"]["rollouts"] == 1
    assert base["compliance"]["kl_mean"] == base["refusal"]["kl_mean"] == pytest.approx(7 / 4)
    assert json.loads((tmp_path / "kl_summary.json").read_text())["outcomes"] == summary["outcomes"]
    assert summary["config"]["judge"]["name"] == "refusal"


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


@pytest.mark.slow
def test_run_analysis_on_the_embedded_model_splits_the_kl_by_outcome(tmp_path):
    from flipsearch.cache import GenerationCache
    from flipsearch.contexts import Context
    from flipsearch.export import ExportFile, write_export
    from opsa_train.analysis import run_analysis

    export = tmp_path / "best.json"
    write_export(export, ExportFile(Context("Refuse harmful requests politely.", "system")))
    cfg = AnalysisConfig(
        str(export),
        models={"base": "smollm2-135m"},
        limit=3,
        max_tokens=8,
        engine="hf",
        out_dir=str(tmp_path / "analysis"),
    )
    cache = GenerationCache(tmp_path / "c.sqlite")
    summary = run_analysis(cfg, cache=cache)
    assert cache.stats.verdict_misses == 3  # one verdict per rollout, stored in the cache
    pooled, split = summary["models"]["base"], summary["outcomes"]["base"]
    assert set(split) <= {"refusal", "compliance", "other", "invalid"} and split
    assert sum(s["rollouts"] for s in split.values()) == pooled["prompts"] == 3
    assert sum(s["tokens"] for s in split.values()) == pooled["tokens"]
    weighted = sum(s["kl_mean"] * s["tokens"] for s in split.values()) / pooled["tokens"]
    assert weighted == pytest.approx(pooled["kl_mean"], rel=1e-9) and pooled["kl_mean"] > 0
    assert (tmp_path / "analysis" / "kl_by_outcome.csv").stat().st_size > 0
