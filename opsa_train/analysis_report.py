"""The token-level KL analysis's tables, plots and files (see :mod:`opsa_train.analysis`).

The tables are pure: token rows (one per model, prompt and position, with ``kl``,
``kl_fwd``, ``kl_rev``) in, aggregated rows out.

Example:
    >>> rows = [{"model": "m", "position": 0, "kl": 1.0, "kl_fwd": 1.0, "kl_rev": 1.0},
    ...         {"model": "m", "position": 0, "kl": 3.0, "kl_fwd": 3.0, "kl_rev": 3.0}]
    >>> kl_by_position_table(rows)[0]["kl"], kl_by_position_table(rows)[0]["n"]
    (2.0, 2)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FIRST_N",
    "SUMMARY_JSON",
    "analysis_complete",
    "kl_by_position_table",
    "plot_analysis",
    "summary_table",
    "top_tokens_table",
    "write_csv",
]

SUMMARY_JSON = "kl_summary.json"
FIRST_N = 8


# --------------------------------------------------------------------------------------
# Tables (pure)


def kl_by_position_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ``kl``/``kl_fwd``/``kl_rev`` per (model, position) with the count of prompts.

    Example:
        >>> rows = [{"model": "m", "position": 0, "kl": 1.0, "kl_fwd": 1.0, "kl_rev": 1.0},
        ...         {"model": "m", "position": 0, "kl": 3.0, "kl_fwd": 3.0, "kl_rev": 3.0}]
        >>> kl_by_position_table(rows)[0]["kl"], kl_by_position_table(rows)[0]["n"]
        (2.0, 2)
    """
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["model"]), int(r["position"])), []).append(r)  # type: ignore[arg-type]
    out = []
    for (model, pos), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        n = len(rs)
        out.append(
            {
                "model": model,
                "position": pos,
                "n": n,
                **{k: sum(float(r[k]) for r in rs) / n for k in ("kl", "kl_fwd", "kl_rev")},  # type: ignore[arg-type]
            }
        )
    return out


def top_tokens_table(rows: Sequence[Mapping[str, Any]], *, top: int = 15) -> list[dict[str, Any]]:
    """Per model, the ``top`` token strings with the most total ``kl`` (their KL mass).

    ``share`` is the token's fraction of the model's total KL mass.
    """
    by_model: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        by_model.setdefault(str(r["model"]), {}).setdefault(str(r["token"]), []).append(
            float(r["kl"])  # type: ignore[arg-type]
        )
    out = []
    for model, tokens in by_model.items():
        total = sum(sum(v) for v in tokens.values()) or 1.0
        ranked = sorted(tokens.items(), key=lambda kv: -sum(kv[1]))[:top]
        for rank, (tok, vals) in enumerate(ranked, 1):
            out.append(
                {
                    "model": model,
                    "rank": rank,
                    "token": tok,
                    "kl_mass": sum(vals),
                    "share": sum(vals) / total,
                    "count": len(vals),
                    "kl_mean": sum(vals) / len(vals),
                }
            )
    return out


def summary_table(rows: Sequence[Mapping[str, Any]], *, first_n: int = FIRST_N) -> dict:
    """Per model: mean ``kl`` over all tokens, over the first ``first_n`` and the rest,
    and the share of KL mass in the first ``first_n`` positions. With reasoning rollouts
    (rows with ``in_trace`` true), also ``trace_tokens`` and the mean ``kl`` inside the
    ``<think>`` trace (``kl_trace``) and after it (``kl_answer``).

    Example:
        >>> rows = [{"model": "m", "prompt_id": "a", "position": t, "kl": kl, "in_trace": t < 2}
        ...         for t, kl in enumerate([1.0, 3.0, 0.5])]
        >>> s = summary_table(rows)["m"]
        >>> s["trace_tokens"], s["kl_trace"], s["kl_answer"]
        (2, 2.0, 0.5)
    """
    out: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        mine = [r for r in rows if r["model"] == model]
        first = [float(r["kl"]) for r in mine if int(r["position"]) < first_n]  # type: ignore[arg-type]
        rest = [float(r["kl"]) for r in mine if int(r["position"]) >= first_n]  # type: ignore[arg-type]
        total = sum(first) + sum(rest)
        out[model] = {
            "kl_mean": total / len(mine) if mine else math.nan,
            f"kl_first{first_n}": sum(first) / len(first) if first else math.nan,
            "kl_rest": sum(rest) / len(rest) if rest else math.nan,
            f"mass_share_first{first_n}": sum(first) / total if total else math.nan,
            "tokens": len(mine),
            "prompts": len({r["prompt_id"] for r in mine}),
        }
        if any(r.get("in_trace") for r in mine):
            trace = [float(r["kl"]) for r in mine if r.get("in_trace")]
            answer = [float(r["kl"]) for r in mine if not r.get("in_trace")]
            out[model].update(
                trace_tokens=len(trace),
                kl_trace=sum(trace) / len(trace),
                kl_answer=sum(answer) / len(answer) if answer else math.nan,
            )
    return out


# --------------------------------------------------------------------------------------
# Files


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as CSV with a header (columns: every key, in first-seen order)."""
    cols: list[str] = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


def plot_analysis(
    by_pos: Sequence[Mapping[str, Any]],
    top: Sequence[Mapping[str, Any]],
    out: Path,
    *,
    models: Sequence[str],
) -> list[Path]:
    """``kl_by_position.png`` (mean KL per position, one line per model) and
    ``kl_top_tokens.png`` (the tokens with the most KL mass, one panel per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in models:
        pts = [r for r in by_pos if r["model"] == model]
        if pts:
            ax.plot([r["position"] for r in pts], [r["kl"] for r in pts], marker=".", label=model)
    ax.set_xlabel("response position (token)")
    ax.set_ylabel("mean KL, 0.5 fwd + 0.5 rev (nats)")
    ax.set_title("Teacher (initial model + I_h) vs student, per position")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "kl_by_position.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    present = [m for m in models if any(r["model"] == m for r in top)] or list(models)
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 4.5), squeeze=False)
    for ax, model in zip(axes[0], present, strict=True):
        rows = [r for r in top if r["model"] == model][::-1]
        ax.barh([repr(str(r["token"]))[1:-1] or "∅" for r in rows], [r["share"] for r in rows])
        ax.set_title(model)
        ax.set_xlabel("share of KL mass")
    fig.suptitle("Tokens carrying the most teacher-student KL")
    fig.tight_layout()
    paths.append(out / "kl_top_tokens.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def analysis_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a finished analysis (summary and both plots)."""
    out = Path(out_dir)
    return all(
        (out / f).is_file() for f in (SUMMARY_JSON, "kl_by_position.png", "kl_top_tokens.png")
    )
