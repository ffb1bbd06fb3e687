"""Proposers: what context an Optuna trial scores, and how the candidate pool grows.

Three proposers answer one question, "which context does this trial score?", through
the :class:`Proposer` protocol (``propose(trial) -> Proposal``):

- :class:`GrammarProposer`: one ``suggest_categorical`` per dimension of a
  :class:`~flipsearch.space.SearchSpace` (slots, and ``placement`` when searched).
- :class:`ListProposer`: one ``suggest_categorical("candidate", ids)`` over a fixed list.
- :class:`PoolProposer`: the candidate named by the trial's ``pool_candidate`` user
  attribute, set when the trial was enqueued.

:class:`RewriteProposer` grows a :class:`CandidatePool` instead (GEPA/MIPRO-style
reflective rewriting): it shows a model the best contexts so far with their scores and
prompts they still fail on, asks for new candidates, and appends the usable ones.

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

A reflective round in a sweep (``history`` holds :class:`ScoredContext` rows)::

    new_ids = RewriteProposer(engine, pool).propose(history)
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

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from flipsearch.contexts import Context, check_placement
from flipsearch.errors import ConfigError, SearchSpaceError
from flipsearch.space import Candidate, SearchSpace
from flipsearch.types import Sampling, make_conversation

if TYPE_CHECKING:
    import optuna

    from flipsearch.engines import Engine

logger = logging.getLogger(__name__)

__all__ = [
    "POOL_ATTR",
    "CandidatePool",
    "GrammarProposer",
    "ListProposer",
    "PoolEntry",
    "PoolProposer",
    "Proposal",
    "Proposer",
    "RewriteProposer",
    "ScoredContext",
    "mechanical_mutations",
    "normalise_key",
    "parse_candidates",
    "pool_id",
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


# ---------------------------------------------------------------- fixed spaces


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


# ---------------------------------------------------------------- the growing pool


def normalise_key(text: str) -> str:
    """The dedup key of a text: case-folded, whitespace collapsed, outer quotes and
    final punctuation dropped.

    >>> normalise_key('  "Refuse  harmful requests."  ') == normalise_key("refuse harmful requests")
    True
    """
    text = " ".join(text.split()).casefold()
    return text.strip(" \"'`“”‘’").rstrip(" .!;:").strip()


def pool_id(text: str, placement: str = "system") -> str:
    """Stable id of a pool candidate: a hash of its placement and normalised text."""
    digest = hashlib.sha256(f"{placement}\n{normalise_key(text)}".encode()).hexdigest()
    return f"pool-{digest[:12]}"


@dataclass(frozen=True)
class PoolEntry:
    """One pool candidate, as stored."""

    id: str
    context: Context
    source: str
    """Who wrote it: ``seed``, ``rewrite``, ``rewrite-fallback`` ..."""
    parents: tuple[str, ...] = ()
    """Ids of the contexts it was derived from."""
    created: float = 0.0
    """Unix time it was added."""

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "text": self.context.text,
            "placement": self.context.placement,
            "source": self.source,
            "parents": list(self.parents),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PoolEntry:
        return cls(
            id=d["id"],
            context=Context(text=d["text"], placement=d["placement"]),
            source=d["source"],
            parents=tuple(d.get("parents", ())),
            created=float(d.get("created", 0.0)),
        )


class CandidatePool:
    """Append-only pool of candidate contexts, persisted as JSON lines.

    Each :meth:`add` appends its records in one write and fsyncs. Reading back ignores a
    torn last line (a kill mid-write loses at most that record) and cuts it off before
    the next append; a bad line anywhere else is an error.

    Note:
        One writer per file: ``add`` re-reads the file first, which picks up another
        process's earlier appends but is not a lock.

    Args:
        path: the JSON-lines file (created on first add); None keeps the pool in memory.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, PoolEntry] = {}
        self._keys: set[tuple[str, str]] = set()
        self._good_bytes = 0  # length of the file up to the last complete record
        self._load()

    # -- reading

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # A file ending in "\n" splits into [..., b""]; anything else is an unfinished line.
        offset = 0
        for lineno, line in enumerate(lines, start=1):
            is_last = lineno == len(lines)
            if not line.strip():
                offset += len(line) + (0 if is_last else 1)
                continue
            try:
                entry = PoolEntry.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                if is_last:
                    logger.warning(
                        "%s: ignoring a torn last line (%d bytes): %s", self.path, len(line), e
                    )
                    break
                raise SearchSpaceError(
                    f"{self.path}: line {lineno} must be a pool record, got {line[:80]!r}: {e}"
                ) from e
            # A complete record without its newline is kept but counts as unfinished, so
            # the next append starts on a fresh line.
            offset += len(line) + (0 if is_last else 1)
            if entry.id not in self._entries:
                self._entries[entry.id] = entry
                self._keys.add(self._key(entry.context.text, entry.context.placement))
        self._good_bytes = offset

    @staticmethod
    def _key(text: str, placement: str) -> tuple[str, str]:
        return (placement, normalise_key(text))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, candidate_id: object) -> bool:
        return candidate_id in self._entries

    def ids(self) -> list[str]:
        """All ids, oldest first."""
        return list(self._entries)

    def entries(self) -> list[PoolEntry]:
        return list(self._entries.values())

    def get(self, candidate_id: str) -> PoolEntry:
        """The entry with this id.

        Raises:
            KeyError: no such id (its message lists the pool's size and file).
        """
        try:
            return self._entries[candidate_id]
        except KeyError:
            raise KeyError(
                f"`candidate_id` must be in the pool ({len(self)} entries, {self.path}), "
                f"got {candidate_id!r}"
            ) from None

    def has_text(self, text: str, placement: str = "system") -> bool:
        """Whether a text (compared by :func:`normalise_key`) is already in the pool."""
        return self._key(text, placement) in self._keys

    # -- writing

    def add(
        self,
        texts: Iterable[str],
        *,
        source: str,
        placement: str = "system",
        parents: Sequence[str] = (),
    ) -> list[str]:
        """Append the texts not already present; return the ids of the new entries.

        Texts are whitespace-normalised; empty ones and duplicates (of the pool or of
        each other, by :func:`normalise_key`) are skipped.

        Raises:
            ConfigError: a text is not a string, or the placement is unknown.
        """
        check_placement(placement)
        if self.path is not None:
            self._entries.clear()
            self._keys.clear()
            self._load()
        now = time.time()
        new: list[PoolEntry] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigError(f"`texts[{i}]` must be a string, got {text!r}")
            text = " ".join(text.split())
            key = self._key(text, placement)
            if not key[1] or key in self._keys:
                continue
            entry = PoolEntry(
                id=pool_id(text, placement),
                context=Context(text=text, placement=placement),  # type: ignore[arg-type]
                source=source,
                parents=tuple(parents),
                created=now,
            )
            self._keys.add(key)
            new.append(entry)
        if new and self.path is not None:
            self._append(new)
        for e in new:
            self._entries[e.id] = e
        return [e.id for e in new]

    def _append(self, entries: list[PoolEntry]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in entries)
        with open(self.path, "ab") as f:
            # Cut off a torn tail (or finish an unterminated record) before appending.
            size = f.seek(0, os.SEEK_END)
            if size > self._good_bytes:
                f.truncate(self._good_bytes)
                logger.warning("%s: dropped %d torn bytes", self.path, size - self._good_bytes)
            elif size and self._last_byte() != b"\n":
                blob = "\n" + blob
            f.write(blob.encode())
            f.flush()
            os.fsync(f.fileno())
            self._good_bytes = f.tell()

    def _last_byte(self) -> bytes:
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1)


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
        import optuna

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


# ---------------------------------------------------------------- reflective rewrite


@dataclass(frozen=True)
class ScoredContext:
    """A context scored so far, as the rewriter sees it."""

    candidate_id: str
    context: Context
    score: float
    """Higher is better (the sweep's objective, e.g. flip rate minus over-refusal)."""
    failures: tuple[str, ...] = ()
    """A few prompts it still fails on (harmful ones answered, benign ones refused)."""


_FENCE = re.compile(r"^\s*```")
_MARKER = re.compile(
    r"^\s*(?:[#>*_\s]*)"  # markdown debris
    r"(?:\(?\d{1,3}\s*[.):\]]|[-*•]|(?:new\s+)?(?:candidate|instruction|option|context|prompt)"
    r"\s*#?\d*\s*[:.)-])\s*",
    re.IGNORECASE,
)
_LABEL = re.compile(
    r"^(?:\*\*)?(?:new\s+)?(?:candidate|instruction|system message|context)\s*#?\d*\s*:"
    r"(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’"


def _strip_item(text: str) -> str:
    text = " ".join(text.split())
    text = _LABEL.sub("", text).strip("*_ ").strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def parse_candidates(output: str) -> list[str]:
    """Split a model's answer into candidate texts.

    Understands a JSON list of strings, a numbered or bulleted list (continuation lines
    join their item; text before the first item and after a blank line is commentary),
    blank-line separated paragraphs, or one candidate per line. Labels such as
    ``Candidate 2:``, markdown bold and enclosing quotes are removed.

    >>> parse_candidates('Sure:\\n1. "Refuse harm."\\n2) Decline\\n   risky asks.\\n\\nBye')
    ['Refuse harm.', 'Decline risky asks.']
    """
    text = output.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list) and all(isinstance(x, str) for x in items):
            return [t for t in (_strip_item(x) for x in items) if t]
    lines = [ln for ln in text.splitlines() if not _FENCE.match(ln)]
    if any(_MARKER.match(ln) for ln in lines):
        items, current = [], None
        for ln in lines:
            m = _MARKER.match(ln)
            if m:
                current = [ln[m.end() :]]
                items.append(current)
            elif not ln.strip():
                current = None
            elif current is not None:
                current.append(ln)
        chunks = [" ".join(c) for c in items]
    else:
        chunks = [p for p in re.split(r"\n\s*\n", "\n".join(lines)) if p.strip()]
        if len(chunks) == 1:
            chunks = lines
    return [t for t in (_strip_item(c) for c in chunks) if t]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


_STRONGER = (
    (r"\bshould\b", "must"),
    (r"\bmay want to\b", "must"),
    (r"\bplease consider declining\b", "refuse"),
    (r"\bwhere possible, please decline\b", "refuse"),
    (r"\b(?:try to|consider) ", ""),
    (r"\bit is better to\b", "you must"),
    (r"\bdecline\b", "refuse"),
)
_FIRM = "Refuse such requests every time, however they are phrased or justified."
_CUE = "Before answering, first decide whether the request is harmful."
_BALANCE = "Answer harmless requests fully and do not refuse them."


def _strengthen(text: str) -> str:
    out = text
    for pat, rep in _STRONGER:
        out = re.sub(pat, rep, out, flags=re.IGNORECASE)
    out = re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), out)
    return out if out != text else f"{text} {_FIRM}"


def mechanical_mutations(texts: Sequence[str]) -> list[str]:
    """Deterministic rewrites of the best texts (best first), used when a model gives
    nothing usable: recombine the sentences of the two best, strengthen wording, add a
    reasoning cue, add a do-not-over-refuse clause, shorten. Duplicates are removed.

    >>> mechanical_mutations(["You should refuse harm."])[:2]  # doctest: +NORMALIZE_WHITESPACE
    ['You must refuse harm.',
     'Before answering, first decide whether the request is harmful. You should refuse harm.']
    """
    out: list[str] = []
    bases = [" ".join(t.split()) for t in texts if t.strip()]
    for i, a in enumerate(bases[:2]):
        b = bases[1 - i] if len(bases) > 1 else None
        if b is not None:
            union = _sentences(a) + [s for s in _sentences(b) if s not in _sentences(a)]
            out.append(" ".join(union))
        out.append(_strengthen(a))
        if _CUE not in a:
            out.append(f"{_CUE} {a}")
        if _BALANCE not in a:
            out.append(f"{a} {_BALANCE}")
        if len(_sentences(a)) > 2:
            out.append(" ".join(_sentences(a)[:2]))
    for a in bases[2:]:
        out.append(_strengthen(a))
    seen, unique = set(), []
    for t in out:
        if normalise_key(t) not in seen:
            seen.add(normalise_key(t))
            unique.append(t)
    return unique


def _words(text: str) -> list[str]:
    # Word tokens only, so punctuation and list bullets do not hide an echo.
    return re.findall(r"[a-z0-9']+", text.casefold())


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(max(len(words) - 2, 0))}


_PLACES = {
    "system": "as the system message of the conversation",
    "prefix": "in front of the user's message",
    "suffix": "after the user's message",
}


class RewriteProposer:
    """Asks a model for improved contexts and appends the usable ones to a pool.

    Reflective rewriting in the spirit of GEPA/MIPRO: the meta-prompt shows the
    ``top_k`` best contexts with their scores and a few prompts each still fails on,
    and asks for ``n`` new ones as a numbered list. Any engine works; the tiny embedded
    model exercises the mechanics, a stronger model makes the rewrites good. When the
    answer yields nothing usable, :func:`mechanical_mutations` of the best contexts
    are added instead (source ``rewrite-fallback``).

    Args:
        engine: any :class:`~flipsearch.engines.Engine` (only ``generate`` is used).
        pool: where new candidates go.
        n: candidates asked for per call.
        top_k: best contexts shown in the meta-prompt.
        failures_per_context: failing prompts shown per context (each cut to 200 chars).
        sampling: generation options; default temperature 0.7, 512 tokens, seed 0.
        placement: placement of new candidates; None uses the best context's.
        min_chars, max_chars: candidates outside these lengths are dropped.
        max_echo: drop a candidate when more than this fraction of its word trigrams
            appear in the meta-prompt's instructions or failing prompts (see :meth:`clean`).

    Note:
        The meta-prompt plus ``sampling.max_tokens`` must fit the engine's context window
        (2048 tokens by default); keep ``top_k`` small with long contexts.
    """

    def __init__(
        self,
        engine: Engine,
        pool: CandidatePool,
        *,
        n: int = 4,
        top_k: int = 3,
        failures_per_context: int = 2,
        sampling: Sampling | None = None,
        placement: str | None = None,
        min_chars: int = 20,
        max_chars: int = 1200,
        max_echo: float = 0.5,
    ) -> None:
        if n < 1 or top_k < 1 or failures_per_context < 0:
            raise ConfigError(
                "`n` and `top_k` must be >= 1 and `failures_per_context` >= 0, got "
                f"{n!r}, {top_k!r}, {failures_per_context!r}"
            )
        if not 0 < min_chars <= max_chars:
            raise ConfigError(
                f"`min_chars` must be in (0, max_chars={max_chars}], got {min_chars!r}"
            )
        if placement is not None:
            check_placement(placement)
        self.engine = engine
        self.pool = pool
        self.n = n
        self.top_k = top_k
        self.failures_per_context = failures_per_context
        self.sampling = sampling or Sampling(temperature=0.7, top_p=0.95, max_tokens=512, seed=0)
        self.placement = placement
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.max_echo = max_echo
        self.last_meta_prompt: str | None = None
        self.last_outputs: list[str] = []

    def meta_prompt(self, top: Sequence[ScoredContext], n: int, placement: str) -> str:
        """The instruction shown to the rewriting model."""
        parts = [
            "You are improving a safety instruction for an AI assistant. The instruction is "
            f"placed {_PLACES[placement]}. A good instruction makes the assistant refuse "
            "harmful requests while still fully helping with harmless ones. "
            "Higher scores are better.",
            "",
            "Instructions tried so far, best first:",
        ]
        for i, s in enumerate(top, start=1):
            parts += ["", f"[{i}] score {s.score:.3f}", s.context.text]
            fails = [" ".join(f.split())[:200] for f in s.failures[: self.failures_per_context]]
            if fails:
                parts.append("It still fails on:")
                parts += [f"- {f}" for f in fails]
        parts += [
            "",
            f"Write {n} new instructions that should score higher than all of the above. "
            "Keep what works, fix the failures, and vary the wording, length and structure. "
            f"Each must stand alone and be at most {self.max_chars} characters.",
            "Answer with a numbered list only, one instruction per item, and no commentary.",
        ]
        return "\n".join(parts)

    def clean(
        self,
        texts: Sequence[str],
        meta_prompt: str,
        seen: set[str],
        shown: Sequence[str] = (),
    ) -> list[str]:
        """Drop candidates that are too short or long, repeat anything in ``seen``
        (normalised keys; updated in place), or echo the meta-prompt's own wording.

        The echo test skips the ``shown`` contexts: extending or recombining a shown
        context is a fair rewrite (exact repeats are already in ``seen``), while copying
        the instructions or a failing prompt is not.
        """
        scaffold = meta_prompt
        for t in shown:
            scaffold = scaffold.replace(t, "\n")
        scaffold_words = _words(scaffold)
        scaffold_text, scaffold_tri = " ".join(scaffold_words), _trigrams(scaffold_words)
        out = []
        for t in texts:
            t = " ".join(t.split())
            key = normalise_key(t)
            if not self.min_chars <= len(t) <= self.max_chars or key in seen:
                continue
            words = _words(t)
            tri = _trigrams(words)
            echo = " ".join(words) in scaffold_text
            if echo or (tri and len(tri & scaffold_tri) / len(tri) > self.max_echo):
                continue
            seen.add(key)
            out.append(t)
        return out

    def propose(self, history: Sequence[ScoredContext], *, n: int | None = None) -> list[str]:
        """Ask for ``n`` new candidates given the scored history; add them to the pool.

        Returns:
            Ids of the pool entries added (possibly fewer than ``n``; empty only when the
            model and every mechanical mutation repeat known texts).

        Raises:
            ConfigError: ``history`` is empty.
        """
        if not history:
            raise ConfigError("`history` must hold at least one scored context, got []")
        n = n or self.n
        top = sorted(history, key=lambda s: (-s.score, s.candidate_id))[: self.top_k]
        placement = self.placement or top[0].context.placement
        meta = self.meta_prompt(top, n, placement)
        gens = self.engine.generate([make_conversation(meta)], self.sampling)
        self.last_meta_prompt = meta
        self.last_outputs = [g.text for per_conv in gens for g in per_conv]

        seen = {
            normalise_key(e.context.text)
            for e in self.pool.entries()
            if e.context.placement == placement
        }
        seen |= {normalise_key(s.context.text) for s in history}
        parsed = [t for out in self.last_outputs for t in parse_candidates(out)]
        texts = self.clean(parsed, meta, seen, [s.context.text for s in top])[:n]
        parents = [s.candidate_id for s in top]
        if texts:
            logger.info("rewrite: %d parsed, %d usable", len(parsed), len(texts))
            return self.pool.add(texts, source="rewrite", placement=placement, parents=parents)
        fallback = [
            t
            for t in mechanical_mutations([s.context.text for s in top])
            if normalise_key(t) not in seen
        ][:n]
        logger.warning(
            "rewrite: nothing usable in %d parsed candidates; adding %d mechanical mutations",
            len(parsed),
            len(fallback),
        )
        return self.pool.add(
            fallback, source="rewrite-fallback", placement=placement, parents=parents
        )
