"""Optuna samplers and pruners by name (:data:`SAMPLERS`, :data:`PRUNERS`).

Example:
    >>> type(make_sampler("random", seed=1)).__name__
    'RandomSampler'
    >>> type(make_pruner("race", minibatch=4)).__name__
    'RacePruner'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import optuna

from flipsearch.errors import ConfigError
from flipsearch.pruners import RacePruner
from flipsearch.sweep._config import PRUNERS, SAMPLERS

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = ["make_pruner", "make_sampler", "native_constraints"]


def native_constraints() -> bool:
    """Whether this Optuna reads constraints set on the trial (``Trial.set_constraint``,
    Optuna >= 5, which deprecates ``constraints_func``); Optuna 4 only has the latter."""
    return hasattr(optuna.trial.Trial, "set_constraint")


def _constraints(trial: FrozenTrial) -> list[float]:
    # Optuna 4: over-refusal minus the threshold (<= 0 is feasible). Pruned trials never
    # scored the benign prompts; they count as feasible, as with Optuna 5 (no constraint).
    return list(trial.user_attrs.get("constraints", [0.0]))


def make_sampler(
    name: str,
    *,
    seed: int | None = 0,
    constrained: bool = True,
    grid: dict[str, list[str]] | None = None,
) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by name (see :data:`SAMPLERS`).

    Args:
        name: ``tpe``, ``gp``, ``random``, ``bruteforce`` or ``nsga2``.
        seed: sampler seed.
        grid: for ``bruteforce``, every dimension's choices (``SearchSpace.dimensions()``).
        constrained: on Optuna 4, pass the over-refusal constraint as ``constraints_func``
            to the samplers that take one (TPE, GP, NSGA-II). Optuna 5 reads the constraint
            each trial sets (``Trial.set_constraint``), so this is not needed there. Other
            samplers only record feasibility.

    Raises:
        ConfigError: unknown name.
        ImportError: ``gp`` without scipy (the message gives the pip command).

    Note:
        ``bruteforce`` is Optuna's ``GridSampler`` over ``grid``: each choice once, workers
        share the grid (a running choice is not handed out twice), and the study stops
        when it is exhausted. Optuna's ``BruteForceSampler`` is not used: it reads a pool
        trial (which has no params) as covering the whole space and stops at once.
    """
    cf = _constraints if constrained and not native_constraints() else None
    with warnings.catch_warnings():  # `group`, GridSampler etc. are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(name, seed, cf, grid)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's ``GridSampler``, safe to tell an enqueued trial when one choice is left.

    ``GridSampler.after_trial`` reads the told trial's ``grid_id`` once a single grid
    point remains unvisited; an enqueued trial (a baseline, a pool candidate) has none,
    so telling it raised ``KeyError: 'grid_id'`` (optuna/optuna#6844, open). Such a trial
    covers no grid point: the study stops only when the grid is exhausted.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if "grid_id" in study._storage.get_trial_system_attrs(trial._trial_id):
            super().after_trial(study, trial, state, values)
        elif self.is_exhausted(study):
            study.stop()


def _sampler(
    name: str,
    seed: int | None,
    cf: Callable[[FrozenTrial], list[float]] | None,
    grid: dict[str, list[str]] | None,
) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate + group: pool trials have no params, so the space is conditional.
        return optuna.samplers.TPESampler(
            seed=seed, constraints_func=cf, multivariate=True, group=True
        )
    if name == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError as e:
            raise ImportError("the GP sampler needs scipy: pip install scipy") from e
        return optuna.samplers.GPSampler(seed=seed, constraints_func=cf)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "bruteforce":
        if not grid:
            raise ConfigError(
                f"`grid` must give the dimensions' choices for the bruteforce sampler, got {grid!r}"
            )
        return _GridSampler(grid, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=cf)
    raise ConfigError(f"`sampler` must be one of {SAMPLERS}, got {name!r}")


def make_pruner(name: str, *, minibatch: int = 8) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name (see :data:`PRUNERS`).

    Steps are harmful prompts scored so far. ``race``, ``median`` and ``sha`` read the
    running TFR after each minibatch; ``wilcoxon`` reads each prompt's flip (step =
    prompt index) and prunes when the trial is significantly worse than the best one on
    the same prompts.

    Raises:
        ConfigError: unknown name.
        ImportError: ``wilcoxon`` without scipy (the message gives the pip command).
    """
    if name == "race":
        return RacePruner(n_warmup_steps=minibatch)
    if name == "median":
        # Five full trials first, and never on the first minibatch alone.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=minibatch)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=minibatch, reduction_factor=3, min_early_stopping_rate=0
        )
    if name == "wilcoxon":
        try:
            import scipy  # noqa: F401
        except ImportError as e:
            raise ImportError("the Wilcoxon pruner needs scipy: pip install scipy") from e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=minibatch)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"`pruner` must be one of {PRUNERS}, got {name!r}")
