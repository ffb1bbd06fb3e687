"""A crash-safe SQLite cache of generations and verdicts (JSON payloads, no pickle).

Generations are keyed by (model fingerprint, engine, sampling settings incl. seed,
conversation); verdicts by (judge id, prompt, response). The model fingerprint is
:func:`flipsearch.models.model_key` (weights, config, tokenizer, chat template); the
judge id is :func:`flipsearch.judges.judge_cache_id` (name, version, matcher version and
a model judge's weights identity). Each batch commits as
soon as it is generated, so an interrupted run keeps everything that finished and
a re-run makes no new generations.

Example:
    >>> cache = GenerationCache(":memory:")
    >>> cache.stats.as_dict()
    {'generation_hits': 0, 'generation_misses': 0, 'verdict_hits': 0, 'verdict_misses': 0}
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flipsearch.types import Conversation, Generation, Sampling, Verdict, conversation_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    engine TEXT NOT NULL,
    sampling TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    payload TEXT NOT NULL
);
"""


@dataclass
class CacheStats:
    """Hits and misses since this cache object was opened."""

    generation_hits: int = 0
    generation_misses: int = 0
    verdict_hits: int = 0
    verdict_misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _enable_wal(db: sqlite3.Connection, attempts: int = 40) -> None:
    # Switching to WAL takes an exclusive lock that SQLite does not wait for (the busy
    # timeout does not apply), so processes opening a new cache together retry here.
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * (attempt + 1), 0.5))


class GenerationCache:
    """SQLite store of generations and verdicts. Safe to share between processes (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        if self.path != ":memory:":
            _enable_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()
        self.stats = CacheStats()

    # ------------------------------------------------------------ generations

    @staticmethod
    def generation_key(model: str, engine: str, sampling: Sampling, conv: Conversation) -> str:
        return _digest(model, engine, sampling.key(), conversation_key(conv))

    def get_generations(self, keys: Sequence[str]) -> dict[str, list[Generation]]:
        payloads = self._payloads("generations", keys)
        return {k: [Generation.from_dict(d) for d in v] for k, v in payloads.items()}

    def put_generations(
        self, model: str, engine: str, sampling: Sampling, items: dict[str, list[Generation]]
    ) -> None:
        rows = [
            (k, model, engine, json.dumps(sampling.to_dict()), json.dumps([g.to_dict() for g in v]))
            for k, v in items.items()
        ]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?)", rows)
            self._db.commit()

    # ------------------------------------------------------------ verdicts

    @staticmethod
    def verdict_key(judge_id: str, prompt: str, response: str) -> str:
        return _digest(judge_id, prompt, response)

    def get_verdicts(self, keys: Sequence[str]) -> dict[str, Verdict]:
        return {k: Verdict.from_dict(v) for k, v in self._payloads("verdicts", keys).items()}

    def put_verdicts(self, judge_id: str, items: dict[str, Verdict]) -> None:
        rows = [(k, judge_id, json.dumps(v.to_dict())) for k, v in items.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)", rows)
            self._db.commit()

    def _payloads(self, table: str, keys: Sequence[str]) -> dict[str, Any]:
        # Parsed JSON payloads of the stored keys; SQLite caps the parameters of a query.
        found: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, payload FROM {table} WHERE key IN ({marks})", chunk
                ).fetchall()
                found.update((key, json.loads(payload)) for key, payload in rows)
        return found

    def counts(self) -> dict[str, int]:
        with self._lock:
            gens = self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
            verdicts = self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
        return {"generations": gens, "verdicts": verdicts}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def cached_generate(
    cache: GenerationCache,
    generate: Callable[[list[Conversation]], list[list[Generation]]],
    *,
    model: str,
    engine: str,
    sampling: Sampling,
    conversations: Sequence[Conversation],
    chunk_size: int = 64,
) -> list[list[Generation]]:
    """Return generations for ``conversations``, generating only the cache misses.

    Misses are generated ``chunk_size`` at a time and committed after each chunk, so
    an interruption loses at most the chunk in flight.
    """
    keys = [GenerationCache.generation_key(model, engine, sampling, c) for c in conversations]
    found = cache.get_generations(keys)
    # Duplicate conversations are generated once.
    missing: dict[str, Conversation] = {}
    for k, c in zip(keys, conversations, strict=True):
        if k not in found:
            missing.setdefault(k, c)
    cache.stats.generation_hits += len(conversations) - sum(k not in found for k in keys)
    cache.stats.generation_misses += len(missing)
    todo = list(missing.items())
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        outs = generate([c for _, c in chunk])
        new = {k: o for (k, _), o in zip(chunk, outs, strict=True)}
        cache.put_generations(model, engine, sampling, new)
        found.update(new)
    return [found[k] for k in keys]


def cached_judge(
    cache: GenerationCache,
    judge_fn: Callable[[list[str], list[str]], list[Verdict]],
    *,
    judge_id: str,
    prompts: Sequence[str],
    responses: Sequence[str],
) -> list[Verdict]:
    """Return verdicts for (prompt, response) pairs, judging only the cache misses."""
    keys = [
        GenerationCache.verdict_key(judge_id, p, r) for p, r in zip(prompts, responses, strict=True)
    ]
    found = cache.get_verdicts(keys)
    missing: dict[str, tuple[str, str]] = {}
    for k, p, r in zip(keys, prompts, responses, strict=True):
        if k not in found:
            missing.setdefault(k, (p, r))
    cache.stats.verdict_hits += len(keys) - sum(k not in found for k in keys)
    cache.stats.verdict_misses += len(missing)
    if missing:
        items = list(missing.items())
        verdicts = judge_fn([p for _, (p, _) in items], [r for _, (_, r) in items])
        new = {k: v for (k, _), v in zip(items, verdicts, strict=True)}
        cache.put_verdicts(judge_id, new)
        found.update(new)
    return [found[k] for k in keys]
