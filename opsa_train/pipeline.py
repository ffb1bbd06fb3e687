"""The whole study end to end: sweep -> export -> OPSA -> baseline -> eval -> analysis -> report.

Each stage is a row of :data:`PIPELINE_STAGES`: what it runs, the digest of what it
depends on (its *key*), and the working files it owns. A stage is skipped only when
``runs/<run>/state.json`` records it done under the same key (see
:mod:`opsa_train.stage_state`); a changed config, model, prompt set, export file or
upstream result changes the key, so the stage and everything after it rerun. An
interrupted stage resumes (the sweep from its Optuna storage, training from its last
checkpoint, generation from the cache).

==========  ==============================================  =================================
stage       does                                            key covers
==========  ==============================================  =================================
sweep       :func:`flipsearch.sweep.run_sweep`               sweep config, model fingerprint,
                                                            prompt sets, search space
export      best feasible trial -> ``best.json``            sweep key, export options
opsa        :func:`opsa_train.trainer.train`                train config, model, export file
baseline    :func:`opsa_train.baseline.train_baseline`      opsa inputs + baseline options
eval        :func:`opsa_train.evaluate.evaluate`            eval config, model, opsa/baseline
                                                            keys, eval prompt sets
analysis    :func:`opsa_train.analysis.run_analysis`        analysis config, export, models
report      ``report.md`` from this run's artifacts         always rewritten (seconds)
==========  ==============================================  =================================

Working files live in ``<runs_dir>/<run>/`` (never committed); the report and the small
artifacts it cites are then published to ``<results_dir>/<run>/`` in one folder swap, so
``results/`` only ever holds one run's outputs. ``force`` reruns a stage and all after it.

All sizes come from a YAML file (the packaged ``opsa_train/configs/demo.yaml`` for
``make demo``); a GPU user scales them up in a copy of it or with ``--set section.key=value``
(see ``docs/GPU.md``).

Example::

    python -m opsa_train.demo                                 # the packaged demo config
    opsa-train pipeline --run demo2 --set train.steps=4
    opsa-train pipeline --force eval       # rerun eval, analysis, report

    >>> cfg = PipelineConfig.from_dict({"run": "t", "train": {"steps": 2}})
    >>> cfg.train["steps"], str(cfg.work_dir)
    (2, 'runs/t')
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flipsearch.atomic import atomic_write_text
from flipsearch.machine import PeakRssSampler, machine_facts
from flipsearch.paths import recordable
from flipsearch.version import code_commit
from opsa_train.checks import check_choice
from opsa_train.errors import ConfigError
from opsa_train.stage_state import StageState, file_digest, stage_key

if TYPE_CHECKING:
    from flipsearch.engines import EngineConfig
    from flipsearch.judges import JudgeConfig
    from flipsearch.sweep import SweepConfig
    from opsa_train.analysis import AnalysisConfig
    from opsa_train.baseline import BaselineOptions
    from opsa_train.config import TrainConfig
    from opsa_train.evaluate import EvalConfig

logger = logging.getLogger(__name__)

__all__ = [
    "PIPELINE_STAGES",
    "STAGES",
    "PipelineConfig",
    "Stage",
    "load_pipeline_config",
    "run_pipeline",
]

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
        check_choice("preset", self.preset, ("cpu", "paper"))
        for name in _SECTIONS:
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif not isinstance(value, dict):
                raise ConfigError(f"`{name}` must be a mapping of options, got {value!r}")

    @property
    def folder(self) -> Path:
        """Where the report and its artifacts are published: ``<results_dir>/<run>``."""
        return Path(self.results_dir) / self.run

    @property
    def work_dir(self) -> Path:
        """The run's working files and stage state: ``<runs_dir>/<run>``."""
        return Path(self.runs_dir) / self.run

    @property
    def export_path(self) -> Path:
        return self.work_dir / "best.json"

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
# Stage configs (built from the pipeline config; each is the stage's own typed config)


def _engine_config(cfg: PipelineConfig) -> EngineConfig:
    from flipsearch.engines import EngineConfig

    return EngineConfig(
        model=cfg.model, engine=cfg.engine, gpu_memory_utilization=cfg.gpu_memory_utilization
    )


def _judge_config(cfg: PipelineConfig) -> JudgeConfig:
    from flipsearch.judges import JudgeConfig

    if cfg.judge == "refusal":
        return JudgeConfig("refusal")
    return JudgeConfig(cfg.judge, engine=cfg.judge_engine)


def _sweep_config(cfg: PipelineConfig) -> SweepConfig:
    from flipsearch.sweep import SweepConfig

    fields = {"space": "paper_axes", "trials": 6, **cfg.sweep}
    return SweepConfig(
        study=cfg.run,
        results_dir=str(cfg.work_dir / "sweep"),
        engine=_engine_config(cfg),
        judge=_judge_config(cfg),
        cache=cfg.cache,
        **fields,
    )


def _train_config(cfg: PipelineConfig, kind: str) -> TrainConfig:
    from opsa_train.config import TrainConfig, load_train_config

    base = TrainConfig.cpu_default() if cfg.preset == "cpu" else TrainConfig.paper()
    overrides = {
        **cfg.train,
        "model": cfg.model,
        "context_file": str(cfg.export_path),
        "out_dir": str(cfg.run_dir(kind)),
    }
    return load_train_config(None, overrides, base=base)


def _baseline_options(cfg: PipelineConfig) -> BaselineOptions:
    from opsa_train.baseline import BaselineOptions

    return BaselineOptions(**{"judge": _judge_config(cfg), "cache": cfg.cache, **cfg.baseline})


def _trained_models(cfg: PipelineConfig) -> dict[str, str]:
    return {
        "base": cfg.model,
        "opsa": str(cfg.run_dir("opsa") / "final"),
        "baseline": str(cfg.run_dir("baseline") / "final"),
    }


def _eval_config(cfg: PipelineConfig) -> EvalConfig:
    from opsa_train.evaluate import EvalConfig

    fields = {
        "engine": cfg.engine,
        "judge": _judge_config(cfg),
        "cache": cfg.cache,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        **cfg.eval,
    }
    return EvalConfig(models=_trained_models(cfg), out_dir=str(cfg.work_dir / "eval"), **fields)


def _analysis_config(cfg: PipelineConfig) -> AnalysisConfig:
    from opsa_train.analysis import AnalysisConfig

    fields = {"engine": cfg.engine, "cache": cfg.cache, **cfg.analysis}
    return AnalysisConfig(
        context_file=str(cfg.export_path),
        models=_trained_models(cfg),
        out_dir=str(cfg.work_dir / "analysis"),
        **fields,
    )


# --------------------------------------------------------------------------------------
# Input digests (parts of the stage keys)


def _model_digest(model: str) -> str:
    from flipsearch.models import model_fingerprint, resolve_model

    return model_fingerprint(resolve_model(model))


def _prompt_digests(specs: Sequence[str | None]) -> dict[str, str]:
    from flipsearch.prompts import load_prompt_set

    return {spec: load_prompt_set(spec).content_hash for spec in specs if spec}


def _space_digest(space: str) -> str:
    from flipsearch.space import load_search_space

    texts = [(c.context.placement, c.context.text) for c in load_search_space(space).enumerate()]
    return stage_key("space", 1, texts=texts)


def _engine_facts(engine: str, dtype: str = "auto") -> dict[str, object]:
    # The concrete engine and dtype a stage runs with (``auto`` resolved), for the report.
    from flipsearch.engines import EngineConfig, resolve_engine_name

    name = resolve_engine_name(engine)
    return {"engine": name, "dtype": EngineConfig(engine=engine, dtype=dtype).resolved_dtype(name)}


# --------------------------------------------------------------------------------------
# Stages


@dataclass
class _Run:
    # One invocation: the config, the state file, and the keys computed so far.
    cfg: PipelineConfig
    state: StageState
    keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline: how to key it, run it, and which working files it owns."""

    name: str
    version: int
    """Bump when the stage's code changes what it produces (old records stop matching)."""
    inputs: Callable[[_Run], dict[str, object]]
    """Everything the result depends on (configs, digests, upstream keys); JSON values."""
    run: Callable[[_Run], dict[str, object]]
    """Runs the stage (resuming what an interrupted run left); returns report facts."""
    outputs: Callable[[PipelineConfig], tuple[Path, ...]]
    """Working files removed before a rerun under another key."""
    note: Callable[[PipelineConfig], str] = lambda cfg: ""
    """Banner text (sizes)."""


def _sweep_inputs(r: _Run) -> dict[str, object]:
    sweep = _sweep_config(r.cfg)
    config = sweep.to_dict()
    config.pop("show_progress", None)
    return {
        "config": config,
        "model": _model_digest(r.cfg.model),
        "prompts": _prompt_digests([sweep.harmful, sweep.benign]),
        "space": _space_digest(sweep.space),
    }


def _sweep_run(r: _Run) -> dict[str, object]:
    from flipsearch.sweep import run_sweep

    sweep = _sweep_config(r.cfg)
    study = run_sweep(sweep)
    return {"n_trials": len(study.trials), **_engine_facts(r.cfg.engine)}


def _export_inputs(r: _Run) -> dict[str, object]:
    return {"sweep": r.keys["sweep"], "options": r.cfg.export}


def _export_run(r: _Run) -> dict[str, object]:
    """Write the best trial's export file; the best infeasible one when none is feasible."""
    import optuna

    from flipsearch.contexts import Context
    from flipsearch.errors import ConfigError as FsConfigError
    from flipsearch.export import write_export
    from flipsearch.space import load_search_space
    from flipsearch.trials import best_trial, export_of, ranked_trials

    sweep = _sweep_config(r.cfg)
    study = optuna.load_study(study_name=sweep.study, storage=sweep.storage_spec.build())
    try:
        trial, feasible = best_trial(study), True
    except FsConfigError as e:
        ranked = ranked_trials(study)
        if not ranked:
            raise
        trial, feasible = ranked[0], False
        logger.warning("no feasible trial (%s); exporting the best infeasible one", e)
    benign = None
    ex = r.cfg.export
    if ex.get("benign_context"):
        benign = Context(ex["benign_context"], ex.get("benign_placement", "system"))
    elif ex.get("benign_from"):
        benign = load_search_space(ex["benign_from"]).enumerate()[0].context
    write_export(r.cfg.export_path, export_of(study, trial, benign=benign))
    return {"trial": trial.number, "feasible": feasible}


def _train_inputs(r: _Run, kind: str) -> dict[str, object]:
    config = _train_config(r.cfg, kind)
    return {
        "config": config.to_dict(),
        "model": _model_digest(r.cfg.model),
        "export": file_digest(r.cfg.export_path),
        "export_key": r.keys["export"],
        "prompts": _prompt_digests([*config.harmful_prompts, *config.benign_prompts]),
    }


def _opsa_run(r: _Run) -> dict[str, object]:
    from opsa_train.trainer import train

    config = _train_config(r.cfg, "opsa")
    result = train(config)
    return {"steps": result.steps, **_engine_facts(config.engine, config.dtype)}


def _baseline_inputs(r: _Run) -> dict[str, object]:
    return {**_train_inputs(r, "baseline"), "options": _baseline_options(r.cfg).to_dict()}


def _baseline_run(r: _Run) -> dict[str, object]:
    from opsa_train.baseline import train_baseline

    config = _train_config(r.cfg, "baseline")
    train_baseline(config, options=_baseline_options(r.cfg))
    return {**_engine_facts(r.cfg.engine), "train_dtype": config.dtype}


def _eval_inputs(r: _Run) -> dict[str, object]:
    config = _eval_config(r.cfg)
    sets = [*config.harmful_sets, *config.over_refusal_sets, *config.reasoning_sets]
    return {
        "config": config.to_dict(),
        "models": {"base": _model_digest(r.cfg.model), **_upstream(r, "opsa", "baseline")},
        "prompts": _prompt_digests([*sets, config.retention_set]),
    }


def _upstream(r: _Run, *stages: str) -> dict[str, str]:
    return {stage: r.keys[stage] for stage in stages if stage in r.keys}


def _eval_run(r: _Run) -> dict[str, object]:
    from opsa_train.evaluate import evaluate

    config = _eval_config(r.cfg)
    evaluate(config)
    return _engine_facts(config.engine)


def _analysis_inputs(r: _Run) -> dict[str, object]:
    config = _analysis_config(r.cfg)
    return {
        "config": config.to_dict(),
        "models": {"base": _model_digest(r.cfg.model), **_upstream(r, "opsa", "baseline")},
        "export": file_digest(r.cfg.export_path),
        "prompts": _prompt_digests([config.prompts]),
    }


def _analysis_run(r: _Run) -> dict[str, object]:
    from opsa_train.analysis import run_analysis

    config = _analysis_config(r.cfg)
    run_analysis(config)
    return _engine_facts(config.engine)


PIPELINE_STAGES: tuple[Stage, ...] = (
    Stage(
        "sweep",
        1,
        _sweep_inputs,
        _sweep_run,
        lambda cfg: (cfg.work_dir / "sweep",),
        lambda cfg: f"({_sweep_config(cfg).trials} trials) ",
    ),
    Stage("export", 1, _export_inputs, _export_run, lambda cfg: (cfg.export_path,)),
    Stage(
        "opsa",
        1,
        lambda r: _train_inputs(r, "opsa"),
        _opsa_run,
        lambda cfg: (cfg.run_dir("opsa"),),
        lambda cfg: f"({_train_config(cfg, 'opsa').steps or 'all'} steps) ",
    ),
    Stage(
        "baseline",
        1,
        _baseline_inputs,
        _baseline_run,
        lambda cfg: (cfg.run_dir("baseline"),),
        lambda cfg: f"({_train_config(cfg, 'baseline').steps or 'all'} steps) ",
    ),
    Stage("eval", 1, _eval_inputs, _eval_run, lambda cfg: (cfg.work_dir / "eval",)),
    Stage("analysis", 1, _analysis_inputs, _analysis_run, lambda cfg: (cfg.work_dir / "analysis",)),
)
STAGES = (*(s.name for s in PIPELINE_STAGES), "report")


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _run_stage(stage: Stage, r: _Run, *, index: int, t0: float, forced: bool) -> None:
    # Key the stage, skip it when the state says done under that key, else (clear and) run.
    elapsed = time.perf_counter() - t0
    print(
        f"\n=== [{index}/{len(STAGES)}] {stage.name} {stage.note(r.cfg)}(t+{elapsed:.0f}s) ===",
        flush=True,
    )
    key = stage_key(stage.name, stage.version, **stage.inputs(r))
    r.keys[stage.name] = key
    record = r.state.get(stage.name)
    if not forced and r.state.is_done(stage.name, key):
        print(f"    {stage.name}: up to date (key {key}), skipped", flush=True)
        return
    if forced or record is None or record.key != key:
        stale = [p for p in stage.outputs(r.cfg) if p.exists()]
        if stale:
            why = (
                "forced"
                if forced
                else ("no state record" if record is None else f"key {record.key} -> {key}")
            )
            print(f"    {stage.name}: {why}; removing {', '.join(map(str, stale))}", flush=True)
            _remove(stale)
    elif record.status == "running":
        print(f"    {stage.name}: resuming an interrupted run (key {key})", flush=True)
    r.state.start(stage.name, key)
    started = time.perf_counter()
    with PeakRssSampler() as rss:
        info = stage.run(r)
    seconds = time.perf_counter() - started
    info = {**info, "code_commit": code_commit()}
    r.state.finish(stage.name, key, seconds=seconds, peak_rss_mb=rss.peak_mb, info=info)
    print(f"    {stage.name}: {seconds:.1f}s, peak RSS {rss.peak_mb:.0f} MB", flush=True)


def run_pipeline(
    cfg: PipelineConfig, *, stop_after: str | None = None, force: str | None = None
) -> Path:
    """Run every stage whose inputs changed, write the report and publish it.

    Args:
        cfg: the pipeline config.
        stop_after: run stages up to and including this one (the report then says which
            stages did not run).
        force: rerun this stage and every stage after it, whatever the state says.

    Returns:
        The published report path, ``<results_dir>/<run>/report.md``.
    """
    from opsa_train.pipeline_report import publish, write_report

    for name, value in (("stop_after", stop_after), ("force", force)):
        if value is not None and value not in STAGES:
            raise ConfigError(f"`{name}` must be one of {STAGES}, got {value!r}")
    t0, started_at = time.perf_counter(), time.time()
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        work / "pipeline.json", json.dumps(recordable(cfg.to_dict()), indent=2) + "\n"
    )
    r = _Run(cfg, StageState(work))
    last = STAGES.index(stop_after) if stop_after else len(STAGES) - 1
    first_forced = STAGES.index(force) if force else len(STAGES)
    facts = machine_facts()
    print(f"machine: {facts.describe()}; code commit {code_commit() or 'unknown'}", flush=True)
    for i, stage in enumerate(PIPELINE_STAGES):
        if i > last:
            break
        _run_stage(stage, r, index=i + 1, t0=t0, forced=i >= first_forced)
    print(f"\n=== [{len(STAGES)}/{len(STAGES)}] report (t+{time.perf_counter() - t0:.0f}s) ===")
    write_report(cfg, r.state, r.keys, started_at=started_at, wall_seconds=time.perf_counter() - t0)
    path = publish(cfg)
    print(f"\nreport: {path}  (wall {time.perf_counter() - t0:.0f}s)", flush=True)
    return path
