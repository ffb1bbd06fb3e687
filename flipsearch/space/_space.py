"""The :class:`SearchSpace` type: loading, dimensions, rendering, enumeration, digest."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from flipsearch.contexts import Context
from flipsearch.errors import SearchSpaceError
from flipsearch.space._parser import parse_space
from flipsearch.space._template import substitute
from flipsearch.space._types import (
    CANDIDATE_DIM,
    PLACEMENT_DIM,
    Candidate,
    Option,
    Slot,
    candidate_id,
    normalise_whitespace,
)

DEFAULT_ENUMERATE_LIMIT = 10_000
"""Largest space :meth:`SearchSpace.enumerate` lists unless told otherwise."""


@dataclass(frozen=True)
class SearchSpace:
    """A search space of contexts: a grammar (slots + template) or a list of candidates.

    Build with :meth:`from_yaml` or :meth:`from_dict`; every malformed input raises
    :class:`~flipsearch.errors.SearchSpaceError` naming the file and the key.

    Note:
        A slot that the template never uses is an error, not a warning: it would
        multiply the space by its option count without changing any text, so a
        sampler would spend trials on duplicates.
    """

    name: str
    placements: tuple[str, ...]
    """One placement (fixed), or several (then ``placement`` is a search dimension)."""
    slots: tuple[Slot, ...] = ()
    """Grammar form: slots in file order. Empty for the list form."""
    template: str | None = None
    """Grammar form: the text with ``{slot}`` placeholders."""
    candidates: tuple[Option, ...] = ()
    """List form: candidates in file order. Empty for the grammar form."""
    description: str = ""
    source: str = "<dict>"
    """Where the space came from (a file path), for error messages and provenance."""

    # ------------------------------------------------------------ loading

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read a space from a YAML file (``yaml.safe_load``; data only).

        Raises:
            SearchSpaceError: missing file, YAML syntax error (with line and column),
                empty file, or any validation failure of :meth:`from_dict`.
        """
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SearchSpaceError(
                f"`path` must name a readable search-space file, got {str(path)!r}: {e}"
            ) from e
        return cls.from_text(raw, source=str(path))

    @classmethod
    def from_text(cls, raw: str, *, source: str) -> SearchSpace:
        """Parse YAML text (``yaml.safe_load``); ``source`` names it in errors and provenance.

        Raises:
            SearchSpaceError: YAML syntax error (with line and column), empty text, or any
                validation failure of :meth:`from_dict`.
        """
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise SearchSpaceError(
                f"{source}: must be valid YAML, got a syntax error{where}: {problem}"
            ) from e
        if data is None:
            raise SearchSpaceError(
                f"{source}: must hold a mapping with `slots` or `candidates`, got an empty file"
            )
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, d: object, *, source: str = "<dict>") -> SearchSpace:
        """Validate a parsed space (see ``flipsearch/search_spaces/README.md`` for the grammar).

        Raises:
            SearchSpaceError: the message names ``source``, the key and the problem.
        """
        return cls(**parse_space(d, source))

    # ------------------------------------------------------------ queries

    @property
    def is_grammar(self) -> bool:
        return self.template is not None

    @property
    def size(self) -> int:
        """Number of distinct choices (product of the dimension sizes)."""
        return math.prod(len(v) for v in self.dimensions().values())

    def dimensions(self) -> dict[str, list[str]]:
        """Dimension name -> option ids, in file order (Optuna categoricals).

        Grammar: one entry per slot. List: ``{"candidate": ids}``. Either way a
        ``placement`` entry is added when the space searches over placements.
        """
        if self.is_grammar:
            dims = {s.name: [o.id for o in s.options] for s in self.slots}
        else:
            dims = {CANDIDATE_DIM: [c.id for c in self.candidates]}
        if len(self.placements) > 1:
            dims[PLACEMENT_DIM] = list(self.placements)
        return dims

    def render(self, choice: Mapping[str, str]) -> Context:
        """The context for one choice (dimension name -> option id).

        Raises:
            SearchSpaceError: a dimension is missing or unknown, or an option id is unknown.
        """
        dims = self.dimensions()
        missing = [k for k in dims if k not in choice]
        extra = [k for k in choice if k not in dims]
        if missing or extra:
            raise SearchSpaceError(
                f"{self.source}: `choice` must name exactly the dimensions {list(dims)}, "
                f"got {dict(choice)!r} (missing {missing}, unknown {extra})"
            )
        for k, ids in dims.items():
            if choice[k] not in ids:
                raise SearchSpaceError(
                    f"{self.source}: `choice[{k!r}]` must be one of {ids}, got {choice[k]!r}"
                )
        if self.is_grammar:
            texts = {s.name: s.option(choice[s.name]).text for s in self.slots}
            text = normalise_whitespace(substitute(self.template or "", texts))
            own_placement = None
        else:
            cand = next(c for c in self.candidates if c.id == choice[CANDIDATE_DIM])
            text, own_placement = cand.text, cand.placement
        placement = choice.get(PLACEMENT_DIM) or own_placement or self.placements[0]
        return Context(text=text, placement=placement)  # type: ignore[arg-type]

    def candidate(self, choice: Mapping[str, str]) -> Candidate:
        """:meth:`render` plus the stable candidate id."""
        ordered = {k: choice[k] for k in self.dimensions() if k in choice}
        context = self.render(choice)
        return Candidate(id=candidate_id(ordered, context), context=context, choice=ordered)

    def enumerate(
        self, *, limit: int | None = DEFAULT_ENUMERATE_LIMIT, unique: bool = False
    ) -> list[Candidate]:
        """Every candidate of the space, in a fixed order (brute force, exhaustive scoring).

        Args:
            limit: refuse spaces larger than this; None lists any size.
            unique: keep only the first candidate of each distinct (text, placement).

        Raises:
            SearchSpaceError: the space has more than ``limit`` choices.
        """
        if limit is not None and self.size > limit:
            raise SearchSpaceError(
                f"{self.source}: `size` must be <= limit={limit} to enumerate, got {self.size}: "
                "sample it with GrammarProposer instead, or pass limit=None"
            )
        dims = self.dimensions()
        out: list[Candidate] = []
        seen: set[tuple[str, str]] = set()
        for values in itertools.product(*dims.values()):
            cand = self.candidate(dict(zip(dims, values, strict=True)))
            key = (cand.context.text, cand.context.placement)
            if unique and key in seen:
                continue
            seen.add(key)
            out.append(cand)
        return out

    def digest(self) -> str:
        """A stable hash of the space's content (provenance; ignores ``source``)."""
        blob = json.dumps(
            {
                "name": self.name,
                "placements": self.placements,
                "template": self.template,
                "slots": [[s.name, [[o.id, o.text] for o in s.options]] for s in self.slots],
                "candidates": [[c.id, c.text, c.placement] for c in self.candidates],
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
