"""Search spaces of privileged contexts, read from YAML as data only.

A space is either a *grammar* (slots of options joined by a template; the paper's
five axes, arXiv 2605.15239, become slots) or a *list* of hand-written candidates.
Files are parsed with ``yaml.safe_load`` and rendered by a tiny renderer that only
substitutes ``{slot}`` names, so a space file can never run code. The grammar is
documented in ``flipsearch/search_spaces/README.md``. The built-in spaces ship inside the
package and are read through :mod:`importlib.resources`, so a bare name (``"paper_axes"``)
works from any folder once the package is installed.

Example:
    >>> space = SearchSpace.from_dict({
    ...     "name": "demo",
    ...     "slots": {
    ...         "strength": [{"id": "should", "text": "You should refuse"},
    ...                      {"id": "must", "text": "You must refuse"}],
    ...         "scope": [{"id": "harm", "text": "harmful requests."}],
    ...         "cue": ["", "First decide whether the request is harmful."],
    ...     },
    ...     "template": "{strength} {scope} {cue}",
    ... })
    >>> space.size, space.dimensions()["cue"]
    (4, ['none', 'first-decide-whether-the-2dc040'])
    >>> space.render({"strength": "must", "scope": "harm", "cue": "none"}).text
    'You must refuse harmful requests.'
    >>> space.enumerate()[0].id
    'strength=should|scope=harm|cue=none@85e51902'
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flipsearch.contexts import PLACEMENTS, Context
from flipsearch.errors import SearchSpaceError

if TYPE_CHECKING:
    from importlib.abc import Traversable  # importlib.resources.abc from Python 3.11

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENUMERATE_LIMIT",
    "SEARCH_SPACES_DIR",
    "BuiltinSpace",
    "Candidate",
    "Option",
    "SearchSpace",
    "Slot",
    "builtin_spaces",
    "candidate_id",
    "load_search_space",
    "normalise_whitespace",
]

SEARCH_SPACES_DIR: Traversable = resources.files("flipsearch") / "search_spaces"
"""The built-in spaces, package data of ``flipsearch`` (bare names resolve here)."""

DEFAULT_ENUMERATE_LIMIT = 10_000
"""Largest space :meth:`SearchSpace.enumerate` lists unless told otherwise."""

PLACEMENT_DIM = "placement"
CANDIDATE_DIM = "candidate"
_RESERVED = (PLACEMENT_DIM, CANDIDATE_DIM)
_TOP_KEYS = ("name", "description", "placement", "slots", "template", "candidates")
_SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Ids go into candidate ids as "slot=id|slot=id@hash", so these separators are banned.
_OPTION_ID = re.compile(r"[A-Za-z0-9_.:+-]+")
# "{{" and "}}" are literal braces; "{name}" a placeholder; any other brace is an error.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


# ---------------------------------------------------------------- value types


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


def _derived_option_id(text: str) -> str:
    # A readable slug of the first words plus a hash of the whole text: stable while
    # the text is unchanged, and unique even when two options start alike.
    if not text.strip():
        return "none"
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24].rstrip("-")
    return f"{slug or 'opt'}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


# ---------------------------------------------------------------- the space


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
        return _Parser(source).space(d)

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
            text = normalise_whitespace(_substitute(self.template or "", texts))
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


@dataclass(frozen=True)
class BuiltinSpace:
    """A space file shipped inside the package (``flipsearch spaces`` lists them)."""

    name: str
    resource: str
    """Its path inside the installed package, e.g. ``flipsearch/search_spaces/benign.yaml``."""
    ref: Traversable = field(repr=False)

    def load(self) -> SearchSpace:
        return SearchSpace.from_text(self.ref.read_text(encoding="utf-8"), source=str(self.ref))


def builtin_spaces() -> dict[str, BuiltinSpace]:
    """The built-in spaces by bare name, sorted (read through :mod:`importlib.resources`)."""
    if not SEARCH_SPACES_DIR.is_dir():  # a broken install: lookups then list no built-ins
        return {}
    refs = sorted(
        (r for r in SEARCH_SPACES_DIR.iterdir() if r.name.endswith(".yaml") and r.is_file()),
        key=lambda r: r.name,
    )
    return {
        r.name.removesuffix(".yaml"): BuiltinSpace(
            r.name.removesuffix(".yaml"), f"flipsearch/search_spaces/{r.name}", r
        )
        for r in refs
    }


def load_search_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space from a path, or a bare name of a built-in space (``"paper_axes"``).

    A name without a folder or suffix that is not an existing file resolves to the
    package's ``search_spaces/<name>.yaml``; anything else is read as a path.

    Raises:
        SearchSpaceError: no such file or built-in name, or the file is malformed.
    """
    path = Path(name_or_path)
    if not path.exists() and path.suffix == "" and path.parent == Path("."):
        builtins = builtin_spaces()
        if str(name_or_path) not in builtins:
            close = difflib.get_close_matches(str(name_or_path), list(builtins), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SearchSpaceError(
                f"`space` must be a search-space file or a built-in name {sorted(builtins)}, "
                f"got {str(name_or_path)!r}: no such file and no such built-in space "
                f"(`flipsearch spaces` lists them).{hint}"
            )
        return builtins[str(name_or_path)].load()
    return SearchSpace.from_yaml(path)


# ---------------------------------------------------------------- template renderer


def _placeholders(template: str) -> list[str | None]:
    # Placeholder names in order; None marks a stray brace.
    out: list[str | None] = []
    for m in _TOKEN.finditer(template):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            continue
        out.append(m.group(1) if m.group(1) is not None else None)
    return out


def _substitute(template: str, texts: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        return texts[m.group(1)]

    return _TOKEN.sub(repl, template)


# ---------------------------------------------------------------- validation


class _Parser:
    """Validates a parsed YAML document; every error names the source and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, msg: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.source}: {msg}")

    def space(self, d: object) -> SearchSpace:
        if not isinstance(d, dict):
            raise self.fail(
                f"the document must be a mapping with `slots` or `candidates`, got {d!r}"
            )
        for key in d:
            if key not in _TOP_KEYS:
                close = difflib.get_close_matches(str(key), _TOP_KEYS, n=1)
                hint = f". Did you mean {close[0]!r}?" if close else ""
                raise self.fail(
                    f"top-level keys must be among {_TOP_KEYS}, got unknown key {key!r}{hint}"
                )
        name = d.get("name", Path(self.source).stem if self.source != "<dict>" else "space")
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f"`name` must be a non-empty string, got {name!r}")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise self.fail(f"`description` must be a string, got {description!r}")
        placements = self.placements(d.get("placement", "system"))

        has_slots, has_cands = "slots" in d, "candidates" in d
        if has_slots == has_cands:
            got = "both" if has_slots else "neither"
            raise self.fail(
                f"the document must have exactly one of `slots` (grammar) or `candidates` "
                f"(list), got {got}"
            )
        common: dict[str, Any] = {
            "name": name,
            "description": description.strip(),
            "placements": placements,
            "source": self.source,
        }
        if has_cands:
            if "template" in d:
                raise self.fail(
                    "`template` must only be given with `slots`, got it with `candidates`"
                )
            cands = self.candidates(d["candidates"], placements)
            return SearchSpace(candidates=cands, **common)
        slots = self.slots(d["slots"])
        template = self.template(d.get("template"), slots)
        return SearchSpace(slots=slots, template=template, **common)

    def placements(self, p: object) -> tuple[str, ...]:
        items = p if isinstance(p, list) else [p]
        if not items:
            raise self.fail(f"`placement` must be a placement or a non-empty list, got {p!r}")
        for item in items:
            if item not in PLACEMENTS:
                raise self.fail(f"`placement` must be one of {PLACEMENTS} (or a list), got {p!r}")
        if len(set(items)) != len(items):
            raise self.fail(f"`placement` must list each placement once, got {p!r}")
        return tuple(items)

    def option(self, where: str, raw: object, *, allow_placement: bool) -> Option:
        if isinstance(raw, str):
            return Option(id=_derived_option_id(raw), text=raw)
        if not isinstance(raw, dict):
            raise self.fail(
                f"`{where}` must be a string or a mapping with `id` and `text`, got {raw!r}"
                + (': write "" for an empty option' if raw is None else "")
            )
        allowed = ("id", "text", "placement") if allow_placement else ("id", "text")
        extra = [k for k in raw if k not in allowed]
        if extra:
            raise self.fail(f"`{where}` keys must be among {allowed}, got unknown {extra!r}")
        if "text" not in raw or not isinstance(raw["text"], str):
            raise self.fail(f"`{where}.text` must be a string, got {raw.get('text')!r}")
        oid = raw.get("id", _derived_option_id(raw["text"]))
        if not isinstance(oid, str) or not _OPTION_ID.fullmatch(oid):
            raise self.fail(
                f"`{where}.id` must be a string of letters, digits and `_.:+-`, got {oid!r}"
            )
        placement = raw.get("placement")
        if placement is not None and placement not in PLACEMENTS:
            raise self.fail(f"`{where}.placement` must be one of {PLACEMENTS}, got {placement!r}")
        return Option(id=oid, text=raw["text"], placement=placement)

    def unique(self, where: str, options: list[Option]) -> None:
        ids = [o.id for o in options]
        dup_ids = sorted({i for i in ids if ids.count(i) > 1})
        if dup_ids:
            raise self.fail(f"`{where}` option ids must be unique, got duplicates {dup_ids!r}")
        # The same text at two placements is two contexts (placement is searched too).
        texts = [(normalise_whitespace(o.text), o.placement) for o in options]
        dup_texts = sorted({t for t, _ in texts if texts.count((t, _)) > 1})
        if dup_texts:
            raise self.fail(f"`{where}` option texts must be unique, got duplicates {dup_texts!r}")

    def slots(self, raw: object) -> tuple[Slot, ...]:
        if not isinstance(raw, dict) or not raw:
            raise self.fail(
                f"`slots` must be a non-empty mapping of slot name -> options, got {raw!r}"
            )
        slots = []
        for name, options in raw.items():
            if not isinstance(name, str) or not _SLOT_NAME.fullmatch(name):
                raise self.fail(f"slot names must be identifiers, got {name!r}")
            if name in _RESERVED:
                raise self.fail(
                    f"slot names must not be one of {_RESERVED} (reserved), got {name!r}"
                )
            if not isinstance(options, list):
                raise self.fail(f"`slots.{name}` must be a list of options, got {options!r}")
            if not options:
                raise self.fail(f"`slots.{name}` must have at least one option, got []")
            opts = [
                self.option(f"slots.{name}[{i}]", o, allow_placement=False)
                for i, o in enumerate(options)
            ]
            self.unique(f"slots.{name}", opts)
            slots.append(Slot(name=name, options=tuple(opts)))
        return tuple(slots)

    def template(self, raw: object, slots: tuple[Slot, ...]) -> str:
        if raw is None:
            raise self.fail("`template` must be given with `slots`, e.g. '{framing} {strength}'")
        if not isinstance(raw, str):
            raise self.fail(f"`template` must be a string, got {raw!r}")
        names = {s.name for s in slots}
        used = _placeholders(raw)
        for p in used:
            if p is None:
                raise self.fail(
                    f"`template` must use braces only as `{{slot}}` (or `{{{{`/`}}}}` for a "
                    f"literal brace), got a stray brace in {raw!r}"
                )
            if p not in names:
                raise self.fail(
                    f"`template` must only name declared slots {sorted(names)}, "
                    f"got unknown slot {{{p}}}"
                )
        unused = [s.name for s in slots if s.name not in used]
        if unused:
            raise self.fail(
                f"every slot must appear in `template`, got unused slot(s) {unused}: an unused "
                "slot multiplies the space without changing the text"
            )
        literal = _TOKEN.sub("", raw)
        if not literal.strip() and all(any(not o.text.strip() for o in s.options) for s in slots):
            raise self.fail(
                "`template` must not be able to render an empty context, got every slot "
                "with an empty option and no literal text"
            )
        return raw

    def candidates(self, raw: object, placements: tuple[str, ...]) -> tuple[Option, ...]:
        if not isinstance(raw, list):
            raise self.fail(f"`candidates` must be a list, got {raw!r}")
        if not raw:
            raise self.fail("`candidates` must have at least one candidate, got []")
        cands = []
        for i, c in enumerate(raw):
            opt = self.option(f"candidates[{i}]", c, allow_placement=True)
            if not opt.text.strip():
                raise self.fail(f"`candidates[{i}].text` must be non-empty, got {opt.text!r}")
            if opt.placement is not None and len(placements) > 1:
                raise self.fail(
                    f"`candidates[{i}].placement` must not be set when the top-level "
                    f"`placement` is searched over, got {opt.placement!r}"
                )
            cands.append(
                Option(id=opt.id, text=normalise_whitespace(opt.text), placement=opt.placement)
            )
        self.unique("candidates", cands)
        return tuple(cands)
