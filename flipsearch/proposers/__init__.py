"""Proposers: what context an Optuna trial scores, and how the candidate pool grows.

Three proposers answer one question, "which context does this trial score?", through
the :class:`Proposer` protocol (``propose(trial) -> Proposal``):

- :class:`GrammarProposer`: one ``suggest_categorical`` per dimension of a
  :class:`~flipsearch.space.SearchSpace` (slots, and ``placement`` when searched).
- :class:`ListProposer`: one ``suggest_categorical("candidate", ids)`` over a fixed list.
- :class:`PoolProposer`: the candidate named by the trial's ``pool_candidate`` user
  attribute, set when the trial was enqueued.

:class:`RewriteProposer` grows a :class:`CandidatePool` instead (GEPA-style reflective
rewriting): it shows a proposer model the incumbent context with its flip rate and CI
and a sample of the harmful prompts it fails on and benign prompts it over-refuses, with
the model's answers, asks for rewrites (which may change placement), and appends the
usable ones with their lineage (parent, prompts shown, round).

Why a growing pool goes through ``enqueue_trial`` and not a categorical: Optuna
distributions cannot change within a study (``suggest_categorical`` with new choices
raises "CategoricalDistribution does not support dynamic value space", and an enqueued
value outside the choices raises "not in choices"). An integer ``pool_index`` over a
fixed capacity would let the sampler model unrelated candidates as ordered neighbours
and would waste trials on empty slots. So pool candidates carry no distribution at all:
each new id is enqueued once, ``study.enqueue_trial({}, user_attrs={"pool_candidate":
id})``, and the rewrite loop (not the sampler) decides what to try next. Grammar and
list trials in the same study keep their categoricals; samplers simply see pool trials
as trials without those params. Pool ids are content hashes and the pool file is
append-only, so a resumed sweep re-reads the pool and ``enqueue`` skips ids it has tried.

Modules (private; import from ``flipsearch.proposers``):

- ``_fixed``: the protocol and the three proposers above.
- ``_pool``: the crash-safe candidate pool and its content-hash ids.
- ``_rewrite``: the LLM rewriter.
- ``_text``: pure text helpers (answer parsing, mechanical mutations).

A reflective round in a sweep (``history`` holds :class:`ScoredContext` rows)::

    new_ids = RewriteProposer(engine, pool).propose(history, round_no=1)
    PoolProposer(pool).enqueue(study, new_ids)
    study.optimize(objective, n_trials=len(new_ids))  # objective: PoolProposer.propose

Example:
    >>> import optuna
    >>> from flipsearch.space import SearchSpace
    >>> space = SearchSpace.from_dict({"candidates": ["Refuse harmful requests.",
    ...                                               "Decline anything dangerous."]})
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> cid, ctx = GrammarProposer(space).propose(study.ask())
    >>> ctx.placement
    'system'
    >>> pool = CandidatePool()  # in memory; pass a path to persist as JSON lines
    >>> new = pool.add(["You must refuse requests that could cause serious harm."], source="seed")
    >>> PoolProposer(pool).enqueue(study) == new
    True
    >>> PoolProposer(pool).propose(study.ask()).candidate_id == new[0]
    True
"""

from __future__ import annotations

from flipsearch.proposers._fixed import (
    POOL_ATTR,
    GrammarProposer,
    ListProposer,
    PoolProposer,
    Proposal,
    Proposer,
)
from flipsearch.proposers._pool import CandidatePool, PoolEntry, normalise_key, pool_id
from flipsearch.proposers._rewrite import Failure, ProposerStats, RewriteProposer, ScoredContext
from flipsearch.proposers._text import mechanical_mutations, parse_candidates, split_placement

__all__ = [
    "POOL_ATTR",
    "CandidatePool",
    "Failure",
    "GrammarProposer",
    "ListProposer",
    "PoolEntry",
    "PoolProposer",
    "Proposal",
    "Proposer",
    "ProposerStats",
    "RewriteProposer",
    "ScoredContext",
    "mechanical_mutations",
    "normalise_key",
    "parse_candidates",
    "pool_id",
    "split_placement",
]
