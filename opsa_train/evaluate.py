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
- **composite safety**: harm-only ``S_harm = 1 - mean_h harmful_rate_h`` and the paper's
  Eq. 6 ``S_eq6`` (harmful and over-refusal rates; :mod:`opsa_train.eval_composite`).

Every number carries n and a 95% interval (Wilson for rates). Generations are greedy and
go through the flipsearch cache (:mod:`flipsearch.cache`), keyed by a *content*
fingerprint of the weights (:func:`flipsearch.models.model_key`), so two run folders with
the same shapes never share cached answers, and a re-run generates nothing new.

With a teacher (``EvalConfig.teacher``: an export file's contexts on the base weights),
a ``teacher`` row and each trained model's distillation efficiency
(:mod:`opsa_train.efficiency`) show how much of the teacher's safety it kept.

The modules: :mod:`opsa_train.eval_config` (what to evaluate),
:mod:`opsa_train.eval_generate` (phase 1: generate), this one (the run: judge,
retention), :mod:`opsa_train.eval_metrics` (the numbers),
:mod:`opsa_train.retention`, :mod:`opsa_train.eval_report` (the result and its files:
``eval.json``, ``eval.csv``, ``eval.md``, ``samples.jsonl``, ``retention.jsonl``). The
names of those modules are re-exported here.

Example (CPU smoke run, a few minutes)::

    opsa-train eval --models base=smollm2-135m opsa=runs/R/final --out results/eval \\
        --limit 8 --max-tokens 32 --engine hf
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from flipsearch.cache import GenerationCache, cached_judge
from flipsearch.judges import judge_cache_id
from flipsearch.models import model_key
from flipsearch.types import Generation, Verdict
from opsa_train.answers import extract_answer, is_correct
from opsa_train.efficiency import efficiency_metrics
from opsa_train.eval_config import (
    REASONING_KINDS,
    EvalConfig,
    reasoning_kind,
    reasoning_prompt,
)
from opsa_train.eval_generate import (
    Answers,
    EvalItem,
    default_engine_factory,
    generate_answers,
    load_items,
    load_retention_rows,
    timed,
)
from opsa_train.eval_metrics import (
    TASKS,
    Metric,
    composite_safety_harm,
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
    from flipsearch.prompts import PromptRow

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
    "composite_safety_harm",
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
    with timed(timings, "time/judge"):
        records = judge_answers(items, answers.responses, judge or config.judge.build(), cache)
    metrics = metrics_from_records(records)
    if config.teacher is not None:
        students = [m for m in config.models if m != config.reference]
        metrics += efficiency_metrics(records, base=str(config.reference), students=students)
    ret_records: list[dict[str, object]] = []
    if ret_rows and answers.retention:
        with timed(timings, "time/retention"):
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


def _default_cache(config: EvalConfig) -> GenerationCache:
    from flipsearch.models import cache_dir

    return GenerationCache(config.cache or cache_dir() / "generations.sqlite")


# --------------------------------------------------------------------------------------
# Phase 2: judge safety answers; extract reasoning answers


def judge_answers(
    items: Sequence[EvalItem],
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
    model: str, item: EvalItem, gen: Generation, verdict: Verdict | None, judge_id: str
) -> dict[str, object]:
    # The stored line of one answer; a reasoning item (no verdict) is graded by extraction.
    rec: dict[str, object] = {
        "model": model,
        "task": item.task,
        "set": item.set,
        "id": item.row.id,
        "source": item.row.source,
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
