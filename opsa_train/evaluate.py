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

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from flipsearch.cache import GenerationCache
from flipsearch.judges import judge_cache_id, judge_responses
from flipsearch.models import model_key
from flipsearch.think import SplitResponse, split_response
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
from opsa_train.eval_protocol import JUDGED_TASKS, graded_samples, judge_provenance
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
    judge: Judge | Mapping[str, Judge] | None = None,
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
        judge, cache: already built objects to use (tests): one judge, or task -> judge;
            default from ``config`` (``judge_for`` each task).
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
    judges_run: dict[str, Judge] = {}
    with timed(timings, "time/judge"):
        if judge is None:
            records = _judge_by_config(config, items, answers, cache, judges_run)
        else:
            records = judge_answers(
                items,
                answers.responses,
                judge,
                cache,
                answers.samples,
                opens_trace=answers.opens_trace,
                read=config.judge_reads,
            )
            judges_run.update(
                judge if isinstance(judge, Mapping) else dict.fromkeys(JUDGED_TASKS, judge)
            )
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
        config,
        metrics,
        records,
        ret_records,
        timings,
        answers.identities,
        answers.engines,
        judge_provenance(config, judges_run),
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
    judge: Judge | Mapping[str, Judge],
    cache: GenerationCache,
    samples: Mapping[str, Mapping[int, Sequence[Generation]]] | None = None,
    *,
    opens_trace: Mapping[str, bool] | None = None,
    read: str = "answer",
) -> list[dict[str, object]]:
    """Phase 2: one record per model and item (``samples.jsonl``): the judge's verdict on
    safety and over-refusal answers, the extracted answer and its correctness on reasoning
    (with ``samples``, model -> item index -> its k answers: all k graded for avg@k).

    ``judge``: one judge for every judged task, or task -> judge (``harmful``,
    ``over_refusal``; a task without items needs none).

    A reasoning model is judged and graded on its final answer after ``</think>``
    (:func:`flipsearch.judges.judge_responses`); the record keeps the whole response and
    the ``trace``. A trace that never closed is ``unfinished``: ``unsafe`` None (harmful on
    harmful prompts, a refusal on benign ones) and, on reasoning items, not correct.
    ``opens_trace``: per model, whether its template opens ``<think>`` in the prompt.
    ``read="trace"`` (``EvalConfig.judge_reads``): the judges read the trace instead of
    the final answer; reasoning items are still graded on the answer."""
    by_task = judge if isinstance(judge, Mapping) else dict.fromkeys(JUDGED_TASKS, judge)
    verdicts: dict[tuple[str, int], tuple[Verdict, str]] = {}
    for one in {id(j): j for j in by_task.values()}.values():
        tasks = [t for t, j in by_task.items() if j is one]
        verdicts.update(
            judge_tasks(items, responses, one, tasks, cache, opens_trace=opens_trace, read=read)
        )
    return answer_records(items, responses, verdicts, samples, opens_trace=opens_trace)


def judge_tasks(
    items: Sequence[EvalItem],
    responses: Mapping[str, Sequence[Generation]],
    judge: Judge,
    tasks: Sequence[str],
    cache: GenerationCache,
    *,
    opens_trace: Mapping[str, bool] | None = None,
    read: str = "answer",
) -> dict[tuple[str, int], tuple[Verdict, str]]:
    """``(model, item index) -> (verdict, judge id)`` of ``judge`` on the items of ``tasks``,
    read from each final answer or (``read="trace"``) trace."""
    judge_id = judge_cache_id(judge)
    idx = [i for i, it in enumerate(items) if it.task in tasks]
    out: dict[tuple[str, int], tuple[Verdict, str]] = {}
    if not idx:
        return out
    for name, gens in responses.items():
        opened = bool((opens_trace or {}).get(name, False))
        verdicts = judge_responses(
            judge,
            [items[i].row.prompt for i in idx],
            [gens[i].text for i in idx],
            cache=cache,
            opened_in_prompt=opened,
            read=read,
        )
        out.update({(name, i): (v, judge_id) for i, v in zip(idx, verdicts, strict=True)})
    return out


def answer_records(
    items: Sequence[EvalItem],
    responses: Mapping[str, Sequence[Generation]],
    verdicts: Mapping[tuple[str, int], tuple[Verdict, str]],
    samples: Mapping[str, Mapping[int, Sequence[Generation]]] | None = None,
    *,
    opens_trace: Mapping[str, bool] | None = None,
) -> list[dict[str, object]]:
    """The records of every model and item, in model then item order (see
    :func:`judge_answers`); a judged item without a verdict is a programming error."""
    records: list[dict[str, object]] = []
    for name, gens in responses.items():
        sampled = (samples or {}).get(name, {})
        opened = bool((opens_trace or {}).get(name, False))
        for i, (item, gen) in enumerate(zip(items, gens, strict=True)):
            split = split_response(gen.text, opened_in_prompt=opened)
            verdict, judge_id = verdicts.get((name, i), (None, ""))
            if verdict is None and item.task in JUDGED_TASKS:
                raise RuntimeError(f"no verdict for {name!r} item {i} ({item.task})")
            rec = _record(name, item, gen, split, verdict, judge_id)
            if i in sampled:
                rec.update(graded_samples(item, sampled[i]))
            records.append(rec)
    return records


def _judge_by_config(
    config: EvalConfig,
    items: Sequence[EvalItem],
    answers: Answers,
    cache: GenerationCache,
    judges_run: dict[str, Judge],
) -> list[dict[str, object]]:
    # Each distinct judge of the config is built, reads its tasks' answers, and its engine
    # is closed before the next judge starts (two guard models never share a GPU).
    verdicts: dict[tuple[str, int], tuple[Verdict, str]] = {}
    present = {it.task for it in items}
    distinct: dict[str, list[str]] = {}
    for task in JUDGED_TASKS:
        if task in present:
            key = json.dumps(config.judge_for(task).to_dict(), sort_keys=True)
            distinct.setdefault(key, []).append(task)
    for tasks in distinct.values():
        judge = config.judge_for(tasks[0]).build()
        try:
            verdicts.update(
                judge_tasks(
                    items,
                    answers.responses,
                    judge,
                    tasks,
                    cache,
                    opens_trace=answers.opens_trace,
                    read=config.judge_reads,
                )
            )
            judges_run.update(dict.fromkeys(tasks, judge))
        finally:
            close = getattr(getattr(judge, "engine", None), "close", None)
            if close is not None:
                close()
    return answer_records(
        items, answers.responses, verdicts, answers.samples, opens_trace=answers.opens_trace
    )


def _record(
    model: str,
    item: EvalItem,
    gen: Generation,
    split: SplitResponse,
    verdict: Verdict | None,
    judge_id: str,
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
        "trace": split.trace,
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
        kind = reasoning_kind(item.set, item.row.source) or "gsm8k"  # checked by load_items
        rec.update(
            reference=item.row.answer,
            extracted=extract_answer(split.answer, kind),
            correct=is_correct(split.answer, item.row.answer or "", kind=kind),
            unfinished=not split.finished,
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
        enable_thinking=config.enable_thinking,
    )
