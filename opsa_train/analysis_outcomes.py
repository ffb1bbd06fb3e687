"""The token-level KL split by the student's outcome (see :mod:`opsa_train.analysis`).

Each rollout is judged on the *plain* prompt and its response, through the verdict
cache with the judge's cache id (as in :mod:`opsa_train.evaluate`, so verdicts are
shared with evaluation), and every token row of that rollout carries the verdict's
``outcome``: ``refusal``, ``compliance``, ``other`` (a non-answer), ``unfinished`` (a
reasoning trace that never closed), or ``invalid`` when the judge could not tell.
:func:`outcome_table` then reduces the rows per model and
outcome; its ``kl_mean`` values, weighted by ``tokens``, average to the model's pooled
``kl_mean`` of :func:`opsa_train.analysis_report.summary_table`; :func:`plot_by_outcome`
draws the mean KL per position, one panel per model and one line per outcome.

Example:
    >>> rows = [{"model": "m", "prompt_id": "a", "position": 0, "outcome": "refusal",
    ...          "kl": 1.0, "kl_fwd": 1.0, "kl_rev": 1.0}]
    >>> outcome_table(rows)[0]["kl_mean"], outcome_table(rows)[0]["rollouts"]
    (1.0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsa_train.analysis_report import FIRST_N

if TYPE_CHECKING:
    from flipsearch.cache import GenerationCache
    from flipsearch.judges import Judge

__all__ = [
    "INVALID",
    "OUTCOMES",
    "judge_rollouts",
    "outcome_summary",
    "outcome_table",
    "plot_by_outcome",
]

INVALID = "invalid"
"""The outcome of a rollout whose verdict could not be read (``Verdict.outcome`` None)."""
OUTCOMES = ("refusal", "compliance", "other", "unfinished", INVALID)
"""Table order of the outcomes."""


def judge_rollouts(
    judge: Judge,
    cache: GenerationCache,
    prompts: Sequence[str],
    responses: Mapping[str, Sequence[str]],
    *,
    opened_in_prompt: bool = False,
) -> dict[str, list[str]]:
    """Per model, the outcome of each of its responses to ``prompts`` (judged once, cached).

    ``responses`` maps a display name to one response text per prompt; an unreadable
    verdict gives :data:`INVALID`. The judge reads the final answer after ``</think>``;
    a trace that never closed gives ``unfinished``
    (:func:`flipsearch.judges.judge_responses`).
    """
    from flipsearch.judges import judge_responses

    out: dict[str, list[str]] = {}
    for name, texts in responses.items():
        verdicts = judge_responses(
            judge, list(prompts), list(texts), cache=cache, opened_in_prompt=opened_in_prompt
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


def plot_by_outcome(rows: Sequence[Mapping[str, Any]], out: Path, *, models: Sequence[str]) -> Path:
    """``kl_by_position_outcome.png``: mean ``kl`` per position, one panel per model and
    one line per outcome (the legend gives each outcome's rollouts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sums: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        key = (str(r["model"]), str(r.get("outcome") or INVALID))
        sums.setdefault(key, {}).setdefault(int(r["position"]), []).append(float(r["kl"]))
    counts = {(r["model"], r["outcome"]): r["rollouts"] for r in outcome_table(rows)}
    present = [m for m in models if any(k[0] == m for k in sums)] or list(models)
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.8), squeeze=False)
    for ax, model in zip(axes[0], present, strict=True):
        for outcome in sorted({o for m, o in sums if m == model}, key=_order):
            by_pos = sorted(sums[(model, outcome)].items())
            label = f"{outcome} ({counts[(model, outcome)]})"
            means = [sum(v) / len(v) for _, v in by_pos]
            color = f"C{_order(outcome)}"  # the same colour for an outcome in every panel
            ax.plot([p for p, _ in by_pos], means, ".-", color=color, label=label)
        ax.set_title(model)
        ax.set_xlabel("response position (token)")
        ax.legend()
    axes[0][0].set_ylabel("mean KL (nats)")
    fig.suptitle("Teacher-student KL per position, by the student's outcome")
    fig.tight_layout()
    path = out / "kl_by_position_outcome.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
