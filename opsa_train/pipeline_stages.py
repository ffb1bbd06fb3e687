"""The pipeline's stages as a table: each row keys, runs and owns the files of one stage.

A stage's key (:func:`opsa_train.stage_state.stage_key`) covers everything its result
depends on: the resolved stage config, input digests (model fingerprint, prompt sets,
search space, export file) and the upstream stages' keys. See :mod:`opsa_train.pipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from flipsearch.contexts import Context
from flipsearch.engines import choose_engine
from flipsearch.errors import ConfigError as FsConfigError
from flipsearch.export import write_export
from flipsearch.models import model_fingerprint, resolve_model
from flipsearch.prompts import load_prompt_set
from flipsearch.space import load_search_space
from flipsearch.sweep import run_sweep
from flipsearch.trials import best_trial, export_of, ranked_trials
from opsa_train.analysis import run_analysis
from opsa_train.baseline import train_baseline
from opsa_train.evaluate import evaluate
from opsa_train.pipeline_config import (
    PipelineConfig,
    _analysis_config,
    _baseline_options,
    _eval_config,
    _sweep_config,
    _train_config,
)
from opsa_train.stage_state import StageState, export_digest, stage_key

logger = logging.getLogger(__name__)

__all__ = ["PIPELINE_STAGES", "STAGES", "Stage"]

# --------------------------------------------------------------------------------------
# Input digests (parts of the stage keys)


def _model_digest(model: str) -> str:
    return model_fingerprint(resolve_model(model))


def _prompt_digests(specs: Sequence[str | None]) -> dict[str, str]:
    return {spec: load_prompt_set(spec).content_hash for spec in specs if spec}


def _space_digest(space: str) -> str:
    texts = [(c.context.placement, c.context.text) for c in load_search_space(space).enumerate()]
    return stage_key("space", 1, texts=texts)


def _engine_facts(engine: str, dtype: str = "auto") -> dict[str, object]:
    # The concrete engine and dtype a stage runs with (``auto`` resolved), for the report.
    choice = choose_engine(engine, dtype)
    return {"engine": choice.engine, "dtype": choice.dtype, "engine_choice": choice.to_dict()}


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
        "space": _space_digest(sweep.space_name),
    }


def _sweep_run(r: _Run) -> dict[str, object]:
    sweep = _sweep_config(r.cfg)
    study = run_sweep(sweep)
    return {"n_trials": len(study.trials), **_engine_facts(r.cfg.engine)}


def _export_inputs(r: _Run) -> dict[str, object]:
    return {"sweep": r.keys["sweep"], "options": r.cfg.export}


def _export_run(r: _Run) -> dict[str, object]:
    """Write the best trial's export file; the best infeasible one when none is feasible."""
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
        "export": export_digest(r.cfg.export_path),
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
    config = _train_config(r.cfg, "baseline")
    train_baseline(config, options=_baseline_options(r.cfg))
    return {**_engine_facts(r.cfg.engine), "train_dtype": config.dtype}


def _eval_inputs(r: _Run) -> dict[str, object]:
    config = _eval_config(r.cfg)
    sets = [*config.harmful_sets, *config.over_refusal_sets, *config.reasoning_sets]
    return {
        "config": config.to_dict(),
        "models": {"base": _model_digest(r.cfg.model), **_upstream(r, "opsa", "baseline")},
        "export": export_digest(r.cfg.export_path),
        "prompts": _prompt_digests([*sets, config.retention_set]),
    }


def _upstream(r: _Run, *stages: str) -> dict[str, str]:
    return {stage: r.keys[stage] for stage in stages if stage in r.keys}


def _eval_run(r: _Run) -> dict[str, object]:
    config = _eval_config(r.cfg)
    evaluate(config)
    return _engine_facts(config.engine)


def _analysis_inputs(r: _Run) -> dict[str, object]:
    config = _analysis_config(r.cfg)
    return {
        "config": config.to_dict(),
        "models": {"base": _model_digest(r.cfg.model), **_upstream(r, "opsa", "baseline")},
        "export": export_digest(r.cfg.export_path),
        "prompts": _prompt_digests([config.prompts]),
    }


def _analysis_run(r: _Run) -> dict[str, object]:
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
    Stage("eval", 2, _eval_inputs, _eval_run, lambda cfg: (cfg.work_dir / "eval",)),
    Stage("analysis", 2, _analysis_inputs, _analysis_run, lambda cfg: (cfg.work_dir / "analysis",)),
)
STAGES = (*(s.name for s in PIPELINE_STAGES), "report")
