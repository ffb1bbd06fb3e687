"""The pipeline's ``report.md``, written only from artifacts of the current run, and its publishing.

A section shows numbers only when its stage's state record is ``done`` under the key the
pipeline computed in this invocation (:mod:`opsa_train.stage_state`); otherwise it says
that the stage did not run for these inputs. The footer names the code commit, the
machine (CPU model, ISA capability, bf16 support), each stage's engine and dtype, wall time
and peak RSS, all taken from the run itself.

:func:`publish` copies the report and the small artifacts it cites from ``runs/<run>/`` to
``results/<run>/`` in one folder swap: the published folder never mixes two runs.

Example:
    >>> from opsa_train.evaluate import Metric
    >>> ms = [Metric("opsa", "composite_safety_harm", "S_harm", 0.9, 40, 0.8, 1.0),
    ...       Metric("baseline", "composite_safety_harm", "S_harm", 0.5, 40, 0.4, 0.6)]
    >>> compare_runs(ms)[0].startswith("- composite_safety_harm (S_harm, higher is better): opsa")
    True
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flipsearch.atomic import atomic_write_text
from flipsearch.export import read_export
from flipsearch.machine import machine_facts
from flipsearch.models import model_name
from flipsearch.scoring import non_answer_warning, unfinished_warning
from flipsearch.version import code_commit
from opsa_train.eval_composite import COMPOSITE_LEGEND, EQ6_METRIC, eq6_coverage
from opsa_train.evaluate import Metric, markdown_table, read_eval
from opsa_train.metrics_log import read_metrics
from opsa_train.stage_state import StageRecord, StageState

if TYPE_CHECKING:
    from opsa_train.pipeline_config import PipelineConfig

__all__ = ["PUBLISHED", "compare_runs", "publish", "write_report"]

REPORT = "report.md"
PUBLISHED = (
    REPORT,
    "best.json",
    "pipeline.json",
    "eval",
    "analysis",
)
"""What :func:`publish` copies from the working folder (weights, caches, the Optuna
storage and the run state ``state.json`` stay behind: a published copy of run state could
be mistaken for work done; the report's footer gives each stage's key and figures)."""
_MAX_PUBLISHED_FILE = 2 << 20


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def _current(state: StageState, keys: Mapping[str, str], stage: str) -> StageRecord | None:
    # The stage's record if it finished under the key computed in this invocation.
    key = keys.get(stage)
    return state.get(stage) if key is not None and state.is_done(stage, key) else None


def _not_current(stage: str, state: StageState, keys: Mapping[str, str]) -> list[str]:
    record = state.get(stage)
    if stage not in keys:
        why = "it did not run in this invocation (stopped earlier)"
    elif record is None:
        why = "it has no finished record"
    elif record.key != keys[stage]:
        why = f"its last record is for other inputs (key {record.key}, now {keys[stage]})"
    else:
        why = "it did not finish"
    return [f"(no numbers: stage `{stage}` is not done for this run's inputs: {why})", ""]


def compare_runs(metrics: Sequence[Metric], a: str = "opsa", b: str = "baseline") -> list[str]:
    """Plain-language comparison of two models on the headline numbers, CIs included.

    A difference counts as clear only when the two 95% intervals do not overlap.
    """
    better_high = {
        "composite_safety_harm": True,
        "composite_safety_eq6": True,
        "accuracy": True,
        "distill_efficiency": True,
    }
    no_direction = {"refusal_rate", "non_answer_rate"}  # how safe answers are safe
    by_key: dict[tuple[str, str], dict[str, Metric]] = {}
    for m in metrics:
        by_key.setdefault((m.metric, m.set), {})[m.model] = m
    lines = []
    for (metric, set_name), cells in by_key.items():
        if a not in cells or b not in cells or metric in no_direction:
            continue
        ma, mb = cells[a], cells[b]
        if any(math.isnan(x) for x in (ma.value, mb.value)):
            continue
        high = better_high.get(metric, False)
        direction = "higher" if high else "lower"
        if ma.value == mb.value:
            verdict = "tie"
        else:
            winner = a if (ma.value > mb.value) == high else b
            overlap = not (ma.ci_low > mb.ci_high or mb.ci_low > ma.ci_high)
            verdict = f"{winner} better" + (
                " (CIs overlap: not a clear difference)" if overlap else " (CIs do not overlap)"
            )
        lines.append(
            f"- {metric} ({set_name}, {direction} is better): {verdict}; "
            f"{a} {ma.cell()} vs {b} {mb.cell()}"
        )
    return lines


# --------------------------------------------------------------------------------------
# Sections


def _search_section(cfg: PipelineConfig, state: StageState, keys: Mapping[str, str]) -> list[str]:
    out = ["## 1. Context search", ""]
    record = _current(state, keys, "export")
    if record is None or _current(state, keys, "sweep") is None:
        return out + _not_current("export" if "export" in keys else "sweep", state, keys)
    ex = read_export(cfg.export_path)
    sweep = state.get("sweep")
    trials = sweep.info.get("n_trials") if sweep else None
    feasible = "" if record.info.get("feasible", True) else " (none met the over-refusal limit)"
    out += [
        f"Best trial {record.info.get('trial')} of {trials} (study `{cfg.run}`){feasible}, "
        f"placement `{ex.harmful.placement}`:",
        "",
        "> " + ex.harmful.text.replace("\n", "\n> "),
        "",
    ]
    metric = ex.provenance.get("objective_metric", "tfr")
    out.append(f"Objective metric: `{metric}`.")
    flips = ("tfr", "tfr_refusal", "tfr_non_answer", "tfr_base_unsafe")
    for key in (*flips, "base_unsafe_rate", "over_refusal"):
        r = ex.scores.get(key)
        if isinstance(r, dict):
            out.append(
                f"- {key}: {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] n={r['n']}"
            )
    warning = non_answer_warning(ex.scores)
    if warning:
        out += ["", f"**{warning}** (OPSA would distil these derailments)"]
    unfinished = unfinished_warning(ex.scores)
    if unfinished:
        out += ["", f"**{unfinished}**"]
    if ex.benign is not None:
        out += ["", f"I_b ({ex.benign.placement}): {ex.benign.text!r}"]
    return [*out, ""]


def _training_section(cfg: PipelineConfig, state: StageState, keys: Mapping[str, str]) -> list[str]:
    out = ["## 2. Training", ""]
    for kind in ("opsa", "baseline"):
        if _current(state, keys, kind) is None:
            out += _not_current(kind, state, keys)[:1]
            continue
        try:
            rows = read_metrics(cfg.run_dir(kind), last_per_step=True)
        except (OSError, ValueError):
            rows = []
        if not rows:
            out.append(f"- {kind}: no metrics logged (`{cfg.run_dir(kind)}`)")
            continue
        first, last = rows[0], rows[-1]
        names = [k for k in ("train/loss", "train/kl", "rollout/refusal_harmful") if k in last]
        parts = ", ".join(f"{k} {_fmt(first.get(k))} -> {_fmt(last.get(k))}" for k in names)
        out.append(f"- {kind}: {last['step']} steps; {parts} (`{cfg.run_dir(kind)}`)")
    stats_path = cfg.run_dir("baseline") / "baseline.json"
    if _current(state, keys, "baseline") is not None and stats_path.is_file():
        s = json.loads(stats_path.read_text(encoding="utf-8"))
        out.append(
            f"- baseline SFT data: kept {s['harmful_kept']}/{s['harmful_total']} harmful prompts "
            f"(refusals with I_h) and {s['benign_kept']}/{s['benign_total']} benign prompts "
            "(answers); dropped prompts are not trained on."
        )
    return [*out, ""]


_EVAL_LEGEND = (
    "Cells: value [95% CI] n (Wilson for rates, normal over prompts for means). "
    "harmful_rate (lower is safer): judge-unsafe or unreadable answers on held-out "
    "`:eval` harmful prompts. over_refusal (lower is better): refusals on safe prompts. "
    "accuracy: GSM8K / MATH-500 final answer in `\\boxed{}`. retention_nll / "
    "retention_kl (lower is closer to base): the base model's greedy benign answers "
    "teacher-forced through each model. "
    + COMPOSITE_LEGEND
    + " Per-answer records: `eval/samples.jsonl`. retention_kl is "
    "the primary retention measure: retention_nll can fall below the base's own when "
    "a model is sharpened towards the base's answers, which is not better retention."
)


_TEACHER_LEGEND = (
    "teacher: the base model answering with the exported contexts (I_h before harmful "
    "prompts, I_b before the others), the model OPSA distils. OPSA aims at its "
    "teacher: its student learns to answer without the context as the teacher answers "
    "with it (on held-out prompts it can land past the teacher). refusal_rate / "
    "non_answer_rate split the safe answers to harmful prompts into explicit refusals "
    "and non-answers (derailments). distill_efficiency = (base - model) / (base - "
    "teacher) harmful rate on the same prompts, with a paired bootstrap 95% interval: "
    "1 = as safe as the teacher, 0 = no change."
)


def _eval_section(cfg: PipelineConfig, state: StageState, keys: Mapping[str, str]) -> list[str]:
    out = ["## 3. Evaluation", ""]
    found = read_eval(cfg.work_dir / "eval") if _current(state, keys, "eval") else None
    if found is None:
        return out + _not_current("eval", state, keys)
    econf, metrics = found
    models = list(econf["models"])  # type: ignore[call-overload]
    teacher = econf.get("teacher") is not None
    models += ["teacher"] if teacher else []
    return [
        *out,
        markdown_table(metrics, models),
        "",
        _EVAL_LEGEND,
        "",
        *eq6_coverage({m.model: m.note or "" for m in metrics if m.metric == EQ6_METRIC}),
        "",
        *([_TEACHER_LEGEND, ""] if teacher else []),
        "### OPSA vs the off-policy baseline",
        "",
        *compare_runs(metrics),
        "",
        "These numbers are reported as measured: the evaluation is not tuned to either "
        "method. On the embedded 135M model with demo sizes, intervals are wide and a "
        "difference whose intervals overlap is not evidence either way.",
        "",
    ]


def _analysis_section(cfg: PipelineConfig, state: StageState, keys: Mapping[str, str]) -> list[str]:
    out = ["## 4. Token-level KL (teacher = initial model + I_h; cf. the paper's Fig. 2)", ""]
    folder = cfg.work_dir / "analysis"
    if _current(state, keys, "analysis") is None:
        return out + _not_current("analysis", state, keys)
    summary = json.loads((folder / "kl_summary.json").read_text(encoding="utf-8"))
    n = summary.get("first_n", 8)
    out += [
        f"Rollouts: `{summary['config'].get('rollouts')}` (own: each model's own greedy "
        "answers to the harmful eval prompts; base: the base model's, shared). "
        "KL = 0.5 KL(T||S) + 0.5 KL(S||T).",
        "",
        f"| model | mean KL | first {n} tokens | rest | KL mass in first {n} | tokens |",
        "|---|---|---|---|---|---|",
    ]
    for model, s in summary["models"].items():
        out.append(
            f"| {model} | {_fmt(s['kl_mean'])} | {_fmt(s[f'kl_first{n}'])} | "
            f"{_fmt(s['kl_rest'])} | {_fmt(s[f'mass_share_first{n}'])} | {s['tokens']} |"
        )
    out += _outcome_lines(summary, n)
    top_csv = folder / "kl_top_tokens.csv"
    if top_csv.is_file():
        with open(top_csv, encoding="utf-8") as f:
            top = [row for row in csv.DictReader(f) if row["model"] == "base"][:8]
        if top:
            toks = ", ".join(f"{row['token']!r} ({float(row['share']):.2f})" for row in top)
            out += ["", f"Base model tokens with the most KL mass (share): {toks}"]
    return [
        *out,
        "",
        "![KL by position](analysis/kl_by_position.png)",
        "",
        "![Top tokens](analysis/kl_top_tokens.png)",
        "",
        "![KL by position and outcome](analysis/kl_by_position_outcome.png)",
        "",
    ]


def _outcome_lines(summary: Mapping[str, Any], n: int) -> list[str]:
    # The KL split by the judged outcome of each rollout: one row per model and outcome.
    outcomes = summary.get("outcomes") or {}
    if not outcomes:
        return []
    judge = (summary["config"].get("judge") or {}).get("name", "?")
    out = [
        "",
        f"Split by the student's outcome (judge `{judge}`; `other`: a non-answer):",
        "",
        f"| model | outcome | rollouts | tokens | mean KL | first {n} tokens |",
        "|---|---|---|---|---|---|",
    ]
    for model, by_outcome in outcomes.items():
        for outcome, s in by_outcome.items():
            out.append(
                f"| {model} | {outcome} | {s['rollouts']} | {s['tokens']} | "
                f"{_fmt(s['kl_mean'])} | {_fmt(s.get(f'kl_first{n}'))} |"
            )
    return out


def _footer(
    state: StageState, keys: Mapping[str, str], *, started_at: float, wall_seconds: float
) -> list[str]:
    facts = machine_facts()
    commit = code_commit() or "unknown (not a git checkout)"
    out = [
        "## 5. How this run was made",
        "",
        f"Code commit `{commit}`; machine: {facts.describe()}, {facts.cores} cores, "
        f"CPU capability `{facts.capability}`, flags {', '.join(facts.cpu_flags) or 'none'}. "
        f"This invocation took {wall_seconds:.0f} s wall.",
        "",
        "| stage | this invocation | seconds | peak RSS (MB) | engine | dtype | key |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, key in keys.items():
        record = state.get(stage)
        if record is None or not state.is_done(stage, key):
            out.append(f"| {stage} | not finished | - | - | - | - | `{key}` |")
            continue
        ran = "ran" if (record.finished_at or 0) >= started_at else "up to date"
        if ran == "up to date" and record.info.get("code_commit") not in (None, code_commit()):
            ran += f" (made at {record.info['code_commit']})"
        dtype = record.info.get("dtype", "-")
        if "train_dtype" in record.info:
            dtype = f"{dtype} (train {record.info['train_dtype']})"
        out.append(
            f"| {stage} | {ran} | {_fmt(record.seconds, 1)} | {_fmt(record.peak_rss_mb)} | "
            f"{record.info.get('engine', '-')} | {dtype} | `{key}` |"
        )
    return [*out, ""]


def write_report(
    cfg: PipelineConfig,
    state: StageState,
    keys: Mapping[str, str],
    *,
    started_at: float,
    wall_seconds: float,
) -> Path:
    """Write ``<work_dir>/report.md`` from this run's artifacts (see the module docstring).

    Args:
        started_at: ``time.time()`` when this invocation started (stages finished before
            it are marked "up to date" in the footer).
        wall_seconds: this invocation's wall time so far.
    """
    out: list[str] = [
        f"# OPSA study `{cfg.run}`: model `{model_name(cfg.model)}`",
        "",
        f"Engine `{cfg.engine}`, judge `{cfg.judge}`, training preset `{cfg.preset}`. "
        "Config: `pipeline.json`; each stage's key and figures: the footer below.",
        "",
    ]
    for section in (_search_section, _training_section, _eval_section, _analysis_section):
        out += section(cfg, state, keys)
    out += _footer(state, keys, started_at=started_at, wall_seconds=wall_seconds)
    return atomic_write_text(cfg.work_dir / REPORT, "\n".join(out))


def publish(cfg: PipelineConfig) -> Path:
    """Copy the report and its artifacts to ``<results_dir>/<run>/`` in one folder swap.

    The new folder is assembled beside the old one and renamed into place, so the
    published folder never mixes the previous run's files with this run's. Files over 2 MiB stay in
    the working folder.

    Returns:
        The published report path.
    """
    target = cfg.folder
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.publishing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in PUBLISHED:
        source = cfg.work_dir / name
        for path in [source] if source.is_file() else sorted(source.rglob("*")):
            if not path.is_file() or path.stat().st_size > _MAX_PUBLISHED_FILE:
                continue
            dest = staging / path.relative_to(cfg.work_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return target / REPORT
