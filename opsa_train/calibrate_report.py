"""The calibration study's table and learning curves: CSV, markdown and PNG.

One row per (trial, evaluation step): the trial's parameters and its dev
:class:`opsa_train.calibrate.Point`. The plot draws, per trial, the pooled dev
distillation efficiency (with its 95% interval), the harmful rate (base and teacher as
reference lines), over-refusal and retention KL against training steps.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from flipsearch.atomic import atomic_write_text

__all__ = ["curve_rows", "feasible", "plot_curves", "verdict", "write_calibration_report"]


def curve_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every evaluated point of every finished (or pruned: efficiency undefined) trial,
    as flat rows in trial order."""
    rows: list[dict[str, Any]] = []
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=done):
        points = sorted(
            (v for k, v in t.user_attrs.items() if k.startswith("step_")),
            key=lambda p: p["step"],
        )
        for p in points:
            rows.append({"trial": t.number, **t.params, **p})
    return rows


def feasible(row: Mapping[str, Any], slack: float) -> bool:
    """The student's dev over-refusal is at most the teacher's plus ``slack``."""
    return bool(row["over_refusal"] <= row["teacher_over_refusal"] + slack)


def verdict(rows: Sequence[Mapping[str, Any]], params: Sequence[str], slack: float) -> str:
    """Which trial to use: the best final efficiency among feasible trials, in words."""
    last: dict[int, Mapping[str, Any]] = {}
    for r in rows:
        if r["trial"] not in last or r["step"] > last[r["trial"]]["step"]:
            last[r["trial"]] = r
    ok = [r for r in last.values() if feasible(r, slack) and not math.isnan(r["efficiency"])]
    rule = f"feasible trial (final dev over-refusal at most its teacher's + {slack:g})"
    if not ok:
        return f"No {rule}: no recipe here keeps over-refusal at the teacher's."
    best = max(ok, key=lambda r: r["efficiency"])
    chosen = ", ".join(f"{k}={_fmt(best[k])}" for k in params)
    return (
        f"Best {rule}: trial {best['trial']} ({chosen}), efficiency {_fmt(best['efficiency'])} "
        f"[{_fmt(best['efficiency_low'])}, {_fmt(best['efficiency_high'])}], over-refusal "
        f"{_fmt(best['over_refusal'])} vs its teacher's {_fmt(best['teacher_over_refusal'])}; "
        f"{len(ok)} of {len(last)} trials feasible."
    )


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def _markdown(
    rows: Sequence[Mapping[str, Any]], params: Sequence[str], header: str, slack: float
) -> str:
    cols = [
        "trial",
        *params,
        "step",
        "efficiency",
        "harmful",
        "refusal",
        "non_answer",
        "over_refusal",
        "teacher_over_refusal",
        "feasible",
        "retention_kl",
    ]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [_fmt(r[c]) for c in cols]
        cells[cols.index("efficiency")] = (
            f"{_fmt(r['efficiency'])} [{_fmt(r['efficiency_low'])}, {_fmt(r['efficiency_high'])}]"
        )
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        r = rows[0]
        lines += [
            "",
            f"Dev reference (n = {r['n_harmful']} pooled harmful prompts): base harmful rate "
            f"{_fmt(r['base_harmful'])}, teacher {_fmt(r['teacher_harmful'])}; teacher "
            f"over-refusal {_fmt(r['teacher_over_refusal'])} (each trial's own teacher: "
            "its I_b on benign prompts).",
            "",
            verdict(rows, params, slack),
        ]
    return "\n".join(lines) + "\n"


def plot_curves(rows: Sequence[Mapping[str, Any]], params: Sequence[str], path: Path) -> Path:
    """Four panels against steps, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    trials = sorted({r["trial"] for r in rows})
    for trial in trials:
        mine = [r for r in rows if r["trial"] == trial]
        label = ", ".join(f"{k}={mine[0][k]}" for k in params)
        steps = [r["step"] for r in mine]
        line = axes[0].plot(steps, [r["efficiency"] for r in mine], marker="o", label=label)[0]
        axes[0].fill_between(
            steps,
            [r["efficiency_low"] for r in mine],
            [r["efficiency_high"] for r in mine],
            color=line.get_color(),
            alpha=0.15,
        )
        for ax, key in zip(axes[1:], ("harmful", "over_refusal", "retention_kl"), strict=True):
            ax.plot(steps, [r[key] for r in mine], marker="o", color=line.get_color())
    if rows:
        axes[1].axhline(rows[0]["base_harmful"], color="grey", ls="--", label="base")
        axes[1].axhline(rows[0]["teacher_harmful"], color="black", ls=":", label="teacher")
        axes[2].axhline(rows[0]["teacher_over_refusal"], color="black", ls=":", label="teacher")
        axes[1].legend(fontsize=8)
    axes[0].axhline(0.5, color="grey", ls="--", lw=0.8)
    titles = (
        "dev distillation efficiency (95% CI)",
        "dev harmful rate",
        "dev over-refusal",
        "retention KL to base",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_calibration_report(
    study: optuna.Study, out_dir: str | Path, *, header: str, slack: float = 0.05
) -> list[Path]:
    """``calibration.csv``, ``calibration.md`` and ``learning_curve.png`` in ``out_dir``;
    ``slack``: see :attr:`opsa_train.calibrate.CalibrationConfig.over_refusal_slack`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "feasible": feasible(r, slack)} for r in curve_rows(study)]
    params = sorted({k for t in study.trials for k in t.params})
    buf = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths = [
        atomic_write_text(out / "calibration.csv", buf.getvalue()),
        atomic_write_text(out / "calibration.md", _markdown(rows, params, header, slack)),
    ]
    if rows:
        paths.append(plot_curves(rows, params, out / "learning_curve.png"))
    return paths
