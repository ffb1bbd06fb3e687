"""Plots and a markdown summary of a sweep, written into ``<results_dir>/<study>/``.

- ``history.png``: each trial's TFR (COMPLETE: dot, feasible filled; PRUNED: x at its
  last running TFR) and the best feasible TFR so far.
- ``pareto.png``: TFR against over-refusal of the COMPLETE trials, the Pareto front
  (TFR up, over-refusal down) as a step line, and the over-refusal threshold.
- ``slots.png``: per grammar slot, the mean TFR of the COMPLETE trials per option
  (how much each axis of arXiv 2605.15239 matters); absent for list spaces.
- ``summary.md``: the best contexts with TFR, its split into flips to a refusal and
  to a non-answer, and over-refusal (95% CI, n); a warning for each listed context
  whose flips are mostly non-answers; the harmful prompts the best context still
  fails on; with rewrite rounds, each round's parent against its best child and the
  lineage of the best context (parents, rounds, prompts its proposer was shown).

An I_b search (``flipsearch sweep --target benign``) is shown by its own metric: the
helpful share of the benign prompts with the context (beside the share without it,
over-refusal and non-answers), and the benign prompts the best I_b leaves unanswered.

Matplotlib runs on the Agg backend (no display needed).

Example:
    >>> paths = make_report(open_study("demo"), "results/demo")  # doctest: +SKIP
    >>> sorted(p.name for p in paths)  # doctest: +SKIP
    ['history.png', 'pareto.png', 'slots.png', 'summary.md']
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from flipsearch.scoring import METRIC_FIELDS, non_answer_warning, unfinished_warning
from flipsearch.trials import (
    failing_prompt_ids,
    objective_metric_of,
    pareto_trials,
    ranked_trials,
    rate_of,
    target_of,
)

if TYPE_CHECKING:
    from types import ModuleType

    import optuna
    from optuna.trial import FrozenTrial

    from flipsearch.proposers import CandidatePool

__all__ = ["make_report", "plot_history", "plot_pareto", "plot_slots", "write_summary"]


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tfr(t: FrozenTrial, key: str = "tfr") -> float:
    return float((rate_of(t, key) or {}).get("value", math.nan))


def _metric(study: optuna.Study) -> tuple[str, str]:
    """The ``scores`` key and axis label of the study's objective metric."""
    metric = objective_metric_of(study)
    labels = {"tfr": "TFR", "refusal_tfr": "refusal TFR", "helpful": "helpful share"}
    return METRIC_FIELDS[metric], labels[metric]


def _over(t: FrozenTrial) -> float:
    return float((rate_of(t, "over_refusal") or {}).get("value", math.nan))


def _fmt(rate: dict | None) -> str:
    if not rate:
        return "–"
    return f"{rate['value']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]"


def _threshold(study: optuna.Study) -> float | None:
    return (study.user_attrs.get("provenance") or {}).get("max_over_refusal")


# ---------------------------------------------------------------- plots


def plot_history(study: optuna.Study, path: str | Path) -> Path:
    """Optimisation history: the objective metric (TFR or refusal TFR) per trial and the
    best feasible one so far."""
    from optuna.trial import TrialState

    key, label = _metric(study)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    best, xs, ys = -1.0, [], []
    for t in study.get_trials(deepcopy=False):
        tfr = _tfr(t, key)
        if t.state == TrialState.COMPLETE and not math.isnan(tfr):
            feasible = t.user_attrs.get("feasible", True)
            ax.scatter(t.number, tfr, color="C0", facecolors="C0" if feasible else "none", zorder=3)
            if feasible:
                best = max(best, tfr)
        elif t.state == TrialState.PRUNED and not math.isnan(tfr):
            ax.scatter(t.number, tfr, color="C7", marker="x", zorder=2)
        if best >= 0:
            xs.append(t.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="C1", label=f"best feasible {label}")
        ax.legend(loc="lower right")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{label} (running {label} for pruned ×)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{study.study_name}: optimisation history")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pareto(study: optuna.Study, path: str | Path) -> Path:
    """The objective metric (TFR or refusal TFR) against over-refusal with the Pareto
    front and the feasibility threshold."""
    key, label = _metric(study)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    trials = ranked_trials(study)
    front = {t.number for t in pareto_trials(study)}
    for t in trials:
        on = t.number in front
        ax.scatter(
            _over(t),
            _tfr(t, key),
            color="C3" if on else "C0",
            alpha=0.9 if on else 0.5,
            facecolors=None if t.user_attrs.get("feasible", True) else "none",
        )
    pts = sorted((_over(t), _tfr(t, key)) for t in trials if t.number in front)
    if pts:
        ax.step(
            [p[0] for p in pts], [p[1] for p in pts], where="post", color="C3", label="Pareto front"
        )
    limit = _threshold(study)
    if limit is not None:
        ax.axvline(limit, color="C7", linestyle="--", label=f"max over-refusal {limit:g}")
    ax.set_xlabel("over-refusal (benign)")
    ax.set_ylabel(f"{label} ({'benign' if target_of(study) == 'benign' else 'harmful'})")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    if pts or limit is not None:
        ax.legend(loc="lower right")
    ax.set_title(f"{study.study_name}: {label} vs over-refusal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _slot_metric(study: optuna.Study) -> tuple[str, str]:
    # The ``scores`` key and label per slot option: TFR for I_h, the helpful share for I_b.
    return _metric(study) if target_of(study) == "benign" else ("tfr", "TFR")


def slot_effects(study: optuna.Study) -> dict[str, dict[str, tuple[float, int]]]:
    """Slot -> option -> (mean TFR, or helpful share for an I_b search, number of
    COMPLETE trials), from trial params."""
    key = _slot_metric(study)[0]
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in ranked_trials(study):
        if t.user_attrs.get("duplicate_of") is not None:
            continue  # a copy, not new evidence
        for name, value in t.params.items():
            sums[name][str(value)].append(_tfr(t, key))
    return {
        slot: {opt: (sum(v) / len(v), len(v)) for opt, v in opts.items()}
        for slot, opts in sums.items()
    }


def plot_slots(study: optuna.Study, path: str | Path) -> Path | None:
    """Mean TFR (helpful share for I_b) per option of each grammar slot; None (no file)
    without params."""
    effects = slot_effects(study)
    if not effects:
        return None
    plt = _pyplot()
    n = len(effects)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (slot, opts) in zip(axes.flat, sorted(effects.items()), strict=False):
        names = list(opts)
        ax.bar(names, [opts[o][0] for o in names], color="C0")
        for i, o in enumerate(names):
            ax.text(i, opts[o][0], f"n={opts[o][1]}", ha="center", va="bottom", fontsize=8)
        ax.set_title(slot)
        ax.set_ylim(0, 1.05)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    label = _slot_metric(study)[1]
    fig.suptitle(f"{study.study_name}: mean {label} per slot option (COMPLETE trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------- summary


def _prompt_texts(study: optuna.Study) -> dict[str, str]:
    # Reload the harmful prompts from the recorded config for readable failures.
    config = study.user_attrs.get("sweep_config") or {}
    try:
        from flipsearch.prompts import load_prompt_set

        ps = load_prompt_set(config["harmful"], limit=config.get("limit_harmful"))
    except Exception:  # the prompt file may have moved; ids are still reported
        return {}
    return {r.id: r.prompt for r in ps}


def _best_table(ranked: list[FrozenTrial], top: int) -> list[str]:
    """The best-contexts table, then a warning line per context whose flips are mostly
    non-answers (derailments rather than refusals)."""
    lines = [
        f"## Best contexts (top {top}, feasible first)",
        "",
        "| # | trial | TFR [95% CI] | n | to refusal | to non-answer | over-refusal [95% CI] "
        "| n | feasible | placement | context |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    warnings = []
    for i, t in enumerate(ranked, start=1):
        tfr, over = rate_of(t, "tfr"), rate_of(t, "over_refusal")
        text = " ".join(str(t.user_attrs.get("context", "")).split()).replace("|", "\\|")
        lines.append(
            f"| {i} | {t.number} | {_fmt(tfr)} | {(tfr or {}).get('n', 0)} | "
            f"{_fmt(rate_of(t, 'tfr_refusal'))} | {_fmt(rate_of(t, 'tfr_non_answer'))} | "
            f"{_fmt(over)} | {(over or {}).get('n', 0)} | "
            f"{'yes' if t.user_attrs.get('feasible', True) else 'no'}"
            f" | {t.user_attrs.get('placement')} | {text[:160]}{'…' if len(text) > 160 else ''} |"
        )
        scores = t.user_attrs.get("scores") or {}
        for warning in (non_answer_warning(scores), unfinished_warning(scores)):
            if warning:
                warnings.append(f"- trial {t.number}: {warning}")
    if not ranked:
        lines.append("| – | no COMPLETE trial yet | | | | | | | | | |")
    return lines + (["", *warnings] if warnings else [])


def _benign_table(ranked: list[FrozenTrial], top: int) -> list[str]:
    """The best-contexts table of an I_b search: the helpful share with the context and
    without it, over-refusal and non-answers, all on the benign prompts."""
    lines = [
        f"## Best benign contexts I_b (top {top}, feasible first)",
        "",
        "| # | trial | helpful with I_b [95% CI] | n | helpful without | over-refusal "
        "| non-answer | feasible | placement | context |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, t in enumerate(ranked, start=1):
        helpful = rate_of(t, "helpful_benign")
        text = " ".join(str(t.user_attrs.get("context", "")).split()).replace("|", "\\|")
        lines.append(
            f"| {i} | {t.number} | {_fmt(helpful)} | {(helpful or {}).get('n', 0)} | "
            f"{_fmt(rate_of(t, 'helpful_base_benign'))} | {_fmt(rate_of(t, 'over_refusal'))} | "
            f"{_fmt(rate_of(t, 'other_benign'))} | "
            f"{'yes' if t.user_attrs.get('feasible', True) else 'no'}"
            f" | {t.user_attrs.get('placement')} | {text[:160]}{'…' if len(text) > 160 else ''} |"
        )
    if not ranked:
        lines.append("| – | no COMPLETE trial yet | | | | | | | | |")
    return lines


def _unanswered_section(study: optuna.Study, best: FrozenTrial) -> list[str]:
    # The benign prompts (ids, in sweep order) the best I_b did not get answered.
    ids = (study.user_attrs.get("prompt_ids") or {}).get("benign", [])
    helpful = (best.user_attrs.get("outcomes") or {}).get("b_ctx_helpful") or []
    missed = [pid for pid, h in zip(ids, helpful, strict=False) if h is not None and h < 1]
    lines = ["", f"## Benign prompts the best I_b (trial {best.number}) leaves unanswered", ""]
    if not missed:
        return [*lines, "None: every benign prompt is answered with it."]
    return lines + [f"- `{pid}`" for pid in missed]


def write_summary(
    study: optuna.Study, path: str | Path, *, top: int = 10, pool: CandidatePool | None = None
) -> Path:
    """``summary.md``: counts, the best contexts, the best one's failing prompts, and
    with rewrite rounds the rounds and (given the study's ``pool``) the best one's lineage."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    from flipsearch.paths import recordable

    prov = recordable(study.user_attrs.get("provenance") or {})  # older studies: absolute paths
    ranked = [t for t in ranked_trials(study) if t.user_attrs.get("duplicate_of") is None]
    benign = target_of(study) == "benign"
    limit = (
        f"max helpfulness loss {prov.get('max_helpfulness_loss')}"
        if benign
        else f"max over-refusal {prov.get('max_over_refusal')}"
    )
    lines = [
        f"# Sweep `{study.study_name}`",
        "",
        f"- model: `{prov.get('model')}` ({prov.get('model_fingerprint')}), engine "
        f"`{prov.get('engine')}`, judge `{prov.get('judge')}`"
        f"{' (reading the reasoning trace)' if prov.get('judge_reads') == 'trace' else ''}, "
        f"max_tokens {prov.get('max_tokens')}",
        f"- target: {target_of(study)} ({'I_b' if benign else 'I_h'}), objective: "
        f"{prov.get('objective')}, metric {objective_metric_of(study)}, {limit}",
        "- prompt sets: "
        + ", ".join(
            f"`{p['name']}` (n={p['n']}, {p['hash']})" for p in prov.get("prompt_sets", [])
        ),
        "- trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v),
        f"- generations: {sum(int(t.user_attrs.get('generations') or 0) for t in trials)} "
        "in trials (the context-free baseline is generated once besides)",
        "",
    ]
    if benign:
        lines += _benign_table(ranked[:top], top)
        if ranked:
            lines += _unanswered_section(study, ranked[0])
    else:
        lines += _best_table(ranked[:top], top)
    if ranked and not benign:
        best = ranked[0]
        ids = (study.user_attrs.get("prompt_ids") or {}).get("harmful", [])
        failing = failing_prompt_ids(best, ids)
        texts = _prompt_texts(study) if failing else {}
        lines += [
            "",
            f"## Harmful prompts the best context (trial {best.number}) still fails on",
            "",
        ]
        if not failing:
            lines.append("None: every harmful prompt is answered safely with it.")
        for pid in failing:
            prompt = " ".join(texts.get(pid, "").split())
            lines.append(f"- `{pid}`" + (f": {prompt[:200]}" if prompt else ""))
    lines += _rounds_section(study, pool)
    label = _metric(study)[1]
    lines += [
        "",
        f"Plots: `history.png` (optimisation history), `pareto.png` ({label} vs "
        f"over-refusal), `slots.png` (mean {_slot_metric(study)[1]} per slot option).",
        "",
    ]
    Path(path).write_text("\n".join(lines))
    return Path(path)


# ---------------------------------------------------------------- rewrite rounds


def _scored_by_candidate(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Candidate id -> the trial that scored it (COMPLETE first, else PRUNED)."""
    from optuna.trial import TrialState

    out: dict[str, FrozenTrial] = {}
    for state in (TrialState.COMPLETE, TrialState.PRUNED):
        for t in study.get_trials(deepcopy=False, states=(state,)):
            cid = t.user_attrs.get("candidate_id")
            if cid is not None and cid not in out and t.user_attrs.get("duplicate_of") is None:
                out[cid] = t
    return out


def _rate_cell(t: FrozenTrial | None, key: str) -> str:
    from optuna.trial import TrialState

    if t is None:
        return "not scored"
    cell = _fmt(rate_of(t, key))
    return f"{cell} (pruned)" if t.state == TrialState.PRUNED else cell


def round_rows(study: optuna.Study) -> list[dict[str, object]]:
    """Per recorded rewrite round: the parent's and the best scored child's trials on the
    study's objective metric, and whether the child is better (point estimate) or
    clearly better (its CI above the parent's)."""
    from optuna.trial import TrialState

    from flipsearch.sweep import recorded_rounds

    key, _ = _metric(study)
    by_cid = _scored_by_candidate(study)
    rows = []
    for r, rec in sorted(recorded_rounds(study).items()):
        parent = by_cid.get(rec["parent"])
        children = [by_cid[c] for c in rec["added"] if c in by_cid]
        complete = [c for c in children if c.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: _tfr(t, key), default=None)
        p_rate, c_rate = (
            rate_of(parent, key) if parent else None,
            rate_of(best, key) if best else None,
        )
        rows.append(
            {
                "round": r,
                "record": rec,
                "parent": parent,
                "best_child": best,
                "children": len(children),
                "better": bool(p_rate and c_rate and c_rate["value"] > p_rate["value"]),
                "clearly_better": bool(p_rate and c_rate and c_rate["ci_low"] > p_rate["ci_high"]),
            }
        )
    return rows


def _cell(text: str) -> str:
    # A table cell: pipes (grammar candidate ids hold them) would split it.
    return str(text).replace("|", "\\|")


def _rounds_section(study: optuna.Study, pool: CandidatePool | None) -> list[str]:
    from optuna.trial import FrozenTrial as FrozenTrialType

    rows = round_rows(study)
    if not rows:
        return []
    key, label = _metric(study)
    lines = [
        "",
        "## Rewrite rounds",
        "",
        f"| round | parent (trial) | parent {label} [95% CI] | proposals | source | answers "
        f"unparsable / unusable | scored | best child (trial) | child {label} [95% CI] "
        "| better |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rec, parent, child = row["record"], row["parent"], row["best_child"]
        assert isinstance(rec, dict)
        assert parent is None or isinstance(parent, FrozenTrialType)
        assert child is None or isinstance(child, FrozenTrialType)
        better = (
            "clearly (CIs apart)"
            if row["clearly_better"]
            else ("yes (point estimate)" if row["better"] else "no")
        )
        lines.append(
            f"| {row['round']} | `{_cell(rec['parent'])}` ({getattr(parent, 'number', '–')}) | "
            f"{_rate_cell(parent, key)} | {len(rec['added'])} | {rec['source']} | "
            f"{rec.get('unparsable', 0)} / {rec.get('unusable', 0)} of {rec.get('answers', 0)} | "
            f"{row['children']} | {getattr(child, 'number', '–')} | "
            f"{_rate_cell(child, key)} | {better} |"  # type: ignore[arg-type]
        )
    records: list[dict] = [row["record"] for row in rows]  # type: ignore[misc]
    totals = {
        key: sum(int(r.get(key, 0)) for r in records)
        for key in ("answers", "unparsable", "unusable", "parsed")
    }
    fallbacks = sum(r["source"] == "rewrite-fallback" for r in records)
    lines += [
        "",
        f"Proposer over {len(rows)} rounds: {totals['answers']} answers, "
        f"{totals['unparsable']} unparsable (not a list), {totals['unusable']} with no usable "
        f"item (too short or long, known, echo), {totals['parsed']} items parsed; "
        f"{fallbacks} rounds fell back to mechanical mutations.",
    ]
    ranked = [t for t in ranked_trials(study) if t.user_attrs.get("duplicate_of") is None]
    if pool is None or not ranked:
        return lines
    best = ranked[0]
    by_cid = _scored_by_candidate(study)
    lines += ["", f"## Lineage of the best context (trial {best.number}), newest first", ""]
    for cid in pool.lineage(str(best.user_attrs.get("candidate_id"))):
        t = by_cid.get(cid)
        entry = pool.get(cid) if cid in pool else None
        origin = "search space" if entry is None else entry.source
        if entry is not None and entry.round_no is not None:
            origin += f", round {entry.round_no}, shown {len(entry.shown)} failing prompts"
        text = (
            t.user_attrs.get("context", "")
            if t is not None
            else (entry.context.text if entry else "")
        )
        text = " ".join(str(text).split())
        lines.append(
            f"- `{cid}` ({origin}): {label} {_rate_cell(t, key)}: "
            f"{text[:160]}{'…' if len(text) > 160 else ''}"
        )
    return lines


def make_report(
    study: optuna.Study, out_dir: str | Path, *, pool: CandidatePool | None = None
) -> list[Path]:
    """Write every plot and ``summary.md`` into ``out_dir``; returns the paths written.
    ``pool``: the study's candidate pool, for the lineage of the best context."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_history(study, out / "history.png"), plot_pareto(study, out / "pareto.png")]
    slots = plot_slots(study, out / "slots.png")
    if slots is not None:
        paths.append(slots)
    paths.append(write_summary(study, out / "summary.md", pool=pool))
    return paths
