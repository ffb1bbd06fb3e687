"""Callbacks ``study.optimize`` calls after each trial: the progress bar, the rewrite rounds.

Each is a small class called as ``callback(study, trial)``, holding its own state (the
bar; the count of this worker's finished trials) instead of a closure over counters.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from flipsearch.proposers import PoolProposer
from flipsearch.scoring import METRIC_FIELDS, check_metric
from flipsearch.sweep._rounds import recorded_rounds, run_round
from flipsearch.sweep._stale import recover_stale_trials
from flipsearch.sweep._workers import locked
from flipsearch.trials import ranked_trials, rate_of

if TYPE_CHECKING:
    from flipsearch.flip import FlipScorer
    from flipsearch.prompts import PromptRow
    from flipsearch.proposers import CandidatePool, RewriteProposer
    from flipsearch.sweep._config import SweepConfig

__all__ = ["FINISHED", "Progress", "Rewrite"]

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""The states that count towards ``SweepConfig.trials``."""


class Progress:
    """A tqdm bar of the study's finished trials with the best feasible objective value
    (``tfr`` or ``refusal_tfr``) so far.

    Between trials it also picks up trials of workers that died since this one started
    (:func:`~flipsearch.sweep.recover_stale_trials`). Call :meth:`close` at the end.
    """

    def __init__(self, config: SweepConfig, n_done: int) -> None:
        self.grace_s = config.grace_s
        self.metric = check_metric(config.objective_metric)
        self.bar = tqdm(
            total=config.trials,
            initial=n_done,
            disable=not config.show_progress,
            desc=config.study,
            unit="trial",
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.bar.update(1 if trial.state in FINISHED else 0)
        recover_stale_trials(study, grace_s=self.grace_s)
        best = next((t for t in ranked_trials(study) if t.user_attrs.get("feasible", True)), None)
        if best is not None:
            over = rate_of(best, "over_refusal") or {"value": 0.0}
            value = rate_of(best, METRIC_FIELDS[self.metric]) or {"value": float("nan")}
            self.bar.set_postfix(
                {f"best_{self.metric}": f"{value['value']:.3f}"},
                over=f"{over['value']:.3f}",
                trial=best.number,
            )

    def close(self) -> None:
        self.bar.close()


class Rewrite:
    """Every ``config.rewrite_every`` finished trials of this worker, one reflective round
    (:func:`~flipsearch.sweep._rounds.run_round`) whose proposals are enqueued and scored
    within the trial budget (a no-op when ``rewrite_every`` is 0).
    """

    def __init__(
        self,
        config: SweepConfig,
        rewriter: RewriteProposer | None,
        scorer: FlipScorer,
        pool: CandidatePool,
        harmful: list[PromptRow],
        benign: list[PromptRow],
    ) -> None:
        self.every = config.rewrite_every
        self.metric = config.metric
        self.folder = config.folder
        self.rewriter = rewriter
        self.scorer = scorer
        self.pool = PoolProposer(pool)
        self.harmful = harmful
        self.benign = benign
        self.n_finished = 0
        """This worker's finished trials so far."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED:
            return
        self.n_finished += 1
        if self.rewriter is None or not self.every or self.n_finished % self.every:
            return
        with locked(self.folder):
            round_no = max(recorded_rounds(study), default=0) + 1
            ids = run_round(
                study,
                self.rewriter,
                self.scorer,
                self.harmful,
                self.benign,
                metric=self.metric,
                round_no=round_no,
                mode="every",
            )
            added = self.pool.enqueue(study, ids)
        logger.info("rewrite: enqueued %d new contexts", len(added))
