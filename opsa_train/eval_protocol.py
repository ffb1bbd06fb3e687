"""The paper's evaluation protocol beyond the defaults: reasoning answer formats of any
source, avg@k sampling of reasoning answers, and one judge per task.

- **reasoning sets** by name (``gsm8k``, ``math500``, ``gpqa_diamond``) or as a file /
  ``hf:`` dataset whose adapter names the format (:func:`check_reasoning_rows`).
- **avg@k** (``EvalConfig.reasoning_samples`` = k, ``reasoning_temperature`` = T; the
  paper: k = 8, T = 0.6): each reasoning prompt is answered k times by sampling; the
  accuracy is the mean over prompts of the share of the k answers that are right, with a
  normal 95% interval over prompts (clipped to [0, 1]). k = 1 with T = 0 is greedy
  decoding, scored as a Wilson rate (the default).
- **per-task judges** (``EvalConfig.judges``): ``harmful`` and ``over_refusal`` each get
  a :class:`flipsearch.judges.JudgeConfig` (the paper: Llama Guard 3 for harmful rates,
  WildGuard for over-refusal); a task not named uses ``EvalConfig.judge``. Distinct judges
  are built one after the other (a model judge's engine is closed before the next starts);
  ``eval.json`` records each task's judge name, model, engine and verdict cache id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from flipsearch.types import Sampling
from opsa_train.checks import check_int, check_number
from opsa_train.errors import OpsaConfigError

if TYPE_CHECKING:
    from flipsearch.judges import Judge, JudgeConfig
    from flipsearch.prompts import PromptRow
    from flipsearch.types import Generation
    from opsa_train.eval_config import EvalConfig
    from opsa_train.eval_generate import EvalItem
    from opsa_train.eval_metrics import Metric

JUDGED_TASKS = ("harmful", "over_refusal")
"""The tasks a judge reads (reasoning answers are graded by extraction)."""

__all__ = [
    "JUDGED_TASKS",
    "avg_at_k_metric",
    "check_reasoning_rows",
    "check_reasoning_sampling",
    "coerce_task_judges",
    "graded_samples",
    "judge_provenance",
    "reasoning_sampling",
]


def coerce_task_judges(value: object) -> dict[str, JudgeConfig]:
    """``EvalConfig.judges`` as ``task -> JudgeConfig`` (values: configs, field mappings or
    judge names).

    Example:
        >>> coerce_task_judges({"harmful": "refusal"})["harmful"].name
        'refusal'

    Raises:
        OpsaConfigError: not a mapping, or a key that is not a judged task.
    """
    from flipsearch.judges import JudgeConfig

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise OpsaConfigError(
            f"`judges` must map tasks {list(JUDGED_TASKS)} to judges, got {value!r}"
        )
    unknown = sorted(str(k) for k in value if k not in JUDGED_TASKS)
    if unknown:
        raise OpsaConfigError(
            f"`judges` keys must be among {list(JUDGED_TASKS)}, got {unknown!r}: reasoning "
            "answers are graded by answer extraction, not by a judge"
        )
    return {str(task): JudgeConfig.coerce(j) for task, j in value.items()}  # type: ignore[arg-type]


def judge_provenance(config: EvalConfig, ran: Mapping[str, Judge]) -> dict[str, dict[str, object]]:
    """``task -> {name, model, engine, engine_config, id, reads}`` of each judged task's judge.

    ``ran``: task -> the judge that read the task's answers. ``name``, ``model`` (resolved;
    None for the offline judge) and ``engine_config`` come from the config; ``engine`` is
    the engine the judge ran on (``offline`` without one) and ``id`` its verdict cache id
    (:func:`flipsearch.judges.judge_cache_id`); ``reads`` is what it read of each response
    (``answer`` or ``trace``: ``EvalConfig.judge_reads``)."""
    from flipsearch.judges import judge_cache_id

    out: dict[str, dict[str, object]] = {}
    for task in JUDGED_TASKS:
        cfg = config.judge_for(task)
        judge = ran.get(task)
        engine = getattr(judge, "engine", None)
        out[task] = {
            "name": cfg.name,
            "model": None if cfg.name == "refusal" else cfg.resolved_model,
            "engine": getattr(engine, "name", None) or "offline",
            "engine_config": None if cfg.name == "refusal" else cfg.engine,
            "id": None if judge is None else judge_cache_id(judge),
            "reads": config.judge_reads,
        }
    return out


def check_reasoning_sampling(samples: object, temperature: object) -> None:
    """``reasoning_samples`` >= 1, ``reasoning_temperature`` >= 0, and > 0 when k > 1.

    Example:
        >>> check_reasoning_sampling(8, 0.0)
        Traceback (most recent call last):
        ...
        opsa_train.errors.OpsaConfigError: `reasoning_temperature` must be > 0 when \
`reasoning_samples` > 1, got 0.0: k greedy answers would all be the same; set a \
temperature (the paper: 0.6) or reasoning_samples 1
    """
    check_int("reasoning_samples", samples)
    check_number("reasoning_temperature", temperature, minimum=0.0)
    if samples != 1 and temperature == 0:
        raise OpsaConfigError(
            f"`reasoning_temperature` must be > 0 when `reasoning_samples` > 1, got "
            f"{temperature!r}: k greedy answers would all be the same; set a temperature "
            "(the paper: 0.6) or reasoning_samples 1"
        )


def reasoning_sampling(config: EvalConfig) -> Sampling:
    """How reasoning answers are generated: greedy, or k samples at the temperature."""
    if config.reasoning_temperature == 0:
        return Sampling(greedy=True, max_tokens=config.reasoning_max_tokens)
    return Sampling(
        n=config.reasoning_samples,
        temperature=float(config.reasoning_temperature),
        max_tokens=config.reasoning_max_tokens,
        seed=config.reasoning_seed,
    )


def graded_samples(item: EvalItem, gens: Sequence[Generation]) -> dict[str, object]:
    """The avg@k fields of a reasoning record: every answer, its extraction and grade, k,
    the number right, and the temperature."""
    from opsa_train.answers import extract_answer, is_correct
    from opsa_train.eval_config import reasoning_kind

    kind = reasoning_kind(item.set, item.row.source) or "gsm8k"  # checked by load_items
    reference = item.row.answer or ""
    correct = [is_correct(g.text, reference, kind=kind) for g in gens]
    return {
        "samples": len(gens),
        "n_correct": sum(correct),
        "temperature": item.decoding().temperature,
        "sample_responses": [g.text for g in gens],
        "sample_extracted": [extract_answer(g.text, kind) for g in gens],
        "sample_correct": correct,
    }


def avg_at_k_metric(model: str, set_name: str, recs: Sequence[Mapping[str, object]]) -> Metric:
    """avg@k accuracy of one model on one set: the mean over prompts of ``n_correct / samples``
    with a normal 95% interval over prompts, clipped to [0, 1]; ``note`` says ``avg@k, T=t``.

    Example:
        >>> recs = [{"samples": 4, "n_correct": 3, "temperature": 0.6},
        ...         {"samples": 4, "n_correct": 1, "temperature": 0.6}]
        >>> m = avg_at_k_metric("m", "gsm8k", recs)
        >>> m.value, m.n, m.note
        (0.5, 2, 'avg@4, T=0.6')
    """
    from opsa_train.eval_metrics import Metric, mean_metric

    shares = [int(r["n_correct"]) / int(r["samples"]) for r in recs]  # type: ignore[call-overload]
    m = mean_metric(model, "accuracy", set_name, shares)
    ks = sorted({int(r["samples"]) for r in recs})  # type: ignore[call-overload]
    temps = sorted({float(r["temperature"]) for r in recs})  # type: ignore[arg-type]
    note = f"avg@{'/'.join(map(str, ks))}, T={'/'.join(map(str, temps))}"
    return Metric(
        model,
        "accuracy",
        set_name,
        m.value,
        m.n,
        m.ci_low if math.isnan(m.ci_low) else max(0.0, m.ci_low),
        m.ci_high if math.isnan(m.ci_high) else min(1.0, m.ci_high),
        k=sum(shares),
        note=note,
    )


def check_reasoning_rows(spec: str, rows: Sequence[PromptRow]) -> None:
    """Every row of reasoning set ``spec`` has a known answer format and a reference answer.

    Raises:
        OpsaConfigError: the format is unknown (a file or ``hf:`` set without a known
            adapter's columns) or a row has no reference answer.
    """
    from opsa_train.eval_config import REASONING_KINDS, reasoning_kind

    for row in rows:
        if reasoning_kind(spec, row.source) is None:
            raise OpsaConfigError(
                f"reasoning set {spec!r} must be in a known answer format (the columns of "
                f"{sorted(REASONING_KINDS)}), got rows of source {row.source!r}: give a "
                "GSM8K, MATH-500 or GPQA file, or drop it from `reasoning_sets`"
            )
        if not row.answer:
            raise OpsaConfigError(
                f"reasoning set {spec!r} row {row.id!r} must have a reference answer, got none"
            )
