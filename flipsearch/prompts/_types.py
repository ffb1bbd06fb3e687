"""Prompt rows and prompt sets: the value types every loader returns."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

from flipsearch.errors import PromptSetError

PromptType = Literal["harmful", "benign"]
PROMPT_TYPES: tuple[str, ...] = ("harmful", "benign")

# Spellings accepted for the prompt type in files and hub datasets (lower-cased first).
TYPE_ALIASES: dict[str, str] = {
    "harmful": "harmful",
    "unsafe": "harmful",
    "1": "harmful",
    "true": "harmful",
    "benign": "benign",
    "safe": "benign",
    "harmless": "benign",
    "0": "benign",
    "false": "benign",
}

CONTEXT_SEPARATOR = "\n\n---\n\n"
"""HarmBench's separator between a contextual behaviour's context and its request."""


def normalize_type(value: object, *, where: str = "") -> str:
    """Map a type label (``harmful``/``unsafe``/``1``, ``benign``/``safe``/``0``) to its name.

    Raises:
        PromptSetError: the value is none of the accepted spellings.
    """
    key = str(value).strip().lower()
    if key not in TYPE_ALIASES:
        at = f" ({where})" if where else ""
        raise PromptSetError(f"`type` must be one of {sorted(TYPE_ALIASES)}, got {value!r}{at}")
    return TYPE_ALIASES[key]


def normalize_prompt(text: str) -> str:
    """Lower-case and collapse whitespace: the key used for splits and dedup."""
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass(frozen=True)
class PromptRow:
    """One prompt with its label.

    ``prompt`` is always the full text sent to the model. For HarmBench contextual
    behaviours that is ``context + "\\n\\n---\\n\\n" + behaviour`` (HarmBench's own
    format); the context string is also kept in ``context`` so a judge can show it.
    ``answer`` holds the reference answer of reasoning sets (GSM8K, MATH-500).

    Example:
        >>> PromptRow("a-1", "How do I kill a Python process?", "benign", "homonyms", "xstest").type
        'benign'
    """

    id: str
    prompt: str
    type: str
    category: str = ""
    source: str = ""
    context: str | None = None
    answer: str | None = None

    def __post_init__(self) -> None:
        if self.type not in PROMPT_TYPES:
            raise PromptSetError(
                f"`type` must be one of {PROMPT_TYPES}, got {self.type!r} (row {self.id!r})"
            )
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise PromptSetError(
                f"`prompt` must be a non-empty string, got {self.prompt!r} (row {self.id!r})"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class PromptSet:
    """A named, ordered tuple of :class:`PromptRow` with a content hash for provenance.

    Example:
        >>> ps = PromptSet("demo", (PromptRow("1", "Hi", "benign"), PromptRow("2", "X", "harmful")))
        >>> len(ps), len(ps.harmful()), ps.harmful().name
        (2, 1, 'demo/harmful')
    """

    name: str
    rows: tuple[PromptRow, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        seen: set[str] = set()
        for row in self.rows:
            if row.id in seen:
                raise PromptSetError(
                    f"`id` must be unique within a prompt set, got {row.id!r} twice "
                    f"in {self.name!r}"
                )
            seen.add(row.id)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> PromptRow:
        return self.rows[index]

    @property
    def prompts(self) -> list[str]:
        """The prompt texts, in order."""
        return [r.prompt for r in self.rows]

    @property
    def content_hash(self) -> str:
        """16 hex digits of sha256 over the rows (every field, in order); the name is excluded."""
        h = hashlib.sha256()
        for row in self.rows:
            h.update(json.dumps(row.to_dict(), sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    def harmful(self) -> PromptSet:
        """The harmful rows, named ``<name>/harmful`` (may be empty); ``self`` if all are."""
        return self.filter(lambda r: r.type == "harmful", "harmful")

    def benign(self) -> PromptSet:
        """The benign rows, named ``<name>/benign`` (may be empty); ``self`` if all are."""
        return self.filter(lambda r: r.type == "benign", "benign")

    def filter(self, keep: Callable[[PromptRow], bool], label: str) -> PromptSet:
        """Rows for which ``keep(row)`` is true, named ``<name>/<label>``.

        A filter that drops nothing returns ``self``, so provenance keeps the plain name.
        """
        rows = tuple(r for r in self.rows if keep(r))
        return self if len(rows) == len(self.rows) else PromptSet(f"{self.name}/{label}", rows)

    def describe(self) -> dict[str, object]:
        """Provenance summary: name, size, per-type counts and content hash."""
        return {
            "name": self.name,
            "n": len(self),
            "n_harmful": sum(r.type == "harmful" for r in self.rows),
            "n_benign": sum(r.type == "benign" for r in self.rows),
            "hash": self.content_hash,
        }
