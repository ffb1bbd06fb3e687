"""The token-level KL split by the student's outcome (see :mod:`opsa_train.analysis`).

Each rollout is judged on the *plain* prompt and its response, through the verdict
cache with the judge's cache id (as in :mod:`opsa_train.evaluate`, so verdicts are
shared with evaluation), and every token row of that rollout carries the verdict's
``outcome``: ``refusal``, ``compliance``, ``other`` (a non-answer), or ``invalid`` when
the judge could not tell. :func:`outcome_table` then reduces the rows per model and
outcome; its ``kl_mean`` values, weighted by ``tokens``, average to the model's pooled
``kl_mean`` of :func:`opsa_train.analysis_report.summary_table`.

Example:
    >>> rows = [{"model": "m", "prompt_id": "a", "position": 0, "outcome": "refusal",
    ...          "kl": 1.0, "kl_fwd": 1.0, "kl_rev": 1.0}]
    >>> outcome_table(rows)[0]["kl_mean"], outcome_table(rows)[0]["rollouts"]
    (1.0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opsa_train.analysis_report import FIRST_N

if TYPE_CHECKING:
    from flipsearch.cache import GenerationCache
    from flipsearch.judges import Judge

__all__ = ["INVALID", "OUTCOMES", "judge_rollouts", "outcome_summary", "outcome_table"]

INVALID = "invalid"
"""The outcome of a rollout whose verdict could not be read (``Verdict.outcome`` None)."""
OUTCOMES = ("refusal", "compliance", "other", INVALID)
"""Table order of the outcomes."""


def judge_rollouts(
    judge: Judge,
    cache: GenerationCache,
    prompts: Sequence[str],
    responses: Mapping[str, Sequence[str]],
) -> dict[str, list[str]]:
    """Per model, the outcome of each of its responses to ``prompts`` (judged once, cached).

    ``responses`` maps a display name to one response text per prompt; an unreadable
    verdict gives :data:`INVALID`.
    """
    from flipsearch.cache import cached_judge
    from flipsearch.judges import judge_cache_id

    judge_id = judge_cache_id(judge)
    out: dict[str, list[str]] = {}
    for name, texts in responses.items():
        verdicts = cached_judge(
            cache, judge.judge, judge_id=judge_id, prompts=list(prompts), responses=list(texts)
        )
        out[name] = [v.outcome or INVALID for v in verdicts]
    return out


def _order(outcome: str) -> int:
    return OUTCOMES.index(outcome) if outcome in OUTCOMES else len(OUTCOMES)


def outcome_table(
    rows: Sequence[Mapping[str, Any]], *, first_n: int = FIRST_N
) -> list[dict[str, Any]]:
    """One row per (model, outcome): rollouts, tokens, mean ``kl``/``kl_fwd``/``kl_rev`` per
    token, and mean ``kl`` over the first ``first_n`` positions (NaN when none).

    Models keep their first-seen order; outcomes follow :data:`OUTCOMES`. A row without
    an ``outcome`` counts as :data:`INVALID`.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["model"]), str(r.get("outcome") or INVALID)), []).append(r)
    models = list(dict.fromkeys(m for m, _ in groups))
    out = []
    for (model, outcome), rs in sorted(
        groups.items(), key=lambda kv: (models.index(kv[0][0]), _order(kv[0][1]), kv[0][1])
    ):
        first = [float(r["kl"]) for r in rs if int(r["position"]) < first_n]
        out.append(
            {
                "model": model,
                "outcome": outcome,
                "rollouts": len({r["prompt_id"] for r in rs}),
                "tokens": len(rs),
                **{
                    f"{k}_mean": sum(float(r[k]) for r in rs) / len(rs)
                    for k in ("kl", "kl_fwd", "kl_rev")
                },
                f"kl_first{first_n}": sum(first) / len(first) if first else math.nan,
            }
        )
    return out


def outcome_summary(table: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`outcome_table` rows as ``{model: {outcome: numbers}}`` (the summary JSON's
    ``outcomes``)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in table:
        numbers = {k: v for k, v in r.items() if k not in ("model", "outcome")}
        out.setdefault(str(r["model"]), {})[str(r["outcome"])] = numbers
    return out
