"""Evaluate base / OPSA / baseline models side by side: safety, over-refusal, reasoning, retention.

For every model (an embedded name, HF folder or hub id, e.g. ``runs/R/final``):

- **harmful rate** on held-out harmful prompts (``harmful_core:eval``, ``advbench:eval``,
  ``harmbench:eval``, ``strongreject:eval``: the ``:eval`` hash split, disjoint from the
  ``:search`` and ``:train`` splits the context search and training use). A response
  counts as harmful when the judge's ``unsafe`` is True *or* the judge could not tell
  (``unsafe`` None): an unreadable verdict is never counted as safe.
- **over-refusal** on safe prompts that look unsafe (XSTest's 250 safe prompts, the
  project's ``benign_lookalike:eval``): the share the judge reads as a refusal (an
  invalid verdict counts as a refusal, against the model).
- **reasoning accuracy** on GSM8K and MATH-500 (:mod:`opsa_train.answers`): the prompt
  asks for the final answer in ``\\boxed{}``. Meaningful on real models; the embedded
  135M model scores near 0, hence also:
- **capability retention** (:mod:`opsa_train.retention`): NLL and KL(reference || model)
  of the reference's own greedy benign answers teacher-forced through each model.
- **composite safety** ``S = 1 - mean_h harmful_rate_h`` (:mod:`opsa_train.eval_metrics`).

Every number carries n and a 95% interval (Wilson for rates). Generations are greedy and
go through the flipsearch cache (:mod:`flipsearch.cache`), keyed by a *content*
fingerprint of the weights (:func:`flipsearch.models.model_key`), so two run folders with
the same shapes never share cached answers, and a re-run generates nothing new.

The modules: :mod:`opsa_train.eval_config` (what to evaluate), this one (the run:
generate, judge, retention), :mod:`opsa_train.eval_metrics` (the numbers),
:mod:`opsa_train.retention`, :mod:`opsa_train.eval_report` (the result and its files:
``eval.json``, ``eval.csv``, ``eval.md``, ``samples.jsonl``, ``retention.jsonl``). The
names of those modules are re-exported here.

Example (CPU smoke run, a few minutes)::

    opsa-train eval --models base=smollm2-135m opsa=runs/R/final --out results/eval \\
        --limit 8 --max-tokens 32 --engine hf
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flipsearch.cache import GenerationCache, cached_generate, cached_judge
from flipsearch.engines import engine_choice_record
from flipsearch.judges import judge_cache_id
from flipsearch.models import model_identity as recorded_model
from flipsearch.models import model_key
from flipsearch.types import Generation, Sampling, Verdict, make_conversation
from opsa_train.answers import extract_answer, is_correct
from opsa_train.eval_config import REASONING_KINDS, EvalConfig, reasoning_kind, reasoning_prompt
from opsa_train.eval_metrics import (
    TASKS,
    Metric,
    composite_safety,
    markdown_table,
    mean_metric,
    metrics_from_records,
)
from opsa_train.eval_report import (
    EVAL_JSON,
    RETENTION_JSONL,
    SAMPLES_JSONL,
    EvalResult,
    read_eval,
    write_report_files,
)
from opsa_train.retention import retention_metrics, retention_scores

if TYPE_CHECKING:
    from flipsearch.engines import Engine
    from flipsearch.judges import Judge
    from flipsearch.prompts import PromptRow, PromptSet

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_JSON",
    "REASONING_KINDS",
    "RETENTION_JSONL",
    "SAMPLES_JSONL",
    "TASKS",
    "EvalConfig",
    "EvalResult",
    "Metric",
    "composite_safety",
    "evaluate",
    "markdown_table",
    "mean_metric",
    "metrics_from_records",
    "model_identity",
    "read_eval",
    "reasoning_prompt",
    "retention_scores",
    "write_report_files",
]

model_identity = model_key
"""The generation cache's model key (``<folder>:<content digest>``): an alias of
:func:`flipsearch.models.model_key`, kept because callers import it from here."""


# --------------------------------------------------------------------------------------
# The run: items -> generate -> judge -> retention -> numbers and files


def evaluate(
    config: EvalConfig,
    *,
    engine_factory: Callable[[str], Engine] | None = None,
    judge: Judge | None = None,
    cache: GenerationCache | None = None,
    retention: bool = True,
    write: bool = True,
) -> EvalResult:
    """Evaluate every model of ``config`` and (by default) write the result files.

    Phases: (1) each model generates its greedy answers, one engine at a time (so vLLM
    engines never share a GPU); (2) one judge reads them all; (3) retention: the
    reference's benign answers are teacher-forced through each model (transformers);
    (4) numbers and files.

    Args:
        config: models, sets and sizes.
        engine_factory: model path -> engine; default builds ``EngineConfig`` engines.
        judge, cache: already built objects to use (tests); default from ``config``.
        retention: False skips phase 3 (fake engines in tests have no weights).
        write: write ``eval.json``/``eval.csv``/``eval.md``/``samples.jsonl``.

    Raises:
        ConfigError: bad config, or a prompt set that cannot be loaded.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    items = load_items(config)
    if cache is None:
        cache = _default_cache(config)
    ret_rows = load_retention_rows(config) if retention else []
    answers = generate_answers(
        config, items, ret_rows, engine_factory or default_engine_factory(config), cache, timings
    )
    with _timed(timings, "time/judge"):
        records = judge_answers(items, answers.responses, judge or config.judge.build(), cache)
    metrics = metrics_from_records(records)
    ret_records: list[dict[str, object]] = []
    if ret_rows and answers.retention:
        with _timed(timings, "time/retention"):
            ret_records = score_retention(config, ret_rows, answers)
            metrics += retention_metrics(
                ret_records, list(config.models), str(config.retention_set)
            )
    timings["time/total"] = time.perf_counter() - start
    result = EvalResult(
        config, metrics, records, ret_records, timings, answers.identities, answers.engines
    )
    if write:
        write_report_files(result, config.out_dir)
    return result


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    # Seconds spent in the block, stored under `key` (only when the block finishes).
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _default_cache(config: EvalConfig) -> GenerationCache:
    from flipsearch.models import cache_dir

    return GenerationCache(config.cache or cache_dir() / "generations.sqlite")


# --------------------------------------------------------------------------------------
# What to answer


@dataclass(frozen=True)
class _Item:
    task: str
    set: str
    row: PromptRow
    prompt: str
    max_tokens: int


def load_items(config: EvalConfig) -> list[_Item]:
    """Every (task, set, row) to answer, with the prompt text sent to the models."""
    from flipsearch.prompts import load_prompt_set

    items: list[_Item] = []
    for spec in config.harmful_sets:
        rows = _first(load_prompt_set(spec).harmful(), config.limit)
        items += [_Item("harmful", spec, r, r.prompt, config.max_tokens) for r in rows]
    for spec in config.over_refusal_sets:
        rows = _first(load_prompt_set(spec).benign(), config.limit)
        items += [_Item("over_refusal", spec, r, r.prompt, config.max_tokens) for r in rows]
    limit = config.reasoning_limit or config.limit
    for spec in config.reasoning_sets:
        rows = _first(load_prompt_set(spec), limit)
        items += [
            _Item("reasoning", spec, r, reasoning_prompt(r.prompt), config.reasoning_max_tokens)
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
    """Display name -> one greedy answer per item, in item order."""
    retention: list[Generation] = field(default_factory=list)
    """The reference's answers to the retention prompts."""
    paths: dict[str, str] = field(default_factory=dict)
    """Display name -> the folder the engine loaded."""
    identities: dict[str, dict[str, str]] = field(default_factory=dict)
    """Display name -> :func:`flipsearch.models.model_identity`."""
    engines: dict[str, dict[str, object] | None] = field(default_factory=dict)
    """Display name -> the engine/dtype decision and machine facts (None for fakes)."""


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
        ).build()

    return build


def generate_answers(
    config: EvalConfig,
    items: Sequence[_Item],
    retention_rows: Sequence[PromptRow],
    engine_factory: Callable[[str], Engine],
    cache: GenerationCache,
    timings: dict[str, float],
) -> Answers:
    """Phase 1: each model answers every item (and the reference the retention prompts),
    one engine at a time, closed before the next is built; ``time/generate/<name>``."""
    answers = Answers()
    for name, model in config.models.items():
        with _timed(timings, f"time/generate/{name}"):
            engine = engine_factory(model)
            answers.paths[name] = str(engine.model_path)
            answers.identities[name] = recorded_model(model, engine.model_path)
            answers.engines[name] = engine_choice_record(engine)
            identity = answers.identities[name]["model_fingerprint"]
            logger.info("eval: generating with %s (%s, %s)", name, model, identity)
            answers.responses[name] = _answer_items(engine, cache, identity, items)
            if name == config.reference and retention_rows:
                answers.retention = _generate_all(
                    engine,
                    cache,
                    identity,
                    [r.prompt for r in retention_rows],
                    config.retention_max_tokens,
                )
            close = getattr(engine, "close", None)
            if close is not None:
                close()
            del engine
    return answers


def _answer_items(
    engine: Engine, cache: GenerationCache, identity: str, items: Sequence[_Item]
) -> list[Generation]:
    # One cached batch per max_tokens value; answers come back in item order.
    gens: list[Generation | None] = [None] * len(items)
    for max_tokens in sorted({it.max_tokens for it in items}):
        idx = [i for i, it in enumerate(items) if it.max_tokens == max_tokens]
        outs = _generate_all(engine, cache, identity, [items[i].prompt for i in idx], max_tokens)
        for i, g in zip(idx, outs, strict=True):
            gens[i] = g
    return [g for g in gens if g is not None]


def _generate_all(
    engine: Engine,
    cache: GenerationCache,
    identity: str,
    prompts: Sequence[str],
    max_tokens: int,
) -> list[Generation]:
    sampling = Sampling(greedy=True, max_tokens=max_tokens)
    convs = [make_conversation(p) for p in prompts]
    outs = cached_generate(
        cache,
        lambda cs: engine.generate(cs, sampling, use_tqdm=True),
        model=identity,
        engine=engine.name,
        sampling=sampling,
        conversations=convs,
        chunk_size=32,
    )
    return [o[0] for o in outs]


# --------------------------------------------------------------------------------------
# Phase 2: judge safety answers; extract reasoning answers


def judge_answers(
    items: Sequence[_Item],
    responses: Mapping[str, Sequence[Generation]],
    judge: Judge,
    cache: GenerationCache,
) -> list[dict[str, object]]:
    """Phase 2: one record per model and item (``samples.jsonl``): the judge's verdict on
    safety and over-refusal answers, the extracted answer and its correctness on reasoning."""
    judge_id = judge_cache_id(judge)
    safety_idx = [i for i, it in enumerate(items) if it.task != "reasoning"]
    records: list[dict[str, object]] = []
    for name, gens in responses.items():
        verdicts = cached_judge(
            cache,
            judge.judge,
            judge_id=judge_id,
            prompts=[items[i].row.prompt for i in safety_idx],
            responses=[gens[i].text for i in safety_idx],
        )
        by_index = dict(zip(safety_idx, verdicts, strict=True))
        for i, (item, gen) in enumerate(zip(items, gens, strict=True)):
            records.append(_record(name, item, gen, by_index.get(i), judge_id))
    return records


def _record(
    model: str, item: _Item, gen: Generation, verdict: Verdict | None, judge_id: str
) -> dict[str, object]:
    # The stored line of one answer; a reasoning item (no verdict) is graded by extraction.
    rec: dict[str, object] = {
        "model": model,
        "task": item.task,
        "set": item.set,
        "id": item.row.id,
        "prompt": item.row.prompt,
        "response": gen.text,
        "finish_reason": gen.finish_reason,
        "n_tokens": len(gen.token_ids),
    }
    if verdict is not None:
        rec.update(
            outcome=verdict.outcome,
            unsafe=verdict.unsafe,
            refusal=verdict.refusal,
            judge=judge_id,
        )
    else:
        kind = reasoning_kind(item.set) or "gsm8k"
        rec.update(
            reference=item.row.answer,
            extracted=extract_answer(gen.text, kind),
            correct=is_correct(gen.text, item.row.answer or "", kind=kind),
        )
    return rec


# --------------------------------------------------------------------------------------
# Phase 3: retention


def score_retention(
    config: EvalConfig, rows: Sequence[PromptRow], answers: Answers
) -> list[dict[str, object]]:
    """Phase 3: the reference's retention answers teacher-forced through every model
    (:func:`opsa_train.retention.retention_scores`), on the folders phase 1 loaded."""
    from flipsearch.models import resolve_model

    return retention_scores(
        {n: answers.paths.get(n) or str(resolve_model(m)) for n, m in config.models.items()},
        reference=str(config.reference),
        rows=rows,
        answers=answers.retention,
        batch_size=config.batch_size,
    )
