"""The Optuna objective: one trial scores one candidate context, minibatch by minibatch.

A trial asks its proposer for a context (a grammar/list choice from the search space,
or a pool candidate that was enqueued), scores it on the harmful prompts one minibatch
at a time, reports the running objective metric (``SweepConfig.objective_metric``: TFR
or refusal TFR) after each minibatch so a pruner can stop hopeless candidates early,
then scores the benign prompts for over-refusal (raced as well with the ``race``
pruner). Everything it measured goes into the trial's user attributes.

With ``SweepConfig.target`` ``benign`` (the I_b search) the trial scores only the benign
prompts, minibatch by minibatch, and reports their running ``helpful`` share with the
context (judged ``compliance``: neither refused nor derailed), which the pruners race
as they race TFR. It is feasible when that share is at most ``max_helpfulness_loss``
below the context-free helpful share on the same prompts (an Optuna constraint named
``helpfulness_loss``, like ``over_refusal`` for I_h). Retention (a KL to the base
answers) is not measured: the judge's verdicts are the only helpfulness signal.

A candidate that a COMPLETE trial already scored is copied, not scored again; one that
another worker is scoring right now is waited for.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from flipsearch.engines import engine_choice_record
from flipsearch.proposers import POOL_ATTR, GrammarProposer, PoolProposer
from flipsearch.pruners import RacePruner, prob_at_most
from flipsearch.scoring import FlipScore, PromptOutcome, summarise
from flipsearch.sweep._config import SweepConfig
from flipsearch.sweep._factories import native_constraints
from flipsearch.sweep._stale import Heartbeat
from flipsearch.sweep._workers import worker_id

if TYPE_CHECKING:
    from flipsearch.contexts import Context
    from flipsearch.flip import FlipScorer
    from flipsearch.prompts import PromptRow
    from flipsearch.proposers import CandidatePool
    from flipsearch.space import SearchSpace

__all__ = [
    "Objective",
    "SurplusTrial",
    "budget_taken",
    "constraint_excess",
    "constraint_name",
    "ordered",
]


def ordered(rows: Sequence[PromptRow]) -> list[PromptRow]:
    """``rows`` in a fixed, content-independent shuffle (hash of the id), so each minibatch
    mixes categories; the same for every trial and worker, so pruning steps line up."""
    return sorted(rows, key=lambda r: hashlib.sha256(r.id.encode()).hexdigest())


def budget_taken(trials: Sequence[FrozenTrial], number: int, budget: int) -> bool:
    """Whether the trials already finished, plus the running ones started before trial
    ``number`` (lower numbers), make up ``budget``: trial ``number`` is then surplus.

    Only older running trials count, so two trials that start together never both stand
    down for each other and leave the budget one short.
    """
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    older = sum(t.state == TrialState.RUNNING and t.number < number for t in trials)
    return done + older >= budget


def _compact(values: Sequence[float]) -> list[float | int]:
    return [int(v) if v in (0.0, 1.0) else round(v, 3) for v in values]


def _outcome_attrs(outs: Sequence[PromptOutcome], n_harmful: int) -> dict[str, list]:
    # Per-prompt outcomes as short lists in sweep order; None marks prompts not scored.
    h = [o for o in outs if o.type == "harmful"]
    b = [o for o in outs if o.type == "benign"]
    pad = [None] * (n_harmful - len(h))
    return {
        "h_flip": _compact([o.p_flip for o in h]) + pad,
        "h_ctx_safe": _compact([o.p_ctx_safe for o in h]) + pad,
        "h_base_unsafe": _compact([o.p_base_unsafe for o in h]) + pad,
        "b_over_refusal": _compact([o.p_over_refusal for o in b]),
        "b_ctx_refusal": _compact([o.p_ctx_refusal for o in b]),
        "b_ctx_helpful": _compact([o.p_ctx_helpful for o in b]),
    }


def constraint_name(config: SweepConfig) -> str:
    """The name of the trial's one constraint: ``over_refusal`` (I_h) or
    ``helpfulness_loss`` (I_b)."""
    return "helpfulness_loss" if config.searches_benign else "over_refusal"


def constraint_excess(config: SweepConfig, score: FlipScore, *, has_benign: bool) -> float:
    """How far a finished trial is over its limit (<= 0: feasible).

    I_h: over-refusal - ``max_over_refusal`` (0 - the limit without benign prompts).
    I_b: (helpful share without the context - with it) - ``max_helpfulness_loss``.
    """
    if config.searches_benign:
        loss = score.helpful_base_benign.value - score.helpful_benign.value
        return loss - config.max_helpfulness_loss
    over = score.over_refusal.value if has_benign else 0.0
    return over - config.max_over_refusal


class SurplusTrial(Exception):
    """The study already has its trials (other workers' running ones count): raised by
    :class:`Objective` after ``study.stop()``, and caught by ``study.optimize`` (the
    trial is marked FAIL, the worker stops). Control flow, not a user error."""


class Objective:
    """Scores the trial's context minibatch by minibatch; see the module docstring."""

    def __init__(
        self,
        config: SweepConfig,
        scorer: FlipScorer,
        space: SearchSpace,
        pool: CandidatePool,
        harmful: list[PromptRow],
        benign: list[PromptRow],
    ) -> None:
        self.config = config
        self.scorer = scorer
        self.grammar = GrammarProposer(space)
        self.pool = PoolProposer(pool)
        self.harmful = harmful
        self.benign = benign
        # The rows whose objective metric is reported and raced, and the benign rows
        # screened for over-refusal after them: I_h races harmful rows and screens the
        # benign ones; I_b races the benign rows and screens nothing.
        self.raced = benign if config.searches_benign else harmful
        self.screened = [] if config.searches_benign else benign
        self.constraint = constraint_name(config)
        self.multi = config.objective == "multi"
        self.prune = config.pruner != "none"
        self.wilcoxon = config.pruner == "wilcoxon"
        self.metric = config.metric

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        with Heartbeat(trial.study, trial._trial_id, self.config.heartbeat_interval):
            return self._run(trial)

    def start(self, trial: optuna.Trial) -> tuple[str, Context] | FrozenTrial:
        """The trial's candidate (id, context), or the finished trial that already scored
        it (to :meth:`copy`). Raises :class:`SurplusTrial` when the study has its trials."""
        trial.set_user_attr("worker", worker_id())
        choice = engine_choice_record(self.scorer.engine)
        if choice is not None:  # the engine/dtype decision and this worker's machine
            trial.set_user_attr("engine_choice", choice)
        if self._surplus(trial):
            with contextlib.suppress(RuntimeError):  # outside study.optimize: no loop to stop
                trial.study.stop()
            raise SurplusTrial(
                f"trial {trial.number}: the study has its {self.config.trials} trials"
            )
        if POOL_ATTR in trial.user_attrs:
            cid, context = self.pool.propose(trial)
            trial.set_user_attr("source", self.pool.pool.get(cid).source)
        else:
            cid, context = self.grammar.propose(trial)
            trial.set_user_attr("source", "space")
        self._wait_for_running_duplicate(trial.study, cid, trial.number)
        done = self._finished_duplicate(trial.study, cid, trial.number)
        return done if done is not None else (cid, context)

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        started = self.start(trial)
        if isinstance(started, FrozenTrial):
            return self.copy(trial, started)
        _, context = started

        before = self.scorer.generations
        outs: list[PromptOutcome] = []
        benign: list[PromptOutcome] = []
        screen = self._screens_benign(trial)
        k = self.config.minibatch
        for start in range(0, len(self.raced), k):
            batch = self.raced[start : start + k]
            new = self.scorer.outcomes(context, batch)
            outs += new
            if not self.prune:
                continue
            if self.wilcoxon:
                for i, o in enumerate(new, start=start):
                    trial.report(self._p_flip(o), i)
            else:
                trial.report(summarise(outs).metric(self.metric).value, len(outs))
            if start + k < len(self.raced) and trial.should_prune():
                self.record(trial, outs + benign, self.scorer.generations - before, pruned=True)
                value = summarise(outs).metric(self.metric).value
                raise optuna.TrialPruned(f"{self.metric} {value:.3f} after {len(outs)}")
            if screen and start == 0:
                # One benign minibatch early: a clear over-refuser stops here instead of
                # after all its harmful prompts.
                benign = self._score_benign(trial, context, outs, before, benign, stop=k)
        if self.screened:
            benign = self._score_benign(trial, context, outs, before, benign, stop=None)
        score = self.record(trial, outs + benign, self.scorer.generations - before, pruned=False)
        value, over = score.metric(self.metric).value, score.over_refusal.value
        return (value, over) if self.multi else value

    def _p_flip(self, o: PromptOutcome) -> float:
        # One prompt's contribution to the objective metric (the Wilcoxon pruner's steps).
        if self.metric == "helpful":
            return o.p_ctx_helpful
        return o.p_flip_refusal if self.metric == "refusal_tfr" else o.p_flip

    def _screens_benign(self, trial: optuna.Trial) -> bool:
        # With the race pruner, over-refusal is raced too (see flipsearch.pruners).
        return bool(self.screened) and not self.multi and isinstance(trial.study.pruner, RacePruner)

    def _score_benign(
        self,
        trial: optuna.Trial,
        context: Context,
        outs: list[PromptOutcome],
        before: int,
        done: list[PromptOutcome],
        *,
        stop: int | None,
    ) -> list[PromptOutcome]:
        """Score benign prompts after the ``done`` ones, up to index ``stop`` (None: all).

        With the race pruner it goes minibatch by minibatch and prunes the trial once it
        is clearly infeasible: P(over-refusal <= ``max_over_refusal``) < the pruner's
        threshold (such a context cannot be exported). Returns ``done`` + the new ones.
        """
        end = len(self.screened) if stop is None else min(stop, len(self.screened))
        if not self._screens_benign(trial):
            return done + self.scorer.outcomes(context, self.screened[len(done) : end])
        benign = list(done)
        k = self.config.minibatch
        limit = self.config.max_over_refusal
        threshold = trial.study.pruner.threshold  # type: ignore[attr-defined]
        for start in range(len(done), end, k):
            benign += self.scorer.outcomes(context, self.screened[start : min(start + k, end)])
            over = summarise(benign).over_refusal
            last = len(benign) >= len(self.screened)
            if not last and prob_at_most(round(over.k), over.n, limit) < threshold:
                self.record(trial, outs + benign, self.scorer.generations - before, pruned=True)
                raise optuna.TrialPruned(
                    f"over-refusal {over.value:.3f} after {over.n} benign prompts (limit {limit})"
                )
        return benign

    def record(
        self, trial: optuna.Trial, outs: list[PromptOutcome], generations: int, *, pruned: bool
    ) -> FlipScore:
        """Store what the trial measured (scores, per-prompt outcomes, counts, ``generations``
        new answers) as user attributes; a finished one also gets its feasibility."""
        score = summarise(outs)
        trial.set_user_attr("scores", score.to_dict())
        trial.set_user_attr("outcomes", _outcome_attrs(outs, len(self.harmful)))
        trial.set_user_attr("n_harmful", sum(o.type == "harmful" for o in outs))
        trial.set_user_attr("n_benign", sum(o.type == "benign" for o in outs))
        # Prompts behind the objective value (the race pruner's incumbent count).
        trial.set_user_attr("n_objective", sum(o.type == self.config.target for o in outs))
        trial.set_user_attr("generations", generations)
        if not pruned:
            excess = constraint_excess(self.config, score, has_benign=bool(self.benign))
            trial.set_user_attr("constraints", [excess])
            trial.set_user_attr("feasible", excess <= 0)
            if self.benign and native_constraints():
                trial.set_constraint(self.constraint, excess)
        return score

    def _surplus(self, trial: optuna.Trial) -> bool:
        # Older running trials (another worker's, or this worker's wave) already complete
        # the budget: stop instead of overshooting (Optuna's MaxTrialsCallback only checks
        # after a trial). An enqueued candidate goes back into the queue.
        if not budget_taken(
            trial.study.get_trials(deepcopy=False), trial.number, self.config.trials
        ):
            return False
        attrs = {
            k: v for k, v in trial.user_attrs.items() if k in (POOL_ATTR, "retry_of", "retries")
        }
        fixed = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
        if attrs or fixed:
            trial.study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
        trial.set_user_attr("surplus", True)
        return True

    def _wait_for_running_duplicate(self, study: optuna.Study, cid: str, number: int) -> None:
        # Another worker is scoring this very candidate (a grid handed out twice, TPE
        # repeating itself): wait for it instead of generating the same answers twice.
        deadline = time.time() + self.config.grace_s
        while time.time() < deadline:
            running = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number != number
                and t.user_attrs.get("candidate_id") == cid
                # This worker's own running trials are its current wave (the batched
                # race), which copies its twins itself.
                and t.user_attrs.get("worker") != worker_id()
            ]
            if not running:
                return
            time.sleep(min(1.0, self.config.heartbeat_interval))

    @staticmethod
    def _finished_duplicate(study: optuna.Study, cid: str, number: int) -> FrozenTrial | None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if (
                t.number != number
                and t.user_attrs.get("candidate_id") == cid
                and "scores" in t.user_attrs
            ):
                return t
        return None

    def copy(self, trial: optuna.Trial, done: FrozenTrial) -> float | tuple[float, float]:
        # The same candidate was already scored (greedy scoring is deterministic): reuse.
        keys = ("scores", "outcomes", "n_harmful", "n_benign", "n_objective")
        for key in (*keys, "constraints", "feasible"):
            if key in done.user_attrs:
                trial.set_user_attr(key, done.user_attrs[key])
        trial.set_user_attr("generations", 0)
        trial.set_user_attr("duplicate_of", done.number)
        if self.benign and native_constraints() and "constraints" in done.user_attrs:
            trial.set_constraint(self.constraint, done.user_attrs["constraints"][0])
        return tuple(done.values) if self.multi else done.values[0]  # type: ignore[return-value]
