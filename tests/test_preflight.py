"""Each pre-flight check fires on its bad input, with a message naming field and value."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from flipsearch.contexts import Context
from flipsearch.export import ExportFile, write_export
from flipsearch.prompts import PromptRow
from opsa_train import preflight
from opsa_train.config import TrainConfig
from opsa_train.data import (
    MixedSampler,
    PromptSampler,
    TeacherContexts,
    load_train_prompts,
    make_sampler,
)
from opsa_train.errors import OpsaConfigError, PreflightError

# --------------------------------------------------------------------------------------
# Fakes


class FakeTokenizer:
    def __init__(self, vocab=None, *, eos=2, template="{{ messages }}"):
        self._vocab = dict(vocab or {"a": 0, "b": 1, "</s>": 2})
        self.eos_token_id = eos
        self.bos_token_id = None
        self.pad_token_id = None
        self.chat_template = template

    def get_vocab(self):
        return dict(self._vocab)


def _export(**provenance) -> ExportFile:
    return ExportFile(harmful=Context("Refuse.", "prefix"), provenance=provenance)


# --------------------------------------------------------------------------------------
# Tokenizers


def test_identical_tokenizers_pass():
    preflight.check_tokenizers(
        FakeTokenizer(), FakeTokenizer(), student_vocab_size=3, teacher_vocab_size=3
    )


def test_different_vocabulary_is_rejected():
    other = FakeTokenizer({"a": 0, "c": 1, "</s>": 2})
    with pytest.raises(PreflightError, match=r"`teacher` tokenizer vocabulary must equal.*'c'"):
        preflight.check_tokenizers(FakeTokenizer(), other)


def test_moved_ids_are_rejected():
    other = FakeTokenizer({"a": 1, "b": 0, "</s>": 2})
    with pytest.raises(PreflightError, match=r"different ids: \['a', 'b'\]"):
        preflight.check_tokenizers(FakeTokenizer(), other)


def test_different_special_tokens_are_rejected():
    with pytest.raises(
        PreflightError, match=r"`eos_token_id` must equal the student's \(2\), got 1"
    ):
        preflight.check_tokenizers(FakeTokenizer(), FakeTokenizer(eos=1))


def test_different_chat_template_is_rejected():
    with pytest.raises(PreflightError, match="chat template must equal"):
        preflight.check_tokenizers(FakeTokenizer(), FakeTokenizer(template="other"))


def test_different_output_vocabulary_size_is_rejected():
    with pytest.raises(PreflightError, match=r"output vocabulary size must equal .*\(3\), got 4"):
        preflight.check_tokenizers(
            FakeTokenizer(), FakeTokenizer(), student_vocab_size=3, teacher_vocab_size=4
        )


def test_model_vocabulary_smaller_than_tokenizer_is_rejected():
    with pytest.raises(PreflightError, match="must cover the tokenizer's 3 ids, got 2"):
        preflight.check_tokenizers(FakeTokenizer(), FakeTokenizer(), student_vocab_size=2)


# --------------------------------------------------------------------------------------
# Window, conversations, harmful prompts


def test_prompt_plus_new_tokens_must_fit_the_window():
    preflight.check_window([10, 20], ["p1", "p2"], max_new_tokens=12, window=32)
    with pytest.raises(
        PreflightError, match=r"`max_new_tokens` \(13\).*20 tokens, prompt 'p2'.*\(32\), got 33"
    ):
        preflight.check_window([10, 20], ["p1", "p2"], max_new_tokens=13, window=32)


def test_conversation_must_end_with_a_user_turn():
    good = ({"role": "system", "content": "s"}, {"role": "user", "content": "u"})
    bad = ({"role": "user", "content": "u"}, {"role": "assistant", "content": "a"})
    preflight.check_conversations([good], ["ok"])
    with pytest.raises(PreflightError, match=r"prompt 'x' must end with a user turn.*'assistant'"):
        preflight.check_conversations([good, bad], ["ok", "x"])
    with pytest.raises(PreflightError, match=r"got roles \[\]"):
        preflight.check_conversations([()], ["empty"])


def test_harmful_context_needs_a_harmful_prompt():
    benign = [PromptRow("b1", "Hi", "benign")]
    preflight.check_has_harmful(benign, has_harmful_context=False)
    preflight.check_has_harmful(
        [*benign, PromptRow("h1", "X", "harmful")], has_harmful_context=True
    )
    with pytest.raises(PreflightError, match=r"`harmful_prompts` must yield .* got 0 of 1"):
        preflight.check_has_harmful(benign, has_harmful_context=True)


def test_harmful_prompt_sets_without_harmful_rows_fail_at_load():
    cfg = TrainConfig(harmful_prompts=("benign:train",), benign_prompts=(), context_file="x")
    rows = load_train_prompts(cfg)
    with pytest.raises(PreflightError, match="at least one harmful prompt"):
        preflight.check_has_harmful(rows, has_harmful_context=True)


def test_unknown_prompt_set_names_the_field():
    cfg = TrainConfig(harmful_prompts=("no_such_set:train",))
    with pytest.raises(
        PreflightError, match=r"`harmful_prompts` must name loadable .*'no_such_set"
    ):
        load_train_prompts(cfg)


# --------------------------------------------------------------------------------------
# Export file


def test_missing_context_file_is_rejected(tmp_path):
    with pytest.raises(PreflightError, match="`context_file` must name a flipsearch export"):
        preflight.read_context_file(None)
    with pytest.raises(PreflightError, match="`context_file` must be a valid export file"):
        preflight.read_context_file(tmp_path / "missing.json")


def test_export_model_name_mismatch_errors_or_warns(caplog):
    export = _export(model="Qwen/Qwen3-0.6B")
    with pytest.raises(
        PreflightError, match=r"`model` \('smollm2-135m'\) must be the model .*Qwen"
    ):
        preflight.check_export_model(export, model="smollm2-135m", model_path=None, policy="error")
    with caplog.at_level(logging.WARNING):
        ok = preflight.check_export_model(
            export, model="smollm2-135m", model_path=None, policy="warn"
        )
    assert ok is False and "Qwen" in caplog.text
    assert preflight.check_export_model(
        _export(model="smollm2-135m"), model="smollm2-135m", model_path=None, policy="error"
    )


def test_export_model_fingerprint_decides(tmp_path):
    from flipsearch.models import model_fingerprint

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    digest = model_fingerprint(folder)
    same = _export(model="/elsewhere/m", model_fingerprint=f"m:{digest}")
    assert preflight.check_export_model(same, model=str(folder), model_path=folder, policy="error")
    other = _export(model=str(folder), model_fingerprint="m:0123456789abcdef")
    with pytest.raises(PreflightError, match="fingerprint 'm:0123456789abcdef'"):
        preflight.check_export_model(other, model=str(folder), model_path=folder, policy="error")


def test_export_without_provenance_only_warns(caplog):
    with caplog.at_level(logging.WARNING):
        assert preflight.check_export_model(
            _export(), model="smollm2-135m", model_path=None, policy="error"
        )
    assert "no provenance.model" in caplog.text


def test_prepare_runs_the_checks_end_to_end(tmp_path: Path):
    from opsa_train.trainer import prepare

    path = write_export(tmp_path / "best.json", _export(model="Qwen/Qwen3-0.6B"))
    cfg = TrainConfig.cpu_default(context_file=str(path))
    with pytest.raises(PreflightError, match="must be the model the context was searched on"):
        prepare(cfg)
    long = TrainConfig.cpu_default(
        context_file=str(path), export_model_mismatch="warn", max_new_tokens=9000
    )
    with pytest.raises(PreflightError, match=r"must fit the model window \(8192\)"):
        prepare(long)


# --------------------------------------------------------------------------------------
# Data helpers


def test_teacher_contexts_follow_the_export_and_overrides():
    export = ExportFile(harmful=Context("H", "prefix"), benign=Context("B", "system"))
    cfg = TrainConfig()
    ctx = TeacherContexts.from_export(export, cfg)
    assert ctx.conversation(PromptRow("1", "q", "benign"))[0] == {"role": "system", "content": "B"}
    no_benign = TeacherContexts.from_export(export, TrainConfig(benign_context=""))
    assert no_benign.benign is None
    moved = TeacherContexts.from_export(export, TrainConfig(placement="suffix"))
    assert moved.conversation(PromptRow("2", "q", "harmful"))[0]["content"] == "q\n\nH"


def test_teacher_contexts_keep_the_templates_default_system_prompt_when_asked(
    embedded_model_path, caplog
):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    harmful = PromptRow("1", "Do X", "harmful")
    ctx = TeacherContexts(harmful=Context("Refuse.", "system"), benign=None)
    replaced = ctx.with_template(tok, keep_default_system=False).conversation(harmful)
    assert replaced[0] == {"role": "system", "content": "Refuse."}
    kept = ctx.with_template(tok, keep_default_system=True).conversation(harmful)
    assert kept[0]["content"].startswith("Refuse.\n\nYou are a helpful AI assistant named SmolLM")
    # Prefix placement and benign rows without I_b are untouched.
    prefix = TeacherContexts(harmful=Context("Refuse.", "prefix"), benign=None)
    assert prefix.with_template(tok, keep_default_system=True).conversation(harmful) == (
        {"role": "user", "content": "Refuse.\n\nDo X"},
    )
    assert kept_benign_is_plain(ctx.with_template(tok, keep_default_system=True))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with caplog.at_level(logging.WARNING):
        plain = ctx.with_template(tok, keep_default_system=True)
    assert plain.default_system is None and "`keep_default_system` is ignored" in caplog.text


def kept_benign_is_plain(ctx: TeacherContexts) -> bool:
    return ctx.conversation(PromptRow("2", "Hi", "benign")) == ({"role": "user", "content": "Hi"},)


def test_prompt_sampler_resumes_at_the_same_position():
    rows = [PromptRow(str(i), f"q{i}", "harmful") for i in range(5)]
    a = PromptSampler(rows, seed=3)
    a.next_batch(4)
    state = a.state_dict()
    b = PromptSampler(rows, seed=3)
    b.load_state_dict(state)
    assert [r.id for r in a.next_batch(7)] == [r.id for r in b.next_batch(7)]
    # Each epoch visits every prompt once.
    c = PromptSampler(rows, seed=3)
    assert sorted(r.id for r in c.next_batch(5)) == [str(i) for i in range(5)]


def _mixed_rows(n_harmful: int, n_benign: int) -> list[PromptRow]:
    rows = [PromptRow(f"h{i}", f"harm {i}", "harmful") for i in range(n_harmful)]
    return rows + [PromptRow(f"b{i}", f"fine {i}", "benign") for i in range(n_benign)]


def test_mixed_sampler_holds_the_benign_share_and_cycles_each_type():
    sampler = MixedSampler(_mixed_rows(9, 3), seed=1, benign_share=0.3)
    batches = [sampler.next_batch(8) for _ in range(10)]
    benign = [sum(r.type == "benign" for r in b) for b in batches]
    assert sum(benign) == round(80 * 0.3) and set(benign) <= {2, 3}  # 0.3 x 8 = 2.4 per batch
    # The 3 benign prompts are revisited (their own epochs); each harmful epoch sees all 9.
    drawn = [r.id for b in batches for r in b if r.type == "harmful"]
    assert sorted(drawn[:9]) == sorted(f"h{i}" for i in range(9))
    assert {r.id for b in batches for r in b if r.type == "benign"} == {"b0", "b1", "b2"}


def test_mixed_sampler_resumes_from_a_json_state():
    rows = _mixed_rows(7, 4)
    a = MixedSampler(rows, seed=5, benign_share=0.25)
    for _ in range(3):
        a.next_batch(6)
    state = json.loads(json.dumps(a.state_dict()))
    b = MixedSampler(rows, seed=5, benign_share=0.25)
    b.load_state_dict(state)
    assert [r.id for r in a.next_batch(6)] == [r.id for r in b.next_batch(6)]
    # A checkpoint saved with another share (or none) is not applied: batches restart.
    c = MixedSampler(rows, seed=5, benign_share=0.5)
    c.load_state_dict(state)
    assert c.drawn == 0


def test_benign_share_needs_both_prompt_types():
    with pytest.raises(PreflightError, match=r"0 benign.*benign_prompts"):
        make_sampler(_mixed_rows(3, 0), seed=0, benign_share=0.5)
    assert isinstance(make_sampler(_mixed_rows(3, 0), seed=0, benign_share=None), PromptSampler)
    with pytest.raises(OpsaConfigError, match=r"`benign_share` must be in \(0, 1\).*got 1"):
        TrainConfig(benign_share=1)
    with pytest.raises(OpsaConfigError, match="`benign_prompts` is empty"):
        TrainConfig(benign_share=0.5, benign_prompts=())
