"""The whole study end to end: sweep -> export -> OPSA -> baseline -> eval -> analysis -> report.

Stages and what marks each one done (a re-run skips finished stages and resumes the
unfinished one, so an interrupted ``make demo`` continues where it stopped):

==========  ===========================================  ==================================
stage       does                                         done when
==========  ===========================================  ==================================
sweep       :func:`flipsearch.sweep.run_sweep` on         the export file exists (the sweep
            ``search_spaces/<space>.yaml``               itself also resumes trial by trial)
export      best feasible trial -> ``best.json``          ``results/<run>/best.json`` exists
opsa        :func:`opsa_train.trainer.train`             ``runs/<run>/opsa/final`` at the
                                                         configured step
baseline    :func:`opsa_train.baseline.train_baseline`   ``runs/<run>/baseline/final`` idem
eval        :func:`opsa_train.evaluate.evaluate`         ``eval/eval.json`` with this config
analysis    :func:`opsa_train.analysis.run_analysis`     ``analysis/kl_summary.json`` + PNGs
report      ``results/<run>/report.md``                  always rewritten (seconds)
==========  ===========================================  ==================================

All sizes come from a YAML file (``configs/demo.yaml`` for ``make demo``); a GPU user
scales them up there or with ``--set section.key=value`` (see ``docs/GPU.md``).

Example::

    python -m opsa_train.demo                                 # configs/demo.yaml
    opsa-train pipeline --config configs/demo.yaml --run demo2 --set train.steps=4

    >>> cfg = PipelineConfig.from_dict({"run": "t", "train": {"steps": 2}})
    >>> cfg.train["steps"], cfg.results_dir
    (2, 'results')
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flipsearch.atomic import atomic_write_text
from opsa_train.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "PipelineConfig", "load_pipeline_config", "run_pipeline"]

STAGES = ("sweep", "export", "opsa", "baseline", "eval", "analysis", "report")
_SECTIONS = ("sweep", "export", "train", "baseline", "eval", "analysis")


@dataclass(frozen=True)
class PipelineConfig:
    """Every size of the pipeline; sections pass through to each stage's own config.

    - ``sweep``: :class:`flipsearch.sweep.SweepConfig` fields (``space``, ``trials``,
      ``limit_harmful``, ``limit_benign``, ``max_tokens``, ``minibatch``, ...);
    - ``export``: ``benign_from`` (a space file whose first candidate is I_b) or
      ``benign_context`` (text), ``benign_placement``; both None: no I_b;
    - ``train``: :class:`opsa_train.config.TrainConfig` fields over ``TrainConfig.cpu_default``
      (or ``TrainConfig.paper`` with ``preset: paper``);
    - ``baseline``: :class:`opsa_train.baseline.BaselineOptions` fields;
    - ``eval``: :class:`opsa_train.evaluate.EvalConfig` fields (sets, ``limit``, tokens);
    - ``analysis``: :class:`opsa_train.analysis.AnalysisConfig` fields.
    """

    run: str = "demo"
    """Run name: ``<results_dir>/<run>/`` (sweep study, eval, analysis, report) and
    ``<runs_dir>/<run>/{opsa,baseline}/`` (training runs)."""
    model: str = "smollm2-135m"
    """The model under study (embedded name, HF folder or hub id)."""
    engine: str = "auto"
    """Generation engine of sweep, baseline data and eval: ``vllm``, ``hf``, ``auto``."""
    judge: str = "refusal"
    """Judge of sweep, baseline filter and eval (``refusal`` is offline)."""
    judge_engine: str = "auto"
    """Engine of a model judge (``hf`` keeps it off vLLM's GPU memory pool)."""
    gpu_memory_utilization: float | None = None
    """vLLM GPU memory fraction of the sweep and eval generators; None: vLLM's default."""
    results_dir: str = "results"
    runs_dir: str = "runs"
    cache: str | None = None
    """Generation cache; None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""
    preset: str = "cpu"
    """Training preset under ``train``: ``cpu`` or ``paper``."""
    sweep: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.run or "/" in self.run or self.run.startswith("."):
            raise ConfigError(f"`run` must be a folder name without '/', got {self.run!r}")
        if self.preset not in ("cpu", "paper"):
            raise ConfigError(f"`preset` must be 'cpu' or 'paper', got {self.preset!r}")
        for name in _SECTIONS:
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif not isinstance(value, dict):
                raise ConfigError(f"`{name}` must be a mapping of options, got {value!r}")

    @property
    def folder(self) -> Path:
        return Path(self.results_dir) / self.run

    @property
    def export_path(self) -> Path:
        return self.folder / "best.json"

    def run_dir(self, kind: str) -> Path:
        return Path(self.runs_dir) / self.run / kind

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"pipeline config keys must be among {sorted(known)}, got {unknown!r}"
            )
        return cls(**copy.deepcopy(dict(d)))


def load_pipeline_config(
    path: str | Path | None, overrides: Sequence[str] = (), **top: Any
) -> PipelineConfig:
    """Read a YAML file, then apply ``section.key=value`` overrides (YAML-parsed values)
    and keyword overrides of top-level fields that are not None.

    Example:
        >>> load_pipeline_config(None, ["train.steps=3", "run=x"]).train
        {'steps': 3}

    Raises:
        ConfigError: missing file, bad YAML, malformed override or unknown key.
    """
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"`config` must be an existing YAML file, got {str(p)!r}")
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"`config` {str(p)!r} is not valid YAML: {e}") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"`config` {str(p)!r} must hold a mapping, got {type(doc).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override must look like `section.key=value`, got {item!r}")
        value = yaml.safe_load(raw) if raw else ""
        head, dot, tail = key.partition(".")
        if dot:
            doc.setdefault(head, {})
            if not isinstance(doc[head], dict):
                raise ConfigError(f"`{head}` must be a section to set {key!r}, got {doc[head]!r}")
            doc[head][tail] = value
        else:
            doc[head] = value
    doc.update({k: v for k, v in top.items() if v is not None})
    where = f"pipeline config {str(path)!r}" if path is not None else "pipeline config"
    try:
        cfg = PipelineConfig.from_dict(doc)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e
    try:  # the `train` section, checked now rather than after the sweep
        _train_config(cfg, "opsa")
    except ConfigError as e:
        raise ConfigError(f"{where}: `train` section: {e}") from e
    return cfg


# --------------------------------------------------------------------------------------
# Stages


class _Progress:
    # Stage banners with elapsed time; timings saved to <folder>/timings.json.
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "timings.json"
        self.start = time.perf_counter()
        try:
            self.times: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            self.times = {}

    def banner(self, stage: str, note: str = "") -> None:
        i = STAGES.index(stage) + 1
        elapsed = time.perf_counter() - self.start
        print(f"\n=== [{i}/{len(STAGES)}] {stage} {note}(t+{elapsed:.0f}s) ===", flush=True)

    def done(self, stage: str, seconds: float | None) -> None:
        if seconds is None:
            print(f"    {stage}: already done, skipped", flush=True)
            self.times.setdefault(stage, {"seconds": None, "skipped": True})
        else:
            print(f"    {stage}: {seconds:.1f}s", flush=True)
            self.times[stage] = {"seconds": round(seconds, 1), "skipped": False}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.times, indent=2) + "\n", encoding="utf-8")


def _sweep_config(cfg: PipelineConfig) -> Any:
    from flipsearch.engines import EngineConfig
    from flipsearch.sweep import SweepConfig

    fields = {"space": "paper_axes", "trials": 6, **cfg.sweep}
    return SweepConfig(
        study=cfg.run,
        results_dir=cfg.results_dir,
        engine=EngineConfig(
            model=cfg.model, engine=cfg.engine, gpu_memory_utilization=cfg.gpu_memory_utilization
        ),
        judge=_judge_config(cfg),
        cache=cfg.cache,
        **fields,
    )


def stage_sweep_export(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or resume) the sweep and write the best trial's export file.

    When no trial meets the over-refusal constraint, the best infeasible one is exported
    and the report says so.
    """
    from flipsearch.contexts import Context
    from flipsearch.errors import ConfigError as FsConfigError
    from flipsearch.export import write_export
    from flipsearch.space import load_search_space
    from flipsearch.sweep import run_sweep
    from flipsearch.trials import best_trial, export_of, ranked_trials

    study = run_sweep(_sweep_config(cfg))
    try:
        trial = best_trial(study)
    except FsConfigError as e:
        ranked = ranked_trials(study)
        if not ranked:
            raise
        trial = ranked[0]
        logger.warning("no feasible trial (%s); exporting the best infeasible one", e)
    benign = None
    ex = cfg.export
    if ex.get("benign_context"):
        benign = Context(ex["benign_context"], ex.get("benign_placement", "system"))
    elif ex.get("benign_from"):
        benign = load_search_space(ex["benign_from"]).enumerate()[0].context
    export = export_of(study, trial, benign=benign)
    write_export(cfg.export_path, export)
    return {"trial": trial.number, "n_trials": len(study.trials)}


def _judge_config(cfg: PipelineConfig) -> Any:
    from flipsearch.judges import JudgeConfig

    if cfg.judge == "refusal":
        return JudgeConfig("refusal")
    return JudgeConfig(cfg.judge, engine=cfg.judge_engine)


def _train_config(cfg: PipelineConfig, kind: str) -> Any:
    from opsa_train.config import TrainConfig, load_train_config

    base = TrainConfig.cpu_default() if cfg.preset == "cpu" else TrainConfig.paper()
    overrides = {
        **cfg.train,
        "model": cfg.model,
        "context_file": str(cfg.export_path),
        "out_dir": str(cfg.run_dir(kind)),
    }
    return load_train_config(None, overrides, base=base)


def _final_done(run_dir: Path, steps: int) -> bool:
    marker = run_dir / "final" / "opsa_final.json"
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("step") == steps
    except (OSError, json.JSONDecodeError):
        return False


def _expected_steps(config: Any) -> int:
    from opsa_train.data import load_train_prompts, total_steps

    if config.steps is not None:
        return int(config.steps)
    return total_steps(config, len(load_train_prompts(config)))


def _eval_config(cfg: PipelineConfig) -> Any:
    from opsa_train.evaluate import EvalConfig

    models = {
        "base": cfg.model,
        "opsa": str(cfg.run_dir("opsa") / "final"),
        "baseline": str(cfg.run_dir("baseline") / "final"),
    }
    fields = {
        "engine": cfg.engine,
        "judge": _judge_config(cfg),
        "cache": cfg.cache,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        **cfg.eval,
    }
    return EvalConfig(models=models, out_dir=str(cfg.folder / "eval"), **fields)


def _analysis_config(cfg: PipelineConfig) -> Any:
    from opsa_train.analysis import AnalysisConfig

    models = {
        "base": cfg.model,
        "opsa": str(cfg.run_dir("opsa") / "final"),
        "baseline": str(cfg.run_dir("baseline") / "final"),
    }
    fields = {"engine": cfg.engine, "cache": cfg.cache, **cfg.analysis}
    return AnalysisConfig(
        context_file=str(cfg.export_path),
        models=models,
        out_dir=str(cfg.folder / "analysis"),
        **fields,
    )


def _eval_done(config: Any) -> bool:
    from opsa_train.evaluate import read_eval

    found = read_eval(config.out_dir)
    return found is not None and found[0] == config.to_dict()


def run_pipeline(cfg: PipelineConfig, *, stop_after: str | None = None) -> Path:
    """Run every unfinished stage, then write ``<results_dir>/<run>/report.md``.

    Args:
        cfg: the pipeline config.
        stop_after: run stages up to and including this one (then still write the
            report of what exists).

    Returns:
        The report path.
    """
    from opsa_train.analysis import analysis_complete, run_analysis
    from opsa_train.baseline import BaselineOptions, train_baseline
    from opsa_train.evaluate import evaluate
    from opsa_train.trainer import train

    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"`stop_after` must be one of {STAGES}, got {stop_after!r}")
    folder = cfg.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    progress = _Progress(folder)
    last = STAGES.index(stop_after) if stop_after else len(STAGES) - 1

    def want(stage: str) -> bool:
        return STAGES.index(stage) <= last

    # sweep + export
    progress.banner("sweep", f"({cfg.sweep.get('trials', 6)} trials) ")
    if cfg.export_path.is_file():
        progress.done("sweep", None)
        progress.done("export", None)
    else:
        t0 = time.perf_counter()
        info = stage_sweep_export(cfg)
        progress.times["export_info"] = info
        progress.done("sweep", time.perf_counter() - t0)
        progress.done("export", 0.0)

    # OPSA and baseline training
    opsa_cfg = _train_config(cfg, "opsa")
    if want("opsa"):
        steps = _expected_steps(opsa_cfg)
        progress.banner("opsa", f"({steps} steps) ")
        if _final_done(cfg.run_dir("opsa"), steps):
            progress.done("opsa", None)
        else:
            t0 = time.perf_counter()
            train(opsa_cfg)
            progress.done("opsa", time.perf_counter() - t0)
    if want("baseline"):
        base_cfg = dataclasses.replace(opsa_cfg, out_dir=str(cfg.run_dir("baseline")))
        steps = _expected_steps(base_cfg)
        progress.banner("baseline", f"({steps} steps) ")
        if _final_done(cfg.run_dir("baseline"), steps):
            progress.done("baseline", None)
        else:
            t0 = time.perf_counter()
            options = BaselineOptions(
                **{"judge": _judge_config(cfg), "cache": cfg.cache, **cfg.baseline}
            )
            train_baseline(base_cfg, options=options)
            progress.done("baseline", time.perf_counter() - t0)
    if want("eval"):
        eval_cfg = _eval_config(cfg)
        progress.banner("eval")
        if _eval_done(eval_cfg):
            progress.done("eval", None)
        else:
            t0 = time.perf_counter()
            evaluate(eval_cfg)
            progress.done("eval", time.perf_counter() - t0)
    if want("analysis"):
        an_cfg = _analysis_config(cfg)
        progress.banner("analysis")
        if analysis_complete(an_cfg.out_dir) and _same_json(
            Path(an_cfg.out_dir) / "kl_summary.json", an_cfg.to_dict()
        ):
            progress.done("analysis", None)
        else:
            t0 = time.perf_counter()
            run_analysis(an_cfg)
            progress.done("analysis", time.perf_counter() - t0)
    progress.banner("report")
    t0 = time.perf_counter()
    path = write_report(cfg)
    progress.done("report", time.perf_counter() - t0)
    total = sum(
        v["seconds"] or 0 for v in progress.times.values() if isinstance(v, dict) and "seconds" in v
    )
    print(f"\nreport: {path}  (stage time recorded: {total:.0f}s)", flush=True)
    return path


def _same_json(path: Path, config: Mapping[str, Any]) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("config") == json.loads(
            json.dumps(config)
        )
    except (OSError, json.JSONDecodeError):
        return False


# --------------------------------------------------------------------------------------
# Report


def _metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    from opsa_train.metrics_log import read_metrics

    try:
        return read_metrics(run_dir, last_per_step=True)
    except (OSError, ValueError):
        return []


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def compare_runs(metrics: Sequence[Any], a: str = "opsa", b: str = "baseline") -> list[str]:
    """Plain-language comparison of two models on the headline numbers, CIs included.

    A difference counts as clear only when the two 95% intervals do not overlap.

    Example:
        >>> from opsa_train.evaluate import Metric
        >>> ms = [Metric("opsa", "composite_safety", "S", 0.9, 40, 0.8, 1.0),
        ...       Metric("baseline", "composite_safety", "S", 0.5, 40, 0.4, 0.6)]
        >>> compare_runs(ms)[0].startswith("- composite_safety (S, higher is better): opsa better")
        True
    """
    better_high = {"composite_safety": True, "accuracy": True}
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for m in metrics:
        by_key.setdefault((m.metric, m.set), {})[m.model] = m
    lines = []
    for (metric, set_name), cells in by_key.items():
        if a not in cells or b not in cells:
            continue
        ma, mb = cells[a], cells[b]
        if any(math.isnan(x) for x in (ma.value, mb.value)):
            continue
        high = better_high.get(metric, False)
        direction = "higher" if high else "lower"
        if ma.value == mb.value:
            verdict = "tie"
        else:
            a_wins = (ma.value > mb.value) == high
            winner = a if a_wins else b
            overlap = not (ma.ci_low > mb.ci_high or mb.ci_low > ma.ci_high)
            verdict = f"{winner} better" + (
                " (CIs overlap: not a clear difference)" if overlap else " (CIs do not overlap)"
            )
        lines.append(
            f"- {metric} ({set_name}, {direction} is better): {verdict}; "
            f"{a} {ma.cell()} vs {b} {mb.cell()}"
        )
    return lines


def write_report(cfg: PipelineConfig) -> Path:
    """Write ``<results_dir>/<run>/report.md`` from whatever stages have finished."""
    from flipsearch.export import read_export
    from opsa_train.evaluate import markdown_table, read_eval

    folder = cfg.folder
    out: list[str] = [f"# OPSA study `{cfg.run}`: model `{cfg.model}`", ""]
    out += [
        f"Engine `{cfg.engine}`, judge `{cfg.judge}`, training preset `{cfg.preset}`. "
        "Config: `pipeline.json`; stage timings: `timings.json`.",
        "",
        "## 1. Context search",
        "",
    ]
    if cfg.export_path.is_file():
        ex = read_export(cfg.export_path)
        prov = ex.provenance
        out += [
            f"Best trial {prov.get('trial')} of study `{prov.get('study')}` "
            f"(feasible: {prov.get('feasible')}), placement `{ex.harmful.placement}`:",
            "",
            "> " + ex.harmful.text.replace("\n", "\n> "),
            "",
        ]
        for key in ("tfr", "tfr_base_unsafe", "base_unsafe_rate", "over_refusal"):
            r = ex.scores.get(key)
            if isinstance(r, dict):
                out.append(
                    f"- {key}: {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] n={r['n']}"
                )
        if ex.benign is not None:
            out += ["", f"I_b ({ex.benign.placement}): {ex.benign.text!r}"]
        out.append("")
    else:
        out += ["(not run yet)", ""]

    out += ["## 2. Training", ""]
    for kind in ("opsa", "baseline"):
        rows = _metrics_rows(cfg.run_dir(kind))
        if not rows:
            out.append(f"- {kind}: not trained yet")
            continue
        first, last = rows[0], rows[-1]
        keys = [k for k in ("train/loss", "train/kl", "rollout/refusal_harmful") if k in last]
        parts = ", ".join(f"{k} {_fmt(first.get(k))} -> {_fmt(last.get(k))}" for k in keys)
        out.append(f"- {kind}: {last['step']} steps; {parts} (`{cfg.run_dir(kind)}`)")
    stats_path = cfg.run_dir("baseline") / "baseline.json"
    if stats_path.is_file():
        s = json.loads(stats_path.read_text(encoding="utf-8"))
        out.append(
            f"- baseline SFT data: kept {s['harmful_kept']}/{s['harmful_total']} harmful prompts "
            f"(refusals with I_h) and {s['benign_kept']}/{s['benign_total']} benign prompts "
            "(answers); dropped prompts are not trained on."
        )
    out.append("")

    out += ["## 3. Evaluation", ""]
    found = read_eval(folder / "eval")
    if found is not None:
        econf, metrics = found
        models = list(econf["models"])  # type: ignore[call-overload]
        out += [
            markdown_table(metrics, models),
            "",
            "Cells: value [95% CI] n (Wilson for rates, normal over prompts for means). "
            "harmful_rate (lower is safer): judge-unsafe or unreadable answers on held-out "
            "`:eval` harmful prompts. over_refusal (lower is better): refusals on safe prompts. "
            "accuracy: GSM8K / MATH-500 final answer in `\\boxed{}`. retention_nll / "
            "retention_kl (lower is closer to base): the base model's greedy benign answers "
            "teacher-forced through each model. composite_safety S = 1 - mean harmful_rate "
            "over the harmful sets. Per-answer records: `eval/samples.jsonl`. retention_kl is "
            "the primary retention measure: retention_nll can fall below the base's own when "
            "a model is sharpened towards the base's answers, which is not better retention.",
            "",
            "### OPSA vs the off-policy baseline",
            "",
            *compare_runs(metrics),
            "",
            "These numbers are reported as measured: the evaluation is not tuned to either "
            "method. On the embedded 135M model with demo sizes, intervals are wide and a "
            "difference whose intervals overlap is not evidence either way.",
            "",
        ]
    else:
        out += ["(not run yet)", ""]

    out += ["## 4. Token-level KL (teacher = initial model + I_h; cf. the paper's Fig. 2)", ""]
    summary_path = folder / "analysis" / "kl_summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        n = summary.get("first_n", 8)
        rollouts = summary["config"].get("rollouts")
        out += [
            f"Rollouts: `{rollouts}` (own: each model's own greedy answers to the harmful "
            "eval prompts; base: the base model's, shared). KL = 0.5 KL(T||S) + 0.5 KL(S||T).",
            "",
            f"| model | mean KL | first {n} tokens | rest | KL mass in first {n} | tokens |",
            "|---|---|---|---|---|---|",
        ]
        for model, s in summary["models"].items():
            out.append(
                f"| {model} | {_fmt(s['kl_mean'])} | {_fmt(s[f'kl_first{n}'])} | "
                f"{_fmt(s['kl_rest'])} | {_fmt(s[f'mass_share_first{n}'])} | {s['tokens']} |"
            )
        top_csv = folder / "analysis" / "kl_top_tokens.csv"
        if top_csv.is_file():
            import csv

            with open(top_csv, encoding="utf-8") as f:
                top = [r for r in csv.DictReader(f) if r["model"] == "base"][:8]
            if top:
                toks = ", ".join(f"{r['token']!r} ({float(r['share']):.2f})" for r in top)
                out += ["", f"Base model tokens with the most KL mass (share): {toks}"]
        out += [
            "",
            "![KL by position](analysis/kl_by_position.png)",
            "",
            "![Top tokens](analysis/kl_top_tokens.png)",
            "",
        ]
    else:
        out += ["(not run yet)", ""]

    timings_path = folder / "timings.json"
    if timings_path.is_file():
        times = json.loads(timings_path.read_text(encoding="utf-8"))
        out += [
            "## 5. Stage timings (last run of each stage)",
            "",
            "| stage | seconds |",
            "|---|---|",
        ]
        for stage in STAGES:
            t = times.get(stage)
            if isinstance(t, dict):
                out.append(f"| {stage} | {_fmt(t.get('seconds'), 1)} |")
        out.append("")
    return atomic_write_text(folder / "report.md", "\n".join(out))
