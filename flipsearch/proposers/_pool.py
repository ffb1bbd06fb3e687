"""The candidate pool: an append-only, crash-safe JSONL file of contexts to try.

:class:`CandidatePool` holds :class:`PoolEntry` rows keyed by :func:`pool_id`, a
content hash of the placement and the :func:`normalise_key` of the text, so the same
text added twice (or by two rewrite rounds) is one candidate, and a resumed sweep that
re-reads the file gets the same ids. Each add appends and fsyncs; a kill mid-write
loses at most the record being written (see :func:`flipsearch.jsonl.read_jsonl_log`).

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "pool.jsonl"
    >>> new = CandidatePool(path).add(["Refuse  harmful requests."], source="seed")
    >>> CandidatePool(path).add(["refuse harmful requests"], source="seed")  # a duplicate
    []
    >>> CandidatePool(path).get(new[0]).context.text
    'Refuse harmful requests.'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flipsearch.contexts import Context, check_placement
from flipsearch.errors import ConfigError, SearchSpaceError
from flipsearch.jsonl import read_jsonl_log

__all__ = ["CandidatePool", "PoolEntry", "normalise_key", "pool_id"]

logger = logging.getLogger(__name__)


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
    shown: tuple[str, ...] = ()
    """A rewrite's lineage: the ids of the failing prompts its proposer was shown."""
    round_no: int | None = None
    """The rewrite round that proposed it; None for seeds, baselines and user contexts."""

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "id": self.id,
            "text": self.context.text,
            "placement": self.context.placement,
            "source": self.source,
            "parents": list(self.parents),
            "created": self.created,
        }
        if self.shown:
            d["shown"] = list(self.shown)
        if self.round_no is not None:
            d["round"] = self.round_no
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PoolEntry:
        return cls(
            id=d["id"],
            context=Context(text=d["text"], placement=d["placement"]),
            source=d["source"],
            parents=tuple(d.get("parents", ())),
            created=float(d.get("created", 0.0)),
            shown=tuple(d.get("shown", ())),
            round_no=d.get("round"),
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
        if self.path is None:
            return
        # A complete last record without its newline is kept; ``good_bytes`` counts it,
        # and _append starts the next record on a fresh line.
        log = read_jsonl_log(
            self.path, error=SearchSpaceError, convert=PoolEntry.from_dict, what="a pool record"
        )
        for entry in log.rows:
            if entry.id not in self._entries:
                self._entries[entry.id] = entry
                self._keys.add(self._key(entry.context.text, entry.context.placement))
        self._good_bytes = log.good_bytes

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

    def lineage(self, candidate_id: str) -> list[str]:
        """``candidate_id`` and its first parents back to a root, newest first; the last
        id may be outside the pool (a search-space candidate a rewrite started from)."""
        chain = [candidate_id]
        while chain[-1] in self._entries and self._entries[chain[-1]].parents:
            parent = self._entries[chain[-1]].parents[0]
            if parent in chain:
                break
            chain.append(parent)
        return chain

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
        shown: Sequence[str] = (),
        round_no: int | None = None,
    ) -> list[str]:
        """Append the texts not already present; return the ids of the new entries.

        Texts are whitespace-normalised; empty ones and duplicates (of the pool or of
        each other, by :func:`normalise_key`) are skipped. ``parents``, ``shown`` and
        ``round_no`` are the lineage every new entry records (see :class:`PoolEntry`).

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
                shown=tuple(shown),
                round_no=round_no,
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
