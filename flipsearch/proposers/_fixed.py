"""Fixed proposers: which context an Optuna trial scores, from a space, a list or a pool.

Each proposer answers one question through the :class:`Proposer` protocol
(``propose(trial) -> Proposal``) and records ``candidate_id``, ``context`` and
``placement`` as the trial's user attributes:

- :class:`GrammarProposer`: one ``suggest_categorical`` per dimension of a
  :class:`~flipsearch.space.SearchSpace` (slots, and ``placement`` when searched).
- :class:`ListProposer`: one ``suggest_categorical("candidate", ids)`` over a fixed list.
- :class:`PoolProposer`: the :class:`~flipsearch.proposers.CandidatePool` candidate
  named by the trial's ``pool_candidate`` user attribute, set when the trial was
  enqueued (pool trials suggest no params; see the package docstring for why).

Example:
    >>> import optuna
    >>> from flipsearch.space import SearchSpace
    >>> space = SearchSpace.from_dict({"candidates": ["Refuse harm.", "Decline danger."]})
    >>> trial = optuna.create_study().ask()
    >>> ListProposer(space).propose(trial).context.text in {"Refuse harm.", "Decline danger."}
    True
    >>> sorted(trial.user_attrs)
    ['candidate_id', 'context', 'placement']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import optuna

from flipsearch.contexts import Context
from flipsearch.errors import ConfigError
from flipsearch.space import Candidate, SearchSpace

if TYPE_CHECKING:
    from flipsearch.proposers._pool import CandidatePool

__all__ = [
    "POOL_ATTR",
    "GrammarProposer",
    "ListProposer",
    "PoolProposer",
    "Proposal",
    "Proposer",
]

POOL_ATTR = "pool_candidate"
"""User attribute of an enqueued trial naming the pool candidate it scores."""


class Proposal(NamedTuple):
    """What a trial scores: ``cid, context = proposer.propose(trial)``."""

    candidate_id: str
    context: Context


@runtime_checkable
class Proposer(Protocol):
    """Picks the context one Optuna trial scores.

    Implementations also record ``candidate_id``, ``context`` and ``placement`` as the
    trial's user attributes, so every trial can be exported without the space file.
    """

    def propose(self, trial: optuna.Trial) -> Proposal: ...


def _record(trial: optuna.Trial, proposal: Proposal, prefix: str = "") -> Proposal:
    trial.set_user_attr(f"{prefix}candidate_id", proposal.candidate_id)
    trial.set_user_attr(f"{prefix}context", proposal.context.text)
    trial.set_user_attr(f"{prefix}placement", proposal.context.placement)
    return proposal


class GrammarProposer:
    """One categorical per dimension of a space (grammar slots, or ``candidate`` for a
    list space), plus ``placement`` when the space searches over it.

    Args:
        space: the search space.
        prefix: prepended to every param and user-attribute name, so two spaces (say the
            harmful context I_h and the benign I_b) can be searched in one trial.
    """

    def __init__(self, space: SearchSpace, *, prefix: str = "") -> None:
        self.space = space
        self.prefix = prefix
        self._dims = space.dimensions()

    def propose(self, trial: optuna.Trial) -> Proposal:
        choice = {
            dim: trial.suggest_categorical(f"{self.prefix}{dim}", ids)
            for dim, ids in self._dims.items()
        }
        cand = self.space.candidate(choice)  # type: ignore[arg-type]
        return _record(trial, Proposal(cand.id, cand.context), self.prefix)


class ListProposer:
    """One categorical (default name ``candidate``) over fixed candidates' ids.

    Args:
        candidates: a space (every candidate of :meth:`SearchSpace.enumerate`) or candidates.
        name: the Optuna param name.

    Raises:
        ConfigError: no candidates, or two with the same id.
    """

    def __init__(
        self, candidates: SearchSpace | Sequence[Candidate], *, name: str = "candidate"
    ) -> None:
        cands = candidates.enumerate() if isinstance(candidates, SearchSpace) else candidates
        if not cands:
            raise ConfigError(f"`candidates` must be non-empty, got {cands!r}")
        self._by_id = {c.id: c for c in cands}
        if len(self._by_id) != len(cands):
            raise ConfigError("`candidates` must have unique ids, got duplicates")
        self.name = name

    def ids(self) -> list[str]:
        return list(self._by_id)

    def propose(self, trial: optuna.Trial) -> Proposal:
        cid = trial.suggest_categorical(self.name, self.ids())
        return _record(trial, Proposal(cid, self._by_id[cid].context))  # type: ignore[index]


class PoolProposer:
    """Scores the pool candidate named by the trial's ``pool_candidate`` user attribute.

    Pool trials are created by :meth:`enqueue`; they suggest no params.
    """

    def __init__(self, pool: CandidatePool, *, attr: str = POOL_ATTR) -> None:
        self.pool = pool
        self.attr = attr

    def enqueue(self, study: optuna.Study, ids: Sequence[str] | None = None) -> list[str]:
        """Enqueue one trial per pool id (default: all) the study has not tried yet.

        An id counts as tried when a trial with it is waiting, running, complete or
        pruned; a failed one is enqueued again. (A trial left RUNNING by a killed worker
        stays so until Optuna's heartbeat marks it failed.)

        Returns:
            The ids enqueued, in pool order.
        """
        done_states = (
            optuna.trial.TrialState.WAITING,
            optuna.trial.TrialState.RUNNING,
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
        )
        tried = {
            t.user_attrs.get(self.attr)
            for t in study.get_trials(deepcopy=False, states=done_states)
        }
        out = []
        for cid in self.pool.ids() if ids is None else ids:
            self.pool.get(cid)  # unknown ids fail here, not inside a worker
            if cid not in tried:
                study.enqueue_trial({}, user_attrs={self.attr: cid})
                tried.add(cid)
                out.append(cid)
        return out

    def propose(self, trial: optuna.Trial) -> Proposal:
        cid = trial.user_attrs.get(self.attr)
        if cid is None:
            raise ConfigError(
                f"`trial.user_attrs[{self.attr!r}]` must name a pool candidate, got none: "
                "create pool trials with PoolProposer.enqueue(study)"
            )
        return _record(trial, Proposal(cid, self.pool.get(cid).context))
