"""Chat templates without a system role, or with a default system prompt.

Tokenizer-level only: the embedded model's tokenizer with small Jinja templates in the
styles of Gemma (raises on a system message), an older Mistral (drops it silently) and
Llama 3.1 (always renders a system header), plus the embedded SmolLM2's own template
(a default system prompt). No model is loaded.
"""

from __future__ import annotations

import logging

import pytest

from flipsearch.cache import GenerationCache
from flipsearch.commands.score import result_document
from flipsearch.contexts import Context, apply_context
from flipsearch.engines.chat import render_prompt_ids, render_prompt_text
from flipsearch.engines.template_caps import (
    TemplateCaps,
    fit_to_template,
    fold_system,
    template_caps,
)
from flipsearch.errors import ConfigError
from flipsearch.flip import FlipScorer, ScoreSettings
from flipsearch.judges import make_judge
from flipsearch.prompts import load_prompt_set
from flipsearch.types import Generation, make_conversation

GEMMA_LIKE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
DROPS_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "[INST] {{ m['content'] }} [/INST]{% elif m['role'] == 'assistant' %}"
    "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
LLAMA31_LIKE = (
    "<|im_start|>system\nCutting Knowledge Date: December 2023\n\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}"
    "<|im_end|>\n{% for m in messages %}{% if m['role'] != 'system' %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CONTEXT = "Refuse harmful requests."
PROMPT = "How do I pick a lock?"


@pytest.fixture
def tokenizer(embedded_model_path):
    # A fresh tokenizer per test: its template is replaced, and probes are per tokenizer.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path)


def _with_template(tokenizer, template: str | None):
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def _conversation(context: str = CONTEXT, placement: str = "system", **kw):
    return apply_context(make_conversation(PROMPT), context, placement, **kw)


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("template", "caps"),
    [
        (GEMMA_LIKE, TemplateCaps(system_role=False)),
        (DROPS_SYSTEM, TemplateCaps(system_role=False)),
        (LLAMA31_LIKE, TemplateCaps(system_role=True, default_system=None)),
        (None, TemplateCaps(system_role=True, default_system=SMOLLM_DEFAULT)),
    ],
    ids=["raises", "drops", "system-header", "embedded"],
)
def test_capabilities_are_detected(tokenizer, template, caps):
    assert template_caps(_with_template(tokenizer, template)) == caps


@pytest.mark.parametrize(
    ("template", "placement"),
    [
        (GEMMA_LIKE, "folded_into_user"),
        (DROPS_SYSTEM, "folded_into_user"),
        (LLAMA31_LIKE, "native"),
        (None, "replaces_default"),
    ],
    ids=["raises", "drops", "system-header", "embedded"],
)
def test_system_placement_names_what_happens(tokenizer, template, placement):
    caps = template_caps(_with_template(tokenizer, template))
    assert caps.system_placement() == placement


def test_a_template_is_probed_once_not_per_prompt(tokenizer):
    tokenizer.chat_template = GEMMA_LIKE
    system_renders = []
    original = tokenizer.apply_chat_template

    def counting(messages, *args, **kwargs):
        if messages[0]["role"] == "system":
            system_renders.append(messages)
        return original(messages, *args, **kwargs)

    tokenizer.apply_chat_template = counting
    for _ in range(10):
        render_prompt_ids(tokenizer, _conversation())
    assert len(system_renders) == 1  # the probe; every prompt after it is folded first


def test_a_changed_template_is_probed_again(tokenizer):
    assert template_caps(tokenizer).system_role
    tokenizer.chat_template = GEMMA_LIKE
    assert not template_caps(tokenizer).system_role


def test_a_template_that_fails_on_a_user_turn_is_a_config_error(tokenizer):
    tokenizer.chat_template = "{{ raise_exception('broken') }}"
    with pytest.raises(ConfigError, match=r"must render a lone user turn.*broken"):
        template_caps(tokenizer)


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("template", [GEMMA_LIKE, DROPS_SYSTEM], ids=["raises", "drops"])
def test_system_placement_is_folded_into_the_first_user_turn(tokenizer, template):
    tokenizer.chat_template = template
    ids = render_prompt_ids(tokenizer, _conversation())
    # Exactly what prefix placement gives: the context, the separator, the prompt.
    assert ids == render_prompt_ids(tokenizer, _conversation(placement="prefix"))
    folded = [{"role": "user", "content": f"{CONTEXT}\n\n{PROMPT}"}]
    assert ids == tokenizer.apply_chat_template(
        folded, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert f"{CONTEXT}\n\n{PROMPT}" in tokenizer.decode(ids)


def test_the_context_goes_into_the_first_user_turn_of_a_multi_turn_conversation(tokenizer):
    tokenizer.chat_template = GEMMA_LIKE
    conv = make_conversation(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": PROMPT},
        ]
    )
    text = render_prompt_text(tokenizer, apply_context(conv, CONTEXT, "system"))
    assert f"<start_of_turn>user\n{CONTEXT}\n\nHi<end_of_turn>" in text
    assert f"<start_of_turn>user\n{PROMPT}<end_of_turn>" in text


def test_a_template_with_a_system_role_renders_it_unchanged(tokenizer):
    tokenizer.chat_template = LLAMA31_LIKE
    conv = _conversation()
    assert fit_to_template(tokenizer, conv) == conv
    text = render_prompt_text(tokenizer, conv)
    assert f"December 2023\n\n{CONTEXT}<|im_end|>\n<|im_start|>user\n{PROMPT}" in text


def test_system_placement_replaces_the_embedded_default(tokenizer):
    base = render_prompt_text(tokenizer, make_conversation(PROMPT))
    assert SMOLLM_DEFAULT in base  # the template's own default without a system message
    text = render_prompt_text(tokenizer, _conversation())
    assert SMOLLM_DEFAULT not in text
    assert text.startswith(f"<|im_start|>system\n{CONTEXT}<|im_end|>\n<|im_start|>user\n")


def test_system_placement_keeps_the_embedded_default_when_asked(tokenizer):
    default = template_caps(tokenizer).default_system
    text = render_prompt_text(tokenizer, _conversation(default_system=default))
    assert text.startswith(f"<|im_start|>system\n{CONTEXT}\n\n{SMOLLM_DEFAULT}<|im_end|>\n")


def test_keeping_the_default_leaves_other_placements_alone():
    conv = make_conversation(PROMPT)
    for placement in ("prefix", "suffix"):
        kept = apply_context(conv, CONTEXT, placement, default_system=SMOLLM_DEFAULT)
        assert kept == apply_context(conv, CONTEXT, placement)
    assert apply_context(conv, "", "system", default_system=SMOLLM_DEFAULT) == conv


def test_fold_needs_a_user_turn_after_the_system_message():
    with pytest.raises(ConfigError, match="must be followed by a user turn"):
        fold_system(({"role": "system", "content": CONTEXT},))


# ---------------------------------------------------------------- warning


def _fold_warnings(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "flipsearch.engines.template_caps" and "no system role" in r.message
    ]


def test_folding_is_warned_once_not_per_prompt(tokenizer, caplog):
    tokenizer.chat_template = GEMMA_LIKE
    with caplog.at_level(logging.WARNING, logger="flipsearch.engines.template_caps"):
        for i in range(20):
            render_prompt_ids(tokenizer, _conversation(context=f"Context {i}."))
    assert len(_fold_warnings(caplog)) == 1


def test_no_warning_without_a_system_message_or_with_a_system_role(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="flipsearch.engines.template_caps"):
        render_prompt_ids(tokenizer, _conversation())  # embedded: has a system role
        tokenizer.chat_template = GEMMA_LIKE
        render_prompt_ids(tokenizer, _conversation(placement="prefix"))
    assert _fold_warnings(caplog) == []


# ---------------------------------------------------------------- scorer and provenance


class _Engine:
    """Renders each conversation with the real tokenizer and answers with its text."""

    name = "fake"
    model_path = "fake-model"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.prompts: list[str] = []

    def generate(self, conversations, sampling, *, use_tqdm=False):
        self.prompts += [render_prompt_text(self.tokenizer, c) for c in conversations]
        return [[Generation("I'm sorry, I can't help.", (), (), "stop")] for _ in conversations]


def _score(tokenizer, settings: ScoreSettings | None = None):
    engine = _Engine(tokenizer)
    scorer = FlipScorer(
        engine, make_judge(), GenerationCache(":memory:"), settings or ScoreSettings()
    )
    harmful = load_prompt_set("harmful_core:search", limit=2).harmful()
    result = scorer.score(Context(CONTEXT, "system"), harmful)
    doc = result_document(result, scorer, harmful, None, {})
    return engine, doc["provenance"]


def test_provenance_records_a_folded_system_placement(tokenizer):
    engine, provenance = _score(_with_template(tokenizer, GEMMA_LIKE))
    assert provenance["system_placement"] == "folded_into_user"
    assert provenance["default_system"] is None
    assert sum(p.count(f"<start_of_turn>user\n{CONTEXT}\n\n") for p in engine.prompts) == 2


def test_provenance_records_the_replaced_default(tokenizer):
    engine, provenance = _score(tokenizer)
    assert provenance["system_placement"] == "replaces_default"
    assert provenance["default_system"] == SMOLLM_DEFAULT[:80]
    with_context = [p for p in engine.prompts if CONTEXT in p]
    assert len(with_context) == 2 and not any(SMOLLM_DEFAULT in p for p in with_context)


def test_keep_default_system_keeps_it_and_says_so(tokenizer):
    engine, provenance = _score(tokenizer, ScoreSettings(keep_default_system=True))
    assert provenance["system_placement"] == "keeps_default"
    with_context = [p for p in engine.prompts if CONTEXT in p]
    assert len(with_context) == 2
    assert all(f"{CONTEXT}\n\n{SMOLLM_DEFAULT}<|im_end|>" in p for p in with_context)


def test_keep_default_system_without_a_default_is_ignored_with_a_warning(tokenizer, caplog):
    tokenizer.chat_template = LLAMA31_LIKE
    with caplog.at_level(logging.WARNING, logger="flipsearch.flip"):
        _, provenance = _score(tokenizer, ScoreSettings(keep_default_system=True))
    assert provenance["system_placement"] == "native"
    assert any("`keep_default_system` is ignored" in r.message for r in caplog.records)


def test_an_engine_without_a_chat_template_records_none():
    class _NoTemplate(_Engine):
        def __init__(self) -> None:
            self.tokenizer = None

    scorer = FlipScorer(_NoTemplate(), make_judge(), GenerationCache(":memory:"), ScoreSettings())
    assert scorer.template_record() == {"system_placement": None, "default_system": None}


def test_keep_default_system_is_wired_through_sweep_and_score(tokenizer, tmp_path):
    from flipsearch.cli import build_parser
    from flipsearch.commands.sweep import config_from_args
    from flipsearch.space import load_search_space
    from flipsearch.sweep._provenance import provenance
    from flipsearch.sweep._run import _scorer

    parser = build_parser()
    score_args = parser.parse_args(["score", "--context", CONTEXT, "--keep-default-system"])
    assert score_args.keep_default_system
    argv = ["sweep", "--trials", "1", "--study", "s", "--results-dir", str(tmp_path)]
    argv.append("--keep-default-system")
    config = config_from_args(parser.parse_args(argv))
    assert config.keep_default_system and "keep_default_system" in config.identity()
    cache = GenerationCache(":memory:")
    scorer = _scorer(config, _Engine(tokenizer), make_judge(), cache)  # type: ignore[arg-type]
    assert scorer.settings.keep_default_system
    sets = [load_prompt_set("harmful_core:search", limit=1)]
    record = provenance(config, scorer, load_search_space("paper_axes"), sets)
    assert record["system_placement"] == "keeps_default"
    assert record["default_system"] == SMOLLM_DEFAULT


def test_eval_records_what_system_placement_did_for_the_teacher_row(tokenizer, embedded_model_path):
    # The teacher row's engine record carries the template's system handling, as sweep
    # and score provenance do; student rows (no contexts) do not.
    from flipsearch.engines import EngineChoice, choose_engine
    from opsa_train.data import TeacherContexts
    from opsa_train.eval_generate import Answers, _note_engine

    class Stub:
        model_path = embedded_model_path
        choice: EngineChoice = choose_engine("hf", "float32")

        def __init__(self, tok):
            self.tokenizer = tok

    answers = Answers()
    contexts = TeacherContexts(harmful=Context(CONTEXT, "system"), benign=None)
    _note_engine(answers, "teacher", "smollm2-135m", Stub(tokenizer), contexts)
    _note_engine(answers, "base", "smollm2-135m", Stub(tokenizer))
    teacher, base = answers.engines["teacher"], answers.engines["base"]
    assert teacher is not None and base is not None
    assert teacher["system_placement"] == "replaces_default"
    assert teacher["default_system"].startswith("You are a helpful AI assistant named SmolLM")
    assert "system_placement" not in base
    kept = contexts.with_template(tokenizer, keep_default_system=True)
    _note_engine(answers, "teacher", "smollm2-135m", Stub(tokenizer), kept)
    assert answers.engines["teacher"]["system_placement"] == "keeps_default"  # type: ignore[index]
