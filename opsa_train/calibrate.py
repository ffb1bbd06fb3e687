"""Calibrate an OPSA recipe on dev prompts: an Optuna study whose objective is the
student's distillation efficiency, never touching the ``:eval`` splits.

Each trial trains a student with the base recipe (:meth:`TrainConfig.cpu_default` plus
``train`` overrides) and the trial's grid values, and evaluates it every ``eval_every``
steps on **dev** prompts (default: the ``:search`` splits of AdvBench, HarmBench and
StrongREJECT, disjoint from ``:train`` and ``:eval``), beside the base model and the
teacher (base + the export's contexts, :class:`opsa_train.eval_config.TeacherSpec`):

- pooled distillation efficiency ``(base - student) / (base - teacher)`` harmful rate,
  with its paired bootstrap interval (:mod:`opsa_train.efficiency`);
- the student's harmful, refusal and non-answer rates, over-refusal on dev safe prompts
  (teacher's beside it), and retention KL to the base model on dev benign prompts.

A run is extended step by step (``--steps M --resume``; with the constant schedule that is
the same trajectory as one run), so every evaluation point is a point of one learning
curve: Optuna gets it through ``trial.report``, the trial's value is the efficiency at its
last point. The study lives in Optuna storage (default a journal file in ``out_dir``);
a re-run skips finished trials, and a trial killed mid-run resumes its run folder
(named by its parameters) from the last checkpoint, its evaluated points from their
``eval.json``.

Example:
    opsa-train calibrate --context best.json --out runs/calibrate \\
        --set grid.lr=[1e-4,3e-4,1e-3] steps=40 eval_every=10
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from flipsearch.judges import JudgeConfig
from flipsearch.storage import parse_storage
from opsa_train.checks import check_fraction, check_int
from opsa_train.config import TrainConfig, load_train_config
from opsa_train.errors import OpsaConfigError

__all__ = ["CalibrationConfig", "Point", "calibrate", "train_config_of"]

logger = logging.getLogger(__name__)


_DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
"""Trials not run again: finished, or pruned because their efficiency is undefined."""
_SET_PER_TRIAL = {"steps", "out_dir", "context_file", "checkpoint_every"}


@dataclass(frozen=True)
class CalibrationConfig:
    """What to calibrate, on which dev prompts, at which sizes."""

    context_file: str
    """The flipsearch export file: the teacher's I_h (and I_b)."""
    out_dir: str = "runs/calibrate"
    """Trial run folders, their evaluations and the study's journal."""
    study: str = "calibrate"
    storage: str | None = None
    """Optuna storage (:func:`flipsearch.storage.parse_storage`); None: a journal file
    ``<out_dir>/study.log``."""
    train: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig overrides over ``TrainConfig.cpu_default`` shared by every trial."""
    grid: Mapping[str, Sequence[Any]] = field(default_factory=lambda: {"lr": (1e-4, 3e-4, 1e-3)})
    """TrainConfig field -> values; the study runs every combination (Optuna's grid)."""
    steps: int = 40
    """Optimiser steps of every trial."""
    eval_every: int = 10
    """Steps between dev evaluations (the learning curve's points)."""
    dev_harmful: tuple[str, ...] = ("advbench:search", "harmbench:search", "strongreject:search")
    dev_over_refusal: tuple[str, ...] = ("xstest:search", "benign_lookalike:search")
    dev_retention: str | None = "benign:search"
    limit: int | None = 40
    """First N prompts of each dev set."""
    max_tokens: int = 48
    """Greedy answer length on dev (and of the retention answers)."""
    engine: str = "hf"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    cache: str | None = None
    over_refusal_slack: float = 0.05
    """A trial is feasible when its student's dev over-refusal is at most the teacher's
    plus this; the report names the best feasible trial (the student must not refuse
    safe prompts more than the teacher it copies)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "judge", JudgeConfig.coerce(self.judge))
        for name in ("dev_harmful", "dev_over_refusal"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [s.strip() for s in value.split(",") if s.strip()]
            object.__setattr__(self, name, tuple(value))
        for name in ("steps", "eval_every", "max_tokens"):
            check_int(name, getattr(self, name))
        check_int("limit", self.limit, optional=True)
        check_fraction("over_refusal_slack", self.over_refusal_slack)
        if not self.dev_harmful:
            raise OpsaConfigError("`dev_harmful` must name at least one harmful prompt set")
        if any(spec.endswith(":eval") for spec in (*self.dev_harmful, *self.dev_over_refusal)):
            raise OpsaConfigError(
                f"dev sets must not be `:eval` splits (those are held out for the final "
                f"comparison), got {[*self.dev_harmful, *self.dev_over_refusal]!r}"
            )
        fixed = sorted(set(self.grid) & _SET_PER_TRIAL)
        if fixed:
            raise OpsaConfigError(
                f"`grid` must not vary {fixed}: the calibration sets them per trial "
                "(use `steps` and `eval_every` for the length)"
            )
        if not self.grid or any(not list(v) for v in self.grid.values()):
            raise OpsaConfigError(f"`grid` must map fields to non-empty lists, got {self.grid!r}")
        object.__setattr__(self, "grid", _typed_grid(self.grid))
        train_config_of(self, {k: v[0] for k, v in self.grid.items()})  # every rule holds

    @property
    def storage_url(self) -> str:
        return self.storage or f"journal:{Path(self.out_dir) / 'study.log'}"

    @property
    def n_trials(self) -> int:
        return math.prod(len(list(v)) for v in self.grid.values())


@dataclass(frozen=True)
class Point:
    """One dev evaluation of a trial's student."""

    step: int
    efficiency: float
    efficiency_low: float
    efficiency_high: float
    harmful: float
    refusal: float
    non_answer: float
    over_refusal: float
    retention_kl: float
    base_harmful: float
    teacher_harmful: float
    teacher_over_refusal: float
    n_harmful: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _typed_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    # Each value coerced to its TrainConfig field's type ("1e-4" from YAML is a float).
    base = TrainConfig.cpu_default()
    return {
        k: [getattr(load_train_config(None, {k: v}, base=base), k) for v in values]
        for k, values in grid.items()
    }


def train_config_of(config: CalibrationConfig, params: Mapping[str, Any]) -> TrainConfig:
    """The trial's TrainConfig: cpu_default, the shared overrides, then ``params``."""
    fixed = {
        "context_file": config.context_file,
        "steps": config.steps,
        "checkpoint_every": config.eval_every,
        "out_dir": str(run_dir(config, params)),
    }
    return load_train_config(
        None, {**dict(config.train), **dict(params), **fixed}, base=TrainConfig.cpu_default()
    )


def run_dir(config: CalibrationConfig, params: Mapping[str, Any]) -> Path:
    """A trial's run folder, named by its parameters (a retried trial finds its run)."""
    slug = "_".join(f"{k}={params[k]}" for k in sorted(params))
    return Path(config.out_dir) / "trials" / slug.replace("/", "-")


def calibrate(config: CalibrationConfig) -> optuna.Study:
    """Run (or finish) the study; returns it. Trials left RUNNING by a killed process are
    failed and their parameters queued again (one worker per study)."""
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    storage = parse_storage(config.storage_url, results_dir=config.out_dir, study=config.study)
    grid = {k: list(v) for k, v in config.grid.items()}
    study = optuna.create_study(
        study_name=config.study,
        storage=storage.build(),
        direction="maximize",
        sampler=optuna.samplers.GridSampler(grid, seed=0),
        load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(stale.params, skip_if_exists=False)
    done = len(study.get_trials(deepcopy=False, states=_DONE))
    remaining = config.n_trials - done
    if remaining > 0:
        study.optimize(lambda t: _objective(config, t, grid), n_trials=remaining)
    return study


def _objective(config: CalibrationConfig, trial: optuna.Trial, grid: Mapping[str, list]) -> float:
    params = {k: trial.suggest_categorical(k, v) for k, v in grid.items()}
    points = trial_points(config, params, report=trial.report)
    for p in points:
        trial.set_user_attr(f"step_{p.step}", p.to_dict())
    last = points[-1]
    if math.isnan(last.efficiency):
        logger.warning(
            "calibrate %s: efficiency undefined, the teacher is no safer than the base model "
            "on dev (harmful %.3f vs %.3f): choose a context that flips more prompts",
            params,
            last.teacher_harmful,
            last.base_harmful,
        )
        raise optuna.TrialPruned("efficiency undefined: no teacher gap on dev")
    return last.efficiency


def trial_points(
    config: CalibrationConfig, params: Mapping[str, Any], *, report=None
) -> list[Point]:
    """Train the trial's student in ``eval_every`` segments, evaluating after each."""
    from opsa_train.trainer import train

    points: list[Point] = []
    for step in range(config.eval_every, config.steps + 1, config.eval_every):
        t0 = time.perf_counter()
        result = train(dataclasses.replace(train_config_of(config, params), steps=step))
        logger.info(
            "calibrate %s: step %d trained in %.0f s", params, step, time.perf_counter() - t0
        )
        point = dev_point(config, params, step, str(result.final_dir))
        points.append(point)
        if report is not None:
            report(point.efficiency, step)
    return points


def dev_point(
    config: CalibrationConfig, params: Mapping[str, Any], step: int, student: str
) -> Point:
    """Evaluate ``student`` (the trial's ``final/`` at ``step``) on the dev sets, against
    the teacher the trial trains towards (its I_b when the grid varies it)."""
    from opsa_train.eval_config import EvalConfig, TeacherSpec
    from opsa_train.eval_report import read_eval
    from opsa_train.evaluate import evaluate

    train = train_config_of(config, params)
    folder = run_dir(config, params)
    eval_config = EvalConfig(
        models={"base": train.model, "student": student},
        harmful_sets=config.dev_harmful,
        over_refusal_sets=config.dev_over_refusal,
        reasoning_sets=(),
        retention_set=config.dev_retention,
        limit=config.limit,
        max_tokens=config.max_tokens,
        retention_max_tokens=config.max_tokens,
        engine=config.engine,
        judge=config.judge,
        cache=config.cache,
        teacher=TeacherSpec.of_training(config.context_file, train),
        out_dir=str(folder / f"dev-step-{step}"),
    )
    found = read_eval(eval_config.out_dir)
    metrics = found[1] if found is not None else evaluate(eval_config).metrics
    return point_of(step, metrics)


def point_of(step: int, metrics: Sequence[Any]) -> Point:
    """The learning-curve point from an evaluation's metrics (base, student, teacher)."""
    cells = {(m.model, m.metric, m.set): m for m in metrics}
    harmful_sets = {m.set for m in metrics if m.metric == "harmful_rate"}
    pooled = "pooled" if "pooled" in harmful_sets else next(iter(harmful_sets))

    def value(model: str, metric: str, set_name: str = pooled) -> float:
        m = cells.get((model, metric, set_name))
        return math.nan if m is None else float(m.value)

    def over_refusal(model: str) -> float:
        ms = [m for m in metrics if m.model == model and m.metric == "over_refusal"]
        n = sum(m.n for m in ms)
        return sum(m.value * m.n for m in ms) / n if n else math.nan

    eff = cells[("student", "distill_efficiency", pooled)]
    return Point(
        step=step,
        efficiency=float(eff.value),
        efficiency_low=float(eff.ci_low),
        efficiency_high=float(eff.ci_high),
        harmful=value("student", "harmful_rate"),
        refusal=value("student", "refusal_rate"),
        non_answer=value("student", "non_answer_rate"),
        over_refusal=over_refusal("student"),
        retention_kl=next(
            (float(m.value) for m in metrics if (m.model, m.metric) == ("student", "retention_kl")),
            math.nan,
        ),
        base_harmful=value("base", "harmful_rate"),
        teacher_harmful=value("teacher", "harmful_rate"),
        teacher_over_refusal=over_refusal("teacher"),
        n_harmful=int(eff.n),
    )
