"""The value types of a search space (options, slots, rendered candidates) and their ids."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from flipsearch.contexts import Context

PLACEMENT_DIM = "placement"
"""The dimension that searches over placements, when a space lists several."""
CANDIDATE_DIM = "candidate"
"""A list space's one dimension: the candidate id."""


@dataclass(frozen=True)
class Option:
    """One option of a slot (or one candidate of a list space)."""

    id: str
    text: str
    placement: str | None = None
    """List spaces only: a candidate's own placement, overriding the space's."""


@dataclass(frozen=True)
class Slot:
    """A named grammar slot and its options, in file order."""

    name: str
    options: tuple[Option, ...]

    def option(self, option_id: str) -> Option:
        for o in self.options:
            if o.id == option_id:
                return o
        raise KeyError(option_id)


@dataclass(frozen=True)
class Candidate:
    """A rendered point of a space: stable id, the context, and the choice that made it."""

    id: str
    context: Context
    choice: dict[str, str] = field(hash=False)


def normalise_whitespace(text: str) -> str:
    """Collapse runs of spaces, trim lines, keep at most one blank line, drop space before
    punctuation (so an empty option leaves no stray gap).

    >>> normalise_whitespace("  You must  refuse .\\n\\n\\n Always ")
    'You must refuse.\\n\\nAlways'
    """
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = "\n".join(line.strip() for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r" +([.,;:!?])", r"\1", text)
    return text.strip()


def candidate_id(choice: Mapping[str, str], context: Context) -> str:
    """``slot=option|...`` plus 8 hex digits of the rendered text and placement.

    The hash changes whenever the wording of an option changes, so scores cached
    under an old id are never mixed with a new text.
    """
    digest = hashlib.sha256(f"{context.placement}\n{context.text}".encode()).hexdigest()[:8]
    return "|".join(f"{k}={v}" for k, v in choice.items()) + "@" + digest


def derived_option_id(text: str) -> str:
    # A readable slug of the first words plus a hash of the whole text: stable while
    # the text is unchanged, and unique even when two options start alike.
    if not text.strip():
        return "none"
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24].rstrip("-")
    return f"{slug or 'opt'}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"
