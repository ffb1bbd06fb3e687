"""Prompt sets: built-in sets, public benchmarks, local files and hub datasets.

One entry point, :func:`load_prompt_set`, takes a spec:

- a built-in name: ``harmful_core``, ``benign_lookalike``, ``benign_plain``, ``benign``
  (lookalike + plain), written for this project (see ``prompts/data/README.md``);
- a public benchmark name: ``advbench``, ``harmbench``, ``strongreject``, ``xstest``,
  ``gsm8k``, ``math500``, ``wildjailbreak``, ``gpqa_diamond``, read from the shared data
  folder (``$FLIPSEARCH_SHARED_DATA``, default ``<repo>/../shared/data``) or, where
  that file is absent, from the hub copy;
- a local ``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet`` file, with a column mapping
  (``prompt_column=``, ``type=`` or ``type_column=``, ...); a ``type`` or ``label``
  column is used by default, so a SafeChain-style ``{"prompt", "label"}`` JSONL loads as is;
- ``hf:owner/name[:config][@split]``, through ``datasets.load_dataset``.

A file or ``hf:`` dataset with WildJailbreak's or GPQA's columns is read by that
dataset's adapter (:mod:`flipsearch.prompts._formats`) unless a column mapping is given.

Any name may end in ``:search``, ``:train`` or ``:eval`` to take that disjoint split
(a stable hash of the normalised prompt; default fractions 0.4/0.3/0.3).

Example:
    >>> ps = load_prompt_set("harmful_core:search")
    >>> ps.name, len(ps) == len(ps.harmful())
    ('harmful_core:search', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from flipsearch.checks import check_choice
from flipsearch.errors import PromptSetError
from flipsearch.prompts._files import (
    FILE_SUFFIXES,
    Record,
    load_prompt_file,
    nonempty,
    read_records,
    rows_from_records,
)
from flipsearch.prompts._formats import FORMAT_ADAPTERS, detect_format
from flipsearch.prompts._hub import HubSpec, read_hub_records
from flipsearch.prompts._sources import SOURCES, labelled_rows, shared_data_dir, source_rows
from flipsearch.prompts._split import (
    DEFAULT_FRACTIONS,
    SPLITS,
    check_fractions,
    split_of,
    split_prompt_set,
)
from flipsearch.prompts._types import (
    PROMPT_TYPES,
    PromptRow,
    PromptSet,
    normalize_prompt,
    normalize_type,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "PROMPT_TYPES",
    "SPLITS",
    "PromptRow",
    "PromptSet",
    "PromptSetConfig",
    "known_prompt_sets",
    "load_labelled_jsonl",
    "load_prompt_file",
    "load_prompt_set",
    "normalize_prompt",
    "normalize_type",
    "shared_data_dir",
    "split_of",
    "split_prompt_set",
]


def known_prompt_sets() -> dict[str, str]:
    """Built-in and benchmark names with a one-line description."""
    return {name: s.description for name, s in SOURCES.items()}


def load_prompt_set(
    spec: str,
    *,
    split: str | None = None,
    limit: int | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    prompt_column: str | None = None,
    type: str | None = None,
    type_column: str | None = None,
    category_column: str | None = None,
    id_column: str | None = None,
    answer_column: str | None = None,
) -> PromptSet:
    """Load a prompt set by name, file path or ``hf:`` spec (see the module docstring).

    Example:
        >>> len(load_prompt_set("benign")) == 80
        True

    Args:
        spec: a known name (optionally ``name:split``), a file path, or ``hf:...``.
        split: ``search``/``train``/``eval``; the same as a ``:split`` suffix.
        limit: keep the first ``limit`` rows (after splitting).
        fractions: split fractions for (search, train, eval).
        prompt_column, type, type_column, category_column, id_column, answer_column:
            column mapping for files and ``hf:`` specs (ignored for known names).

    Raises:
        PromptSetError: unknown name (the message lists the known ones), missing file or
            column, bad type value, unreachable hub, or an empty result.
        ConfigError: unknown split or bad fractions.
    """
    name, split = _split_suffix(spec, split)
    mapping = {
        "prompt_column": prompt_column,
        "type": type,
        "type_column": type_column,
        "category_column": category_column,
        "id_column": id_column,
        "answer_column": answer_column,
    }
    if name.startswith("hf:"):
        hub = HubSpec.parse(name)
        records, columns = read_hub_records(hub)
        rows = _known_format_rows(records, columns, str(hub), mapping) or rows_from_records(
            records, columns, where=str(hub), source=hub.repo, **_default_mapping(mapping, columns)
        )
        ps = PromptSet(str(hub), tuple(rows))
    elif name in SOURCES:
        ps = PromptSet(name, tuple(source_rows(name, SOURCES[name])))
    elif Path(name).suffix.lower() in FILE_SUFFIXES or Path(name).is_file():
        records, columns = read_records(name)
        if not records:
            raise PromptSetError(
                f"prompt file `{name}` must have at least one row, got 0: write one row per "
                "prompt (JSONL: one object with `prompt` and `type` per line)"
            )
        rows = _known_format_rows(records, columns, name, mapping) or rows_from_records(
            records,
            columns,
            where=name,
            source=Path(name).stem,
            **_default_mapping(mapping, columns),
        )
        ps = PromptSet(name, tuple(rows))
    else:
        raise PromptSetError(
            f"`spec` must be a known prompt set, a {'/'.join(FILE_SUFFIXES)} file or "
            f"'hf:owner/name', got {spec!r}; known sets: {sorted(SOURCES)}"
        )
    nonempty(ps, spec)
    if split is not None:
        ps = nonempty(split_prompt_set(ps, split, fractions=check_fractions(fractions)), spec)
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise PromptSetError(f"`limit` must be an integer >= 1, got {limit!r}")
        ps = PromptSet(ps.name, ps.rows[:limit])
    return ps


def _split_suffix(spec: str, split: str | None) -> tuple[str, str | None]:
    # "harmful_core:search" -> ("harmful_core", "search"); hf: specs use ':' for configs.
    head, sep, tail = spec.rpartition(":")
    if sep and tail in SPLITS and not spec.startswith("hf:"):
        if split is not None and split != tail:
            raise PromptSetError(
                f"`split` must agree with the spec's suffix {tail!r}, got {split!r} ({spec!r})"
            )
        return head, tail
    return spec, split


def _known_format_rows(
    records: list[Record], columns: list[str], where: str, mapping: dict[str, str | None]
) -> list[PromptRow] | None:
    # WildJailbreak / GPQA columns and no explicit mapping: that dataset's adapter.
    fmt = detect_format(columns)
    if fmt is None or any(v is not None for v in mapping.values()):
        return None
    return FORMAT_ADAPTERS[fmt](records, columns, where)


def _default_mapping(mapping: dict[str, str | None], columns: Sequence[str]) -> dict:
    # Unset prompt/type/id columns default to "prompt", a "type" or "label" column, and "id".
    out = {k: v for k, v in mapping.items() if v is not None}
    out.setdefault("prompt_column", "prompt")
    if "id_column" not in out and "id" in columns:
        out["id_column"] = "id"  # a file's own ids (must be unique) name its rows
    if "type" not in out and "type_column" not in out:
        col = next((c for c in ("type", "label") if c in columns), None)
        if col is None:
            raise PromptSetError(
                f"`type` or `type_column` must be given: no 'type' or 'label' column in "
                f"{list(columns)!r}"
            )
        out["type_column"] = col
    return out


def load_labelled_jsonl(path: str | Path, *, name: str | None = None) -> PromptSet:
    """A SafeChain-style labelled file: ``prompt`` (or ``instruction``) + ``label`` per row.

    Labels ``harmful``/``unsafe``/``1``/``true`` are harmful, ``benign``/``safe``/``0``/``false``
    benign; ``category`` and ``id`` are used when present.

    Raises:
        PromptSetError: missing file or column, bad label, no rows.
    """
    records, columns = read_records(path)
    rows = labelled_rows(records, columns, str(path))
    return nonempty(PromptSet(name or str(path), tuple(rows)), str(path))


@dataclass(frozen=True)
class PromptSetConfig:
    """A JSON-serialisable recipe for a prompt set; ``build()`` loads it.

    Example:
        >>> PromptSetConfig("harmful_core", split="eval").build().name
        'harmful_core:eval'
    """

    spec: str
    """Name, file path or ``hf:`` spec (see :func:`load_prompt_set`)."""
    split: str | None = None
    """``search``/``train``/``eval`` or None for all rows."""
    limit: int | None = None
    """First ``limit`` rows after splitting; None keeps all."""
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    """Split fractions for (search, train, eval)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", check_fractions(self.fractions))
        check_choice("split", self.split, SPLITS, optional=True)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def build(self) -> PromptSet:
        return load_prompt_set(
            self.spec, split=self.split, limit=self.limit, fractions=self.fractions
        )
