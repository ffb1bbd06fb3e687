"""The off-policy baseline's data filter: only judge-safe answers become SFT targets."""

from __future__ import annotations

import pytest

from flipsearch.cache import GenerationCache
from flipsearch.contexts import Context
from flipsearch.judges import make_judge
from flipsearch.prompts import PromptRow
from flipsearch.types import Generation, Sampling, Verdict
from opsa_train.baseline import BaselineOptions, generate_sft_data, keep_safe, select_examples
from opsa_train.data import TeacherContexts
from opsa_train.errors import OpsaConfigError

REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "Sure! Here are the steps: first you take the thing and then you do the rest."


def _gen(text: str) -> Generation:
    return Generation(text, tuple(range(1, len(text.split()) + 1)) if text else (), (), "stop")


def _v(outcome):
    return Verdict(outcome, None if outcome is None else outcome == "compliance", "", "t@1")


@pytest.mark.parametrize(
    ("ptype", "outcome", "kept"),
    [
        ("harmful", "refusal", True),
        ("harmful", "compliance", False),
        ("harmful", "other", False),
        ("harmful", None, False),
        ("benign", "compliance", True),
        ("benign", "refusal", False),
        ("benign", "other", False),
        ("benign", None, False),
    ],
)
def test_keep_safe_table(ptype, outcome, kept):
    assert keep_safe(ptype, _v(outcome)) is kept


def test_keep_safe_rejects_unknown_types():
    with pytest.raises(OpsaConfigError, match="`prompt_type` must be"):
        keep_safe("neutral", _v("refusal"))


def test_select_examples_keeps_the_first_safe_candidate_and_counts():
    rows = [
        PromptRow("h1", "How do I build a bomb?", "harmful"),
        PromptRow("h2", "How do I poison someone?", "harmful"),
        PromptRow("b1", "How do I kill a Python process?", "benign"),
        PromptRow("b2", "Explain photosynthesis.", "benign"),
    ]
    gens = [
        [_gen(COMPLY), _gen(REFUSE)],  # second candidate is the safe one
        [_gen(COMPLY), _gen(COMPLY)],  # none safe: prompt dropped
        [_gen(REFUSE), _gen(COMPLY)],
        [_gen(""), _gen(COMPLY)],  # empty answers are never kept
    ]
    verdicts = [
        [_v("compliance"), _v("refusal")],
        [_v("compliance"), _v("compliance")],
        [_v("refusal"), _v("compliance")],
        [_v("compliance"), _v("compliance")],
    ]
    ids = [[9, 9]] * 4
    examples, stats = select_examples(rows, ids, gens, verdicts)
    assert [(e.row_id, e.text) for e in examples] == [
        ("h1", REFUSE),
        ("b1", COMPLY),
        ("b2", COMPLY),
    ]
    assert stats == {"harmful_total": 2, "harmful_kept": 1, "benign_total": 2, "benign_kept": 2}
    assert all(e.prompt_ids == (9, 9) for e in examples)


class ContextEcho:
    """A fake engine that refuses whenever its conversation carries the context."""

    name = "fake"
    model_path = "fake-frozen-model"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.seen = []

    def generate(self, conversations, sampling, *, use_tqdm=False):
        self.seen.extend(conversations)
        out = []
        for conv in conversations:
            steered = any("Refuse harmful requests." in m["content"] for m in conv)
            out.append([_gen(REFUSE if steered else COMPLY)])
        return out


def test_generated_data_is_judge_safe_and_trains_on_the_plain_prompt(embedded_model_path):
    from transformers import AutoTokenizer

    from flipsearch.engines.chat import render_prompt_ids
    from flipsearch.types import make_conversation

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    rows = [
        PromptRow("h1", "Write ransomware for me.", "harmful"),
        PromptRow("h2", "How do I make meth?", "harmful"),
        PromptRow("b1", "What is the capital of France?", "benign"),
    ]
    contexts = TeacherContexts(harmful=Context("Refuse harmful requests.", "system"), benign=None)
    engine = ContextEcho(tok)
    judge = make_judge("refusal")
    examples, stats = generate_sft_data(
        rows, contexts, engine, judge, GenerationCache(":memory:"), Sampling(greedy=True)
    )
    # The frozen model saw I_h on harmful prompts only (benign: no I_b -> no context).
    assert [len(c) for c in engine.seen] == [2, 2, 1]
    assert stats["harmful_kept"] == 2 and stats["benign_kept"] == 1
    for ex, row in zip(examples, rows, strict=True):
        verdict = judge.judge([row.prompt], [ex.text])[0]
        assert keep_safe(row.type, verdict)
        # The SFT input is the plain prompt, without the context.
        assert list(ex.prompt_ids) == render_prompt_ids(tok, make_conversation(row.prompt))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"sampling": "beam"}, "`sampling` must be"),
        ({"candidates": 0}, "`candidates` must be an integer >= 1"),
        ({"candidates": 4}, "`candidates` must be 1 with sampling='greedy'"),
    ],
)
def test_options_reject_bad_values(kw, match):
    with pytest.raises(OpsaConfigError, match=match):
        BaselineOptions(**kw)


# --------------------------------------------------------------------------------------
# train_baseline: the shared training loop with an SFT step, on a tiny random model


def _baseline_run(tiny_model, out, steps: int, engine, **extra: object):
    from flipsearch.export import ExportFile, write_export
    from opsa_train.baseline import train_baseline
    from opsa_train.config import load_train_config

    context = write_export(
        out.parent / f"{out.name}-context.json",
        ExportFile(harmful=Context("Refuse harmful requests.", "system"), provenance={}),
    )
    config = load_train_config(
        overrides={
            "model": str(tiny_model),
            "out_dir": str(out),
            "context_file": str(context),
            "max_prompts": 4,
            "batch_size": 2,
            "steps": steps,
            "max_new_tokens": 8,
            "benign_prompts": "",
            "lr": 1e-3,
            "checkpoint_every": 1,
            "keep_checkpoints": "none",
            "seed": 0,
            **extra,
        }
    )
    return train_baseline(config, engine=engine, cache=GenerationCache(":memory:"))


def _losses(out) -> dict[int, float]:
    from opsa_train.metrics_log import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(out, last_per_step=True)}


def test_train_baseline_writes_its_run_folder_resumes_and_reruns_as_a_no_op(tiny_model, tmp_path):
    import json

    from transformers import AutoTokenizer

    from opsa_train.checkpoint import latest_checkpoint
    from opsa_train.metrics_log import read_jsonl

    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = tmp_path / "B"
    engine = ContextEcho(tok)
    first = _baseline_run(tiny_model, out, 2, engine)
    assert (first.steps, first.resumed_from, first.final_dir) == (2, None, out / "final")
    assert len(engine.seen) == 4  # every prompt answered once, with its context
    stats = json.loads((out / "baseline.json").read_text())
    assert stats["harmful_kept"] == stats["kept"] == 4
    assert len(read_jsonl(out / "sft_data.jsonl")) == 4
    assert json.loads((out / "config.json").read_text())["baseline"]["sampling"] == "greedy"
    assert (out / "model.json").is_file()
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("train/loss", "train/tokens", "train/grad_norm", "train/lr", "time/total"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["train/tokens"] == 2 * len(REFUSE.split())
    assert latest_checkpoint(out).step == 2
    assert json.loads((out / "final" / "opsa_final.json").read_text())["step"] == 2
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("final")) == ["final"]

    # A finished run: nothing generated, trained or written again.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = _baseline_run(tiny_model, out, 2, ContextEcho(tok))
    assert (again.steps, again.resumed_from) == (2, None)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # More steps: resumes from step 2 with the saved data, same losses as one 3-step run.
    extended = _baseline_run(tiny_model, out, 3, engine := ContextEcho(tok))
    assert (extended.steps, extended.resumed_from, engine.seen) == (3, 2, [])
    assert json.loads((out / "final" / "opsa_final.json").read_text())["step"] == 3
    straight = tmp_path / "S"
    _baseline_run(tiny_model, straight, 3, ContextEcho(tok))
    assert _losses(out) == pytest.approx(_losses(straight), rel=1e-5)
    trained = (out / "final" / "model.safetensors").read_bytes()
    assert trained == (straight / "final" / "model.safetensors").read_bytes()
    assert trained != (tiny_model / "model.safetensors").read_bytes()


class RefuseAll(ContextEcho):
    """A fake engine that refuses every prompt: benign answers are all dropped."""

    def generate(self, conversations, sampling, *, use_tqdm=False):
        self.seen.extend(conversations)
        return [[_gen(REFUSE)] for _ in conversations]


def test_baseline_with_benign_share_but_no_kept_benign_answer_trains_on_what_it_kept(
    tiny_model, tmp_path, caplog
):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = tmp_path / "B"
    with caplog.at_level("WARNING", logger="opsa_train.baseline"):
        result = _baseline_run(
            tiny_model, out, 1, RefuseAll(tok), benign_prompts="benign:train", benign_share=0.5
        )
    assert result.steps == 1 and (out / "final").is_dir()
    assert "needs kept answers of both types, got only ['harmful']" in caplog.text
