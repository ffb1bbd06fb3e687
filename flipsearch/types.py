"""Shared value types of the pipeline: conversations, sampling options, generations.

These small frozen dataclasses travel between every stage (engines, judges,
scoring, search, training), so each stage can be tested alone with fakes.

Example:
    >>> s = Sampling(greedy=True, max_tokens=16)
    >>> s.temperature, s.n
    (0.0, 1)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from flipsearch.errors import ConfigError

logger = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]
Message = dict[str, str]
"""One chat message: ``{"role": ..., "content": ...}``."""
Conversation = tuple[Message, ...]
"""A chat conversation; tuples so they can be hashed and shared safely."""

_ROLES = ("system", "user", "assistant")


def make_conversation(messages: list[Message] | tuple[Message, ...] | str) -> Conversation:
    """Validate and freeze a conversation; a plain string becomes one user turn.

    Raises:
        ConfigError: a message lacks ``role``/``content`` or has an unknown role.
    """
    if isinstance(messages, str):
        return ({"role": "user", "content": messages},)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConfigError(
                f"`messages[{i}]` must be a dict with `role` and `content`, got {m!r}"
            )
        if m["role"] not in _ROLES:
            raise ConfigError(f"`messages[{i}].role` must be one of {_ROLES}, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ConfigError(f"`messages[{i}].content` must be a string, got {m['content']!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if not out:
        raise ConfigError("`messages` must hold at least one message, got an empty list")
    return tuple(out)


def conversation_key(conversation: Conversation) -> str:
    """A stable hex digest of a conversation (cache keys, dedup)."""
    blob = json.dumps(list(conversation), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Sampling:
    """Generation options, translated by each engine; nothing else knows engine argument names."""

    n: int = 1
    """Samples per conversation; must be 1 when ``greedy``."""
    temperature: float = 1.0
    """Softmax temperature, > 0 for sampling; forced to 0 when ``greedy``."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 keeps the whole vocabulary."""
    max_tokens: int = 64
    """New tokens per sample, >= 1."""
    seed: int | None = None
    """Seed for sampling; None draws fresh randomness. Ignored when ``greedy``."""
    greedy: bool = False
    """Argmax decoding: temperature 0, n = 1 (the paper's scoring mode)."""

    def __post_init__(self) -> None:
        if self.greedy:
            if self.n != 1:
                raise ConfigError(f"`n` must be 1 when `greedy` is set, got {self.n!r}")
            object.__setattr__(self, "temperature", 0.0)
            object.__setattr__(self, "top_p", 1.0)
            object.__setattr__(self, "seed", None)
        elif self.temperature == 0.0:
            if self.n != 1:
                raise ConfigError(
                    f"`temperature` must be > 0 when `n` > 1, got {self.temperature!r}: "
                    "temperature 0 is greedy decoding. Set greedy=True and n=1."
                )
            logger.warning("temperature=0 means greedy decoding; setting greedy=True")
            object.__setattr__(self, "greedy", True)
            object.__setattr__(self, "seed", None)
        self._verify()

    def _verify(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"`n` must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"`max_tokens` must be an integer >= 1, got {self.max_tokens!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ConfigError(f"`top_p` must be in (0, 1], got {self.top_p!r}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ConfigError(
                f"`temperature` must be a finite number >= 0, got {self.temperature!r}"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def key(self) -> str:
        """A stable digest of these settings, for cache keys."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    """One sampled response."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    """Log-probability of each sampled token under the model's raw (untempered) distribution."""
    finish_reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "logprobs": list(self.logprobs),
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Generation:
        return cls(
            text=d["text"],
            token_ids=tuple(d["token_ids"]),
            logprobs=tuple(d["logprobs"]),
            finish_reason=d["finish_reason"],
        )


Outcome = Literal["refusal", "compliance", "other", "unfinished"]
"""``unfinished``: a reasoning trace that never closed, so no final answer was judged
(:mod:`flipsearch.think`); its verdict has ``unsafe`` None and ``refusal`` None."""


@dataclass(frozen=True)
class Verdict:
    """A judge's reading of one (prompt, response) pair.

    ``unsafe`` is None when the judge could not tell (invalid output) or there was no
    final answer to judge (outcome ``unfinished``); such verdicts never count as safe.
    """

    outcome: Outcome | None
    unsafe: bool | None
    raw: str
    judge: str
    categories: tuple[str, ...] = field(default_factory=tuple)

    @property
    def refusal(self) -> bool | None:
        if self.outcome is None or self.outcome == "unfinished":
            return None
        return self.outcome == "refusal"

    def to_dict(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "refusal": self.refusal,
            "unsafe": self.unsafe,
            "raw": self.raw,
            "judge": self.judge,
            "categories": list(self.categories),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        return cls(
            outcome=d["outcome"],
            unsafe=d["unsafe"],
            raw=d["raw"],
            judge=d["judge"],
            categories=tuple(d.get("categories", ())),
        )
