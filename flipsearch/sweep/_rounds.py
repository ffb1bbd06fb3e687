"""Reflective rewrite rounds of a sweep: the incumbent's feedback, the proposer, the record.

A round (:func:`run_round`) builds the proposer's view of the study (:func:`feedback`:
the best contexts, the first, the incumbent, with its rates, the harmful prompts it
fails on and the benign prompts it over-refused, with the model's answers read back
through the scorer's cache), asks the :class:`~flipsearch.proposers.RewriteProposer`
for rewrites, and records what it did as the study attribute ``rewrite_round:<r>``
(parent, prompts shown, ids added, answers that did not parse), which the report reads.

Two schedules use it: ``rewrite_rounds`` (:func:`run_rounds`: rounds after the trials,
their proposals scored as extra trials) and ``rewrite_every`` (the
:class:`~flipsearch.sweep._callbacks.Rewrite` callback: interleaved, within the trials).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna

from flipsearch.contexts import Context
from flipsearch.engines import Engine, EngineConfig
from flipsearch.proposers import Failure, PoolProposer, RewriteProposer, ScoredContext
from flipsearch.scoring import METRIC_FIELDS
from flipsearch.sweep._workers import locked
from flipsearch.trials import ranked_trials, rate_of
from flipsearch.types import Sampling

if TYPE_CHECKING:
    from flipsearch.flip import FlipScorer
    from flipsearch.prompts import PromptRow
    from flipsearch.proposers import CandidatePool
    from flipsearch.sweep._config import SweepConfig

__all__ = [
    "ROUND_ATTR",
    "feedback",
    "make_rewriter",
    "recorded_rounds",
    "run_round",
    "run_rounds",
]

logger = logging.getLogger(__name__)

ROUND_ATTR = "rewrite_round:"
"""Prefix of the study attribute recording round ``r`` (``rewrite_round:1`` ...)."""


def make_rewriter(
    config: SweepConfig, scoring_engine: Engine, pool: CandidatePool, proposer: Engine | None
) -> RewriteProposer:
    """The sweep's rewriter: ``proposer`` if given, else the ``proposer_model`` on its own
    engine, else the scoring engine (the model under study)."""
    if proposer is None:
        same = config.proposer_model in (None, config.engine.model)
        proposer = (
            scoring_engine
            if same
            else EngineConfig(
                model=config.proposer_model,  # type: ignore[arg-type]
                engine=config.proposer_engine,
                device=config.engine.device,
            ).build()
        )
    sampling = Sampling(
        temperature=0.7, top_p=0.95, max_tokens=config.proposer_max_tokens, seed=config.seed
    )
    return RewriteProposer(proposer, pool, n=config.rewrite_n, sampling=sampling)


def feedback(
    study: optuna.Study,
    scorer: FlipScorer,
    harmful: list[PromptRow],
    benign: list[PromptRow],
    *,
    metric: str = "tfr",
    k: int = 3,
) -> list[ScoredContext]:
    """The best ``k`` distinct contexts, feasible first (score: ``metric`` minus any
    over-refusal excess); the first, the incumbent, with its rates, failures and
    over-refusals and the model's answers (cached generations: nothing new is generated
    for prompts its trial scored)."""
    out: list[ScoredContext] = []
    seen: set[str] = set()
    for t in ranked_trials(study):
        cid = str(t.user_attrs.get("candidate_id"))
        if cid in seen:
            continue
        seen.add(cid)
        value = float((rate_of(t, METRIC_FIELDS[metric]) or {"value": 0.0})["value"])
        excess = max(0.0, float(t.user_attrs.get("constraints", [0.0])[0]))
        ctx = Context(t.user_attrs["context"], t.user_attrs["placement"])
        if out:
            out.append(ScoredContext(cid, ctx, value - excess))
        else:
            fails, overs = _failures(t, scorer, ctx, harmful, benign)
            rates = {
                "tfr": rate_of(t, "tfr") or {},
                "refusal_tfr": rate_of(t, "tfr_refusal") or {},
                "over_refusal": rate_of(t, "over_refusal") or {},
            }
            out.append(ScoredContext(cid, ctx, value - excess, fails, overs, rates))
        if len(out) >= k:
            break
    return out


def _failures(
    trial: optuna.trial.FrozenTrial,
    scorer: FlipScorer,
    context: Context,
    harmful: list[PromptRow],
    benign: list[PromptRow],
) -> tuple[tuple[Failure, ...], tuple[Failure, ...]]:
    # Harmful prompts answered unsafely with the context, benign ones refused, with answers.
    outcomes = trial.user_attrs.get("outcomes") or {}
    safe = outcomes.get("h_ctx_safe") or []
    over = outcomes.get("b_over_refusal") or []
    h_rows = [r for r, s in zip(harmful, safe, strict=False) if s is not None and s < 1]
    b_rows = [r for r, o in zip(benign, over, strict=False) if o is not None and o > 0]
    if not h_rows and not b_rows:
        return (), ()
    answers = {o.id: o.ctx_text for o in scorer.outcomes(context, h_rows + b_rows)}
    return (
        tuple(Failure(r.prompt, answers.get(r.id, ""), r.id) for r in h_rows),
        tuple(Failure(r.prompt, answers.get(r.id, ""), r.id) for r in b_rows),
    )


def recorded_rounds(study: optuna.Study) -> dict[int, dict]:
    """Round number -> the record :func:`run_round` stored, for every round so far."""
    return {
        int(key.removeprefix(ROUND_ATTR)): value
        for key, value in study.user_attrs.items()
        if key.startswith(ROUND_ATTR)
    }


def run_round(
    study: optuna.Study,
    rewriter: RewriteProposer,
    scorer: FlipScorer,
    harmful: list[PromptRow],
    benign: list[PromptRow],
    *,
    metric: str,
    round_no: int,
    mode: str,
) -> list[str]:
    """One round: ask for rewrites of the incumbent, record the round, return the new
    pool ids (not enqueued). Nothing is asked before a trial has completed."""
    history = feedback(study, scorer, harmful, benign, metric=metric)
    if not history:
        return []
    known = [
        Context(t.user_attrs["context"], t.user_attrs["placement"]) for t in ranked_trials(study)
    ]
    ids = rewriter.propose(history, round_no=round_no, known=known)
    record = {**rewriter.last_round, "mode": mode, "metric": metric}
    study.set_user_attr(f"{ROUND_ATTR}{round_no}", record)
    logger.info("rewrite round %d (%s): %d new contexts", round_no, record["source"], len(ids))
    return ids


def run_rounds(
    study: optuna.Study,
    config: SweepConfig,
    rewriter: RewriteProposer,
    scorer: FlipScorer,
    pool: CandidatePool,
    harmful: list[PromptRow],
    benign: list[PromptRow],
    score_until: Callable[[int], None],
) -> None:
    """``config.rewrite_rounds`` rounds after the trials; each round's proposals are
    enqueued and scored by ``score_until(target)`` (runs trials until the study has
    ``target`` finished ones). A resumed sweep skips recorded rounds and scores what
    they proposed and was not scored yet. A round is asked under the study's lock, so
    concurrent workers wait for it instead of asking twice."""
    for round_no in range(1, config.rewrite_rounds + 1):
        with locked(config.folder):
            rounds = recorded_rounds(study)
            if round_no not in rounds:
                run_round(
                    study,
                    rewriter,
                    scorer,
                    harmful,
                    benign,
                    metric=config.metric,
                    round_no=round_no,
                    mode="rounds",
                )
                rounds = recorded_rounds(study)
            record = rounds.get(round_no)
            if record is None:  # no completed trial to rewrite yet
                return
            PoolProposer(pool).enqueue(study, record["added"])
        extra = sum(
            len(r["added"])
            for i, r in rounds.items()
            if i <= round_no and r.get("mode") == "rounds"
        )
        score_until(config.trials + extra)
