"""The evaluation's phase 1: what each model answers, and its greedy answers.

:func:`load_items` lists every (task, set, row) with the prompt text sent to the models;
:func:`generate_answers` has each model answer them, one engine at a time, through the
generation cache. The teacher row (:class:`opsa_train.eval_config.TeacherSpec`) answers
the same items with its privileged contexts: I_h before harmful prompts, I_b before the
others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flipsearch.cache import GenerationCache, cached_generate
from flipsearch.engines import engine_choice_record
from flipsearch.engines.chat import enable_thinking_of, rendered_model_key, template_opens_trace
from flipsearch.engines.template_caps import template_caps
from flipsearch.models import model_identity as recorded_model
from flipsearch.types import Conversation, Generation, Sampling, make_conversation
from opsa_train.eval_config import TEACHER, EvalConfig, reasoning_prompt
from opsa_train.eval_protocol import check_reasoning_rows, reasoning_sampling

if TYPE_CHECKING:
    from flipsearch.engines import Engine
    from flipsearch.prompts import PromptRow, PromptSet
    from opsa_train.data import TeacherContexts

__all__ = [
    "Answers",
    "EvalItem",
    "default_engine_factory",
    "generate_answers",
    "load_items",
    "load_retention_rows",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Seconds spent in the block, stored under ``key`` (only when the block finishes)."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


@dataclass(frozen=True)
class EvalItem:
    task: str
    set: str
    row: PromptRow
    prompt: str
    max_tokens: int
    sampling: Sampling | None = None
    """None: greedy at ``max_tokens``; else how the item is sampled (avg@k reasoning)."""

    def decoding(self) -> Sampling:
        return self.sampling or Sampling(greedy=True, max_tokens=self.max_tokens)


def load_items(config: EvalConfig) -> list[EvalItem]:
    """Every (task, set, row) to answer, with the prompt text sent to the models."""
    from flipsearch.prompts import load_prompt_set

    items: list[EvalItem] = []
    for spec in config.harmful_sets:
        rows = _first(load_prompt_set(spec).harmful(), config.limit)
        items += [EvalItem("harmful", spec, r, r.prompt, config.max_tokens) for r in rows]
    for spec in config.over_refusal_sets:
        rows = _first(load_prompt_set(spec).benign(), config.limit)
        items += [EvalItem("over_refusal", spec, r, r.prompt, config.max_tokens) for r in rows]
    limit = config.reasoning_limit or config.limit
    sampling = reasoning_sampling(config)
    for spec in config.reasoning_sets:
        rows = _first(load_prompt_set(spec), limit)
        check_reasoning_rows(spec, rows)
        items += [
            EvalItem(
                "reasoning",
                spec,
                r,
                reasoning_prompt(r.prompt),
                config.reasoning_max_tokens,
                None if sampling.greedy else sampling,
            )
            for r in rows
        ]
    return items


def load_retention_rows(config: EvalConfig) -> list[PromptRow]:
    """The benign prompts the reference answers for the retention measure (none if unset)."""
    if not config.retention_set:
        return []
    from flipsearch.prompts import load_prompt_set

    return _first(load_prompt_set(config.retention_set).benign(), config.limit)


def _first(ps: PromptSet, limit: int | None) -> list[PromptRow]:
    rows = list(ps.rows)
    return rows if limit is None else rows[:limit]


# --------------------------------------------------------------------------------------
# Phase 1: generate


@dataclass
class Answers:
    """What phase 1 produced: every model's answers and where its weights were."""

    responses: dict[str, list[Generation]] = field(default_factory=dict)
    """Display name -> one answer per item, in item order (the first of sampled items')."""
    samples: dict[str, dict[int, list[Generation]]] = field(default_factory=dict)
    """Display name -> item index -> all k answers of the items sampled k > 1 times."""
    retention: list[Generation] = field(default_factory=list)
    """The reference's answers to the retention prompts."""
    paths: dict[str, str] = field(default_factory=dict)
    """Display name -> the folder the engine loaded."""
    identities: dict[str, dict[str, str]] = field(default_factory=dict)
    """Display name -> :func:`flipsearch.models.model_identity`."""
    engines: dict[str, dict[str, object] | None] = field(default_factory=dict)
    """Display name -> the engine/dtype decision and machine facts (None for fakes)."""
    opens_trace: dict[str, bool] = field(default_factory=dict)
    """Display name -> whether its chat template opens ``<think>`` in the prompt, so its
    answers start inside the trace (:func:`flipsearch.engines.chat.template_opens_trace`)."""


def default_engine_factory(config: EvalConfig) -> Callable[[str], Engine]:
    """Builds one generation engine per model path from ``config``."""
    from flipsearch.engines import EngineConfig

    def build(model: str) -> Engine:
        return EngineConfig(
            model=model,
            engine=config.engine,
            max_model_len=config.max_model_len,
            batch_size=config.batch_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enable_thinking=config.enable_thinking,
        ).build()

    return build


def generate_answers(
    config: EvalConfig,
    items: Sequence[EvalItem],
    retention_rows: Sequence[PromptRow],
    engine_factory: Callable[[str], Engine],
    cache: GenerationCache,
    timings: dict[str, float],
) -> Answers:
    """Phase 1: each model answers every item (and the reference the retention prompts),
    one engine at a time, closed before the next is built; ``time/generate/<name>``.
    The teacher row answers with its contexts, on the reference's engine when it has no
    weights of its own."""
    answers = Answers()
    teacher = config.teacher
    contexts = teacher.contexts() if teacher is not None else None
    for name, model in config.models.items():
        with timed(timings, f"time/generate/{name}"), _engine(engine_factory, model) as engine:
            identity = _note_engine(answers, name, model, engine)
            answers.responses[name] = _answer_items(
                engine, cache, identity, items, samples=answers.samples.setdefault(name, {})
            )
            if name != config.reference:
                continue
            if retention_rows:
                answers.retention = _generate_all(
                    engine,
                    cache,
                    identity,
                    [make_conversation(r.prompt) for r in retention_rows],
                    config.retention_max_tokens,
                )
            if teacher is not None and contexts is not None and teacher.model is None:
                contexts = contexts.with_template(
                    engine.tokenizer, keep_default_system=teacher.keep_default_system
                )
                _note_engine(answers, TEACHER, model, engine, contexts)
                answers.responses[TEACHER] = _answer_items(
                    engine,
                    cache,
                    identity,
                    items,
                    contexts,
                    answers.samples.setdefault(TEACHER, {}),
                )
    if teacher is not None and contexts is not None and teacher.model is not None:
        with (
            timed(timings, f"time/generate/{TEACHER}"),
            _engine(engine_factory, teacher.model) as engine,
        ):
            contexts = contexts.with_template(
                engine.tokenizer, keep_default_system=teacher.keep_default_system
            )
            identity = _note_engine(answers, TEACHER, teacher.model, engine, contexts)
            answers.responses[TEACHER] = _answer_items(
                engine, cache, identity, items, contexts, answers.samples.setdefault(TEACHER, {})
            )
    return answers


@contextlib.contextmanager
def _engine(engine_factory: Callable[[str], Engine], model: str) -> Iterator[Engine]:
    # One engine, closed (and dropped) before the next is built: vLLM never shares a GPU.
    engine = engine_factory(model)
    try:
        yield engine
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
        del engine


def _note_engine(
    answers: Answers,
    name: str,
    model: str,
    engine: Engine,
    contexts: TeacherContexts | None = None,
) -> str:
    # Record where `name`'s weights came from; returns the cache's model identity.
    answers.paths[name] = str(engine.model_path)
    answers.identities[name] = recorded_model(model, engine.model_path)
    if contexts is not None:
        answers.identities[name]["contexts"] = json.dumps(contexts.describe())
    answers.engines[name] = engine_choice_record(engine)
    tokenizer = getattr(engine, "tokenizer", None)
    record = answers.engines[name]
    if contexts is not None and tokenizer is not None and record is not None:
        # What `system` placement did with this chat template for the teacher row.
        caps = template_caps(tokenizer)
        record.update(caps.record(keep_default_system=contexts.default_system is not None))
    answers.opens_trace[name] = tokenizer is not None and template_opens_trace(tokenizer)
    if tokenizer is not None:
        answers.identities[name]["enable_thinking"] = json.dumps(enable_thinking_of(tokenizer))
    identity = rendered_model_key(answers.identities[name]["model_fingerprint"], tokenizer)
    logger.info("eval: generating with %s (%s, %s)", name, model, identity)
    return identity


def _answer_items(
    engine: Engine,
    cache: GenerationCache,
    identity: str,
    items: Sequence[EvalItem],
    contexts: TeacherContexts | None = None,
    samples: dict[int, list[Generation]] | None = None,
) -> list[Generation]:
    # One cached batch per decoding; answers come back in item order (the first of k).
    # With `contexts`, harmful items get I_h and the others I_b (the teacher row); all k
    # answers of items sampled k > 1 times go to `samples`.
    gens: list[Generation | None] = [None] * len(items)
    decodings = {it.decoding() for it in items}
    for decoding in sorted(decodings, key=lambda d: (d.max_tokens, d.n, d.temperature)):
        idx = [i for i, it in enumerate(items) if it.decoding() == decoding]
        convs = [_conversation(items[i], contexts) for i in idx]
        outs = _generate_samples(engine, cache, identity, convs, decoding)
        for i, g in zip(idx, outs, strict=True):
            gens[i] = g[0]
            if samples is not None and len(g) > 1:
                samples[i] = list(g)
    return [g for g in gens if g is not None]


def _conversation(item: EvalItem, contexts: TeacherContexts | None) -> Conversation:
    conv = make_conversation(item.prompt)
    if contexts is None:
        return conv
    return contexts.apply("harmful" if item.task == "harmful" else "benign", conv)


def _generate_all(
    engine: Engine,
    cache: GenerationCache,
    identity: str,
    convs: Sequence[Conversation],
    max_tokens: int,
) -> list[Generation]:
    greedy = Sampling(greedy=True, max_tokens=max_tokens)
    return [o[0] for o in _generate_samples(engine, cache, identity, convs, greedy)]


def _generate_samples(
    engine: Engine,
    cache: GenerationCache,
    identity: str,
    convs: Sequence[Conversation],
    sampling: Sampling,
) -> list[list[Generation]]:
    return cached_generate(
        cache,
        lambda cs: engine.generate(cs, sampling, use_tqdm=True),
        model=identity,
        engine=engine.name,
        sampling=sampling,
        conversations=list(convs),
        chunk_size=32,
    )
