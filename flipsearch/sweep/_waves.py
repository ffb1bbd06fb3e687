"""The batched race: several trials scored together, one generation request per round.

``study.optimize`` runs one trial at a time, so every minibatch of a few prompts is its
own engine call and the engine batches almost nothing. With ``SweepConfig.race_width``
W, :func:`run_waves` asks W trials at once (Optuna's ask-and-tell) and, round by round,
scores the next harmful minibatch of every live trial through one
:meth:`~flipsearch.flip.FlipScorer.outcomes_many` call. After each round the race
(:func:`~flipsearch.pruners.race_round`) stops the contexts unlikely to beat the leader:
the best finished trial or the best live one. Survivors then score their benign prompts
together the same way, stopped early once clearly infeasible, as the race pruner does.
Every trial is recorded like a sequential one and told COMPLETE or PRUNED; waves repeat
until the study has its trials. An I_b search (``target`` ``benign``) races its benign
prompts' helpful share the same way and screens nothing after them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from flipsearch.errors import ConfigError
from flipsearch.pruners import RacePruner, prob_at_most, race_round
from flipsearch.scoring import summarise
from flipsearch.sweep._callbacks import FINISHED
from flipsearch.sweep._objective import SurplusTrial
from flipsearch.sweep._stale import Heartbeat

if TYPE_CHECKING:
    from flipsearch.contexts import Context
    from flipsearch.prompts import PromptRow
    from flipsearch.scoring import PromptOutcome
    from flipsearch.sweep._objective import Objective

__all__ = ["run_waves"]

logger = logging.getLogger(__name__)

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class _Live:
    """One trial of a wave while it races."""

    trial: optuna.Trial
    cid: str
    context: Context
    raced: list[PromptOutcome] = field(default_factory=list)
    """Outcomes on the raced rows (``Objective.raced``: harmful for I_h, benign for I_b)."""
    benign: list[PromptOutcome] = field(default_factory=list)
    """Outcomes on the screened benign rows (``Objective.screened``)."""
    generations: int = 0
    pruned: str | None = None
    """Why the race stopped it; None while it runs."""


def run_waves(study: optuna.Study, objective: Objective, callbacks: Sequence[Callback]) -> None:
    """Ask, race and tell waves of ``config.race_width`` trials until the study has
    ``config.trials`` finished ones (other workers' running trials count)."""
    config = objective.config
    assert config.race_width is not None
    exhausted = False
    while not exhausted:
        trials = study.get_trials(deepcopy=False)
        taken = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
        width = min(config.race_width, config.trials - taken)
        if width <= 0:
            return
        wave, copies, twins = _start_wave(study, objective, width)
        if not (wave or copies or twins):
            # Every asked trial failed (e.g. contexts too long for the window): asking again
            # could go on forever, where study.optimize stops after its n_trials.
            logger.warning("no trial of this wave could start; the sweep stops here")
            return
        with contextlib.ExitStack() as stack:
            for live in wave:
                stack.enter_context(
                    Heartbeat(study, live.trial._trial_id, config.heartbeat_interval)
                )
            _race(study, objective, wave)
        for live in wave:
            exhausted |= _finish(study, objective, live, callbacks)
        for trial, done in copies:
            exhausted |= _tell(study, trial, objective.copy(trial, done), callbacks)
        for trial, live in twins:
            # A candidate asked twice in one wave: the second trial copies the first.
            if live.pruned is None:
                done = study._storage.get_trial(live.trial._trial_id)
                exhausted |= _tell(study, trial, objective.copy(trial, done), callbacks)
            else:
                objective.record(trial, live.raced + live.benign, 0, pruned=True)
                trial.set_user_attr("duplicate_of", live.trial.number)
                exhausted |= _tell(study, trial, None, callbacks)


def _start_wave(
    study: optuna.Study, objective: Objective, width: int
) -> tuple[list[_Live], list[tuple[optuna.Trial, FrozenTrial]], list[tuple[optuna.Trial, _Live]]]:
    """Ask up to ``width`` trials: the ones to race, the ones whose candidate a finished
    trial already scored (to copy), and the ones whose candidate another trial of this
    wave scores (copied after it)."""
    wave: list[_Live] = []
    copies: list[tuple[optuna.Trial, FrozenTrial]] = []
    twins: list[tuple[optuna.Trial, _Live]] = []
    for _ in range(width):
        with warnings.catch_warnings():
            # Optuna's storage heartbeat runs inside study.optimize only; the Heartbeat of
            # flipsearch.sweep._stale keeps these trials alive instead.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask()
        try:
            started = objective.start(trial)
        except SurplusTrial as err:
            study.tell(trial, state=TrialState.FAIL)
            logger.info("%s", err)
            break
        if isinstance(started, FrozenTrial):
            copies.append((trial, started))
            continue
        cid, context = started
        same = next((live for live in wave if live.cid == cid), None)
        if same is not None:
            twins.append((trial, same))
            continue
        try:
            objective.scorer.check_fits(context, objective.raced + objective.screened)
        except ConfigError as err:
            logger.warning("trial %d failed: %s", trial.number, err)
            study.tell(trial, state=TrialState.FAIL)
            continue
        wave.append(_Live(trial, cid, context))
    return wave, copies, twins


def _race(study: optuna.Study, objective: Objective, wave: list[_Live]) -> None:
    """Score the wave's raced prompts round by round, then the survivors' screened ones."""
    config = objective.config
    racing = isinstance(study.pruner, RacePruner)
    threshold = study.pruner.threshold if racing else 0.0  # type: ignore[attr-defined]
    k, n_raced = config.minibatch, len(objective.raced)
    for start in range(0, n_raced, k):
        live = [w for w in wave if w.pruned is None]
        _score(objective, live, objective.raced[start : start + k], benign=False)
        if not racing or start + k >= n_raced:
            continue
        counts = {}
        for w in live:
            value = summarise(w.raced).metric(objective.metric).value
            w.trial.report(value, len(w.raced))
            counts[w.trial.number] = (round(value * len(w.raced)), len(w.raced))
        for w in live:
            if w.trial.number in race_round(counts, RacePruner.incumbent(study), threshold):
                value = counts[w.trial.number][0] / counts[w.trial.number][1]
                w.pruned = f"{objective.metric} {value:.3f} after {len(w.raced)}"
    if not objective.screened:
        return
    limit = config.max_over_refusal
    for start in range(0, len(objective.screened), k):
        live = [w for w in wave if w.pruned is None]
        _score(objective, live, objective.screened[start : start + k], benign=True)
        if not racing or start + k >= len(objective.screened):
            continue
        for w in live:
            over = summarise(w.benign).over_refusal
            if prob_at_most(round(over.k), over.n, limit) < threshold:
                w.pruned = (
                    f"over-refusal {over.value:.3f} after {over.n} benign prompts (limit {limit})"
                )


def _score(objective: Objective, live: list[_Live], rows: list[PromptRow], *, benign: bool) -> None:
    # One request for every live trial's next minibatch.
    if not live or not rows:
        return
    outs = objective.scorer.outcomes_many([(w.context, rows) for w in live])
    for w, new, generated in zip(live, outs, objective.scorer.job_generations, strict=True):
        (w.benign if benign else w.raced).extend(new)
        w.generations += generated


def _finish(
    study: optuna.Study, objective: Objective, live: _Live, callbacks: Sequence[Callback]
) -> bool:
    # Record and tell one raced trial; True when the sampler has run out of candidates.
    outs = live.raced + live.benign
    score = objective.record(live.trial, outs, live.generations, pruned=live.pruned is not None)
    if live.pruned is not None:
        logger.info("trial %d pruned: %s", live.trial.number, live.pruned)
        return _tell(study, live.trial, None, callbacks)
    return _tell(study, live.trial, score.metric(objective.metric).value, callbacks)


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    value: float | tuple[float, float] | None,
    callbacks: Sequence[Callback],
) -> bool:
    """Tell ``value`` (None: PRUNED) and run the callbacks; True when the sampler asked
    the study to stop (its grid is exhausted)."""
    stopped = False
    try:
        if value is None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    except RuntimeError as err:  # BruteForceSampler calls study.stop() once exhausted
        if "Study.stop" not in str(err):
            raise
        stopped = True
    frozen = study._storage.get_trial(trial._trial_id)
    for callback in callbacks:
        callback(study, frozen)
    return stopped
