"""A pruner that races each candidate context against the best one scored so far.

A trial's running flip rate after ``n`` harmful prompts is ``s / n`` flips, a binomial
count. The flips are those of the sweep's objective metric
(``SweepConfig.objective_metric``): any safe outcome for ``tfr``, explicit refusals for
``refusal_tfr``; the objective reports that metric and returns it as the trial's value,
so the race compares counts of the same metric on both sides. :class:`RacePruner`
puts a uniform prior on each flip rate (so a Beta(s + 1, n - s + 1) posterior) and
stops the trial once the probability that its flip rate beats the incumbent's (the
best COMPLETE trial, feasible ones first) falls below ``threshold`` (default 0.1). It
is the racing idea of F-race / Hoeffding races with a Bayesian test, suited to the 0/1
outcomes of flip scoring:

- the first trial, and every trial while the incumbent flipped nothing, runs to the end
  (a context at 0 flips cannot be shown worse than another at 0);
- how soon a hopeless context stops depends on how good the incumbent is: against a
  TFR of 1/3 on 27 prompts, a context with 0 or 1 flips is stopped after 6 prompts,
  one with 1 flip in 10 after 10;
- unlike successive halving or the median rule, ties at 0 flips (common: most contexts
  flip nothing on a weak model) do not keep every trial alive.

The sweep also stops a trial on its benign prompts once it is clearly infeasible:
P(over-refusal <= ``max_over_refusal``) < ``threshold`` (:func:`prob_at_most`).

Scoring the strongest known contexts first (``SweepConfig.baselines`` and ``enqueue``)
gives the race a strong incumbent early, which is where most of the savings come from.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import optuna

if TYPE_CHECKING:
    from collections.abc import Mapping

    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["RacePruner", "prob_at_most", "prob_better", "race_round"]

K = TypeVar("K", bound=Hashable)
_GRID = np.linspace(0.0, 1.0, 2001)


def prob_better(flips: int, n: int, best_flips: int, best_n: int) -> float:
    """P(p > q) for p ~ Beta(flips + 1, n - flips + 1), q ~ Beta(best_flips + 1, ...).

    Both flip rates have uniform priors; the integral is taken on a fixed grid.

    >>> round(prob_better(0, 8, 8, 24), 3)
    0.039
    >>> round(prob_better(3, 6, 3, 6), 2)
    0.5
    """
    from scipy.stats import beta

    if not (0 <= flips <= n and 0 <= best_flips <= best_n):
        raise ValueError(
            f"flip counts must lie in [0, n], got {flips}/{n} and {best_flips}/{best_n}"
        )
    density_q = beta.pdf(_GRID, best_flips + 1, best_n - best_flips + 1)
    survival_p = beta.sf(_GRID, flips + 1, n - flips + 1)
    return float(np.clip(np.trapezoid(density_q * survival_p, _GRID), 0.0, 1.0))


def prob_at_most(k: int, n: int, limit: float) -> float:
    """P(rate <= limit) for rate ~ Beta(k + 1, n - k + 1): ``k`` events in ``n`` trials.

    >>> round(prob_at_most(0, 10, 0.1), 3)
    0.686
    >>> round(prob_at_most(3, 6, 0.1), 3)
    0.003
    """
    from scipy.stats import beta

    if not 0 <= k <= n:
        raise ValueError(f"`k` must lie in [0, n], got {k}/{n}")
    return float(beta.cdf(limit, k + 1, n - k + 1))


def race_round(
    live: Mapping[K, tuple[int, int]], incumbent: tuple[int, int] | None, threshold: float
) -> set[K]:
    """The live contexts to stop after one round of a batched race.

    ``live`` maps each context still racing to its (flips, prompts) so far; ``incumbent``
    is the best finished context's, if any. The leader is whichever of the incumbent and
    the live contexts has the highest posterior mean flip rate; every other live context
    whose P(beats the leader) < ``threshold`` is stopped. Nothing is stopped while the
    leader flipped nothing (the rule of :class:`RacePruner`).

    >>> sorted(race_round({"a": (6, 8), "b": (0, 8), "c": (4, 8)}, None, 0.1))
    ['b']
    >>> race_round({"a": (0, 8), "b": (0, 8)}, None, 0.1)
    set()
    """
    candidates = list(live.values()) + ([incumbent] if incumbent is not None else [])
    if not candidates:
        return set()
    leader = max(candidates, key=lambda fn: (fn[0] + 1) / (fn[1] + 2))
    if leader[0] == 0:
        return set()
    return {
        key
        for key, (flips, n) in live.items()
        if (flips, n) != leader and n and prob_better(flips, n, *leader) < threshold
    }


class RacePruner(optuna.pruners.BasePruner):
    """Prune a trial unlikely to beat the incumbent's flip rate (see the module docstring).

    Expects single-objective trials (maximised) that report the running rate of the
    objective metric (TFR or refusal TFR; the helpful share of an I_b search, which races
    the same way: a count of 0/1 outcomes) with ``step`` = prompts scored so far, and
    that record ``n_objective`` (prompts in the final value; ``n_harmful`` in older
    studies) and ``feasible`` as user attributes, as :mod:`flipsearch.sweep` does.

    Args:
        threshold: prune when P(trial beats incumbent) < this, in (0, 1). Lower is more
            cautious and costs more prompts per hopeless context.
        n_warmup_steps: never prune before this many prompts.
    """

    def __init__(self, threshold: float = 0.1, n_warmup_steps: int = 1) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"`threshold` must lie in (0, 1), got {threshold!r}")
        if n_warmup_steps < 1:
            raise ValueError(f"`n_warmup_steps` must be >= 1, got {n_warmup_steps!r}")
        self.threshold = threshold
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        incumbent = self.incumbent(study)
        if incumbent is None:
            return False
        best_flips, best_n = incumbent
        if best_flips == 0:
            return False
        flips = round(trial.intermediate_values[step] * step)
        return prob_better(flips, step, best_flips, best_n) < self.threshold

    @staticmethod
    def incumbent(study: Study) -> tuple[int, int] | None:
        """(flips, prompts) of the best COMPLETE trial, feasible trials first."""
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.values is not None and len(t.values) == 1
        ]
        if not done:
            return None
        feasible = [t for t in done if t.user_attrs.get("feasible", True)]
        best = max(feasible or done, key=lambda t: t.values[0])
        # Prompts behind its value: harmful ones for TFR, benign ones for the helpful
        # share of an I_b search (``n_objective``; older trials record ``n_harmful``).
        n = best.user_attrs.get("n_objective") or best.user_attrs.get("n_harmful") or best.last_step
        if not n:
            return None
        return round(best.values[0] * n), int(n)
