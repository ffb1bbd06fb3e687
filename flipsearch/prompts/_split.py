"""Disjoint search / train / eval splits by a stable hash of the normalised prompt text.

A prompt lands in the same split whatever set it appears in and whatever order the
rows come in, so the context searched on (``search``), trained on (``train``) and
reported (``eval``) never share a prompt, even across data sets. Duplicate prompts
(after lower-casing and whitespace collapsing) always land together.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from flipsearch.errors import ConfigError
from flipsearch.prompts._types import PromptSet, normalize_prompt

SPLITS: tuple[str, ...] = ("search", "train", "eval")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.4, 0.3, 0.3)


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Return ``fractions`` as a tuple if they are three numbers >= 0 summing to 1."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != len(SPLITS) or any(f < 0 for f in fr) or not math.isclose(sum(fr), 1.0):
        raise ConfigError(
            f"`fractions` must be {len(SPLITS)} numbers >= 0 summing to 1 (for {SPLITS}), "
            f"got {tuple(fractions)!r}"
        )
    return fr


def prompt_bucket(prompt: str) -> float:
    """A stable number in [0, 1) from sha256 of the normalised prompt."""
    digest = hashlib.sha256(normalize_prompt(prompt).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(prompt: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """The split a prompt belongs to.

    Example:
        >>> split_of("How do I kill a Python process?") in SPLITS
        True
    """
    fr = check_fractions(fractions)
    u = prompt_bucket(prompt)
    edge = 0.0
    for name, f in zip(SPLITS, fr, strict=True):
        edge += f
        if u < edge:
            return name
    return SPLITS[-1]  # u within rounding of 1.0


def split_prompt_set(
    ps: PromptSet, split: str, *, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> PromptSet:
    """The rows of ``ps`` in ``split``, named ``<name>:<split>`` (may be empty for tiny sets).

    Raises:
        ConfigError: unknown split or bad fractions.
    """
    if split not in SPLITS:
        raise ConfigError(f"`split` must be one of {SPLITS}, got {split!r}")
    fr = check_fractions(fractions)
    rows = tuple(r for r in ps.rows if split_of(r.prompt, fr) == split)
    return PromptSet(f"{ps.name}:{split}", rows)
