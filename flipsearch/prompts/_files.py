"""Read local CSV / JSONL / JSON / Parquet tables and map their columns onto prompt rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from flipsearch.errors import PromptSetError
from flipsearch.jsonl import iter_jsonl_objects
from flipsearch.prompts._types import CONTEXT_SEPARATOR, PromptRow, PromptSet, normalize_type

Record = Mapping[str, object]

FILE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def read_records(path: str | Path) -> tuple[list[Record], list[str]]:
    """Read a table into a list of dicts plus its column names (in file order).

    CSV and TSV cells are read as strings (no NaN guessing, so ``"None"`` stays text).

    Raises:
        PromptSetError: the file is missing, has an unknown suffix or is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"`path` must be an existing file, got {str(path)!r}: no such file")
    suffix = path.suffix.lower()
    if (
        suffix in (".csv", ".tsv", ".jsonl", ".json")
        and not path.read_text(encoding="utf-8").strip()
    ):
        raise PromptSetError(
            f"prompt file `{path}` must have at least one row, got an empty file: "
            "write one row per prompt (JSONL: one object with `prompt` and `type` per line)"
        )
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PromptSetError(
                f"prompt file `{path}` must be valid JSON (a list of objects), got {e}"
            ) from e
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise PromptSetError(
                f"`{path}` must hold a JSON list of objects, got {type(data).__name__}"
            )
        return data, _columns(data)
    if suffix in (".csv", ".tsv", ".parquet"):
        import pandas as pd

        try:
            df = (
                pd.read_parquet(path)
                if suffix == ".parquet"
                else pd.read_csv(
                    path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ","
                )
            )
        except Exception as e:  # pandas raises many types; name the file in one error
            raise PromptSetError(f"`{path}` must be a readable {suffix[1:]} file: {e}") from e
        return df.to_dict(orient="records"), [str(c) for c in df.columns]
    raise PromptSetError(f"`path` must end with one of {FILE_SUFFIXES}, got {str(path)!r}")


def _read_jsonl(path: Path) -> tuple[list[Record], list[str]]:
    records: list[Record] = [obj for _, obj in iter_jsonl_objects(path, PromptSetError)]
    return records, _columns(records)


def _columns(records: Sequence[Record]) -> list[str]:
    cols: dict[str, None] = {}
    for r in records:
        cols.update(dict.fromkeys(r))
    return list(cols)


def require_columns(columns: Sequence[str], needed: Sequence[str | None], where: str) -> None:
    """Raise a PromptSetError naming ``where`` and the first missing column, listing the others."""
    for col in needed:
        if col is not None and col not in columns:
            raise PromptSetError(
                f"`{where}` must have a column {col!r}, got columns {list(columns)!r}"
            )


def _text(value: object) -> str:
    return "" if value is None else str(value)


def rows_from_records(
    records: Sequence[Record],
    columns: Sequence[str],
    *,
    where: str,
    source: str,
    prompt_column: str = "prompt",
    type: str | None = None,
    type_column: str | None = None,
    category_column: str | None = None,
    id_column: str | None = None,
    answer_column: str | None = None,
    context_column: str | None = None,
) -> list[PromptRow]:
    """Map table records onto :class:`PromptRow` (the generic column mapping).

    Exactly one of ``type`` (the same for every row) and ``type_column`` must be given.
    Rows without an id column get ``<source>-<index>``. A non-empty context is folded
    into the prompt with HarmBench's separator and also kept in ``PromptRow.context``.

    Raises:
        PromptSetError: missing column, bad type value, empty prompt.
    """
    if (type is None) == (type_column is None):
        raise PromptSetError(
            f"exactly one of `type` and `type_column` must be given, got type={type!r}, "
            f"type_column={type_column!r}"
        )
    if not records:
        raise PromptSetError(f"`{where}` must have at least one row, got 0")
    require_columns(
        columns,
        [prompt_column, type_column, category_column, id_column, answer_column, context_column],
        where,
    )
    fixed_type = normalize_type(type, where=where) if type is not None else None
    rows = []
    first_row: dict[str, int] = {}
    for i, rec in enumerate(records):
        row_id = _text(rec.get(id_column)) if id_column else f"{source}-{i}"
        if row_id in first_row:
            raise PromptSetError(
                f"`{id_column}` must be unique in {where}, got {row_id!r} in rows "
                f"{first_row[row_id]} and {i}: give each row its own id, or drop the "
                "column to number the rows"
            )
        first_row[row_id] = i
        kind = fixed_type or normalize_type(rec.get(type_column or ""), where=f"{where} row {i}")
        prompt = _text(rec.get(prompt_column))
        context = _text(rec.get(context_column)) if context_column else ""
        if context.strip():
            prompt = context + CONTEXT_SEPARATOR + prompt
        if not prompt.strip():
            raise PromptSetError(
                f"`{prompt_column}` must be non-empty, got {prompt!r} in {where} row {i}"
            )
        rows.append(
            PromptRow(
                id=row_id,
                prompt=prompt,
                type=kind,
                category=_text(rec.get(category_column)) if category_column else "",
                source=source,
                context=context if context.strip() else None,
                answer=_text(rec.get(answer_column)) if answer_column else None,
            )
        )
    return rows


def load_prompt_file(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    type: str | None = None,
    type_column: str | None = None,
    category_column: str | None = None,
    id_column: str | None = None,
    answer_column: str | None = None,
    context_column: str | None = None,
    name: str | None = None,
) -> PromptSet:
    """Load a local CSV/JSONL/JSON/Parquet file as a prompt set through a column mapping.

    Example:
        >>> ps = load_prompt_file("my.csv", prompt_column="goal", type="harmful")  # doctest: +SKIP

    Args:
        path: the file; its suffix picks the reader.
        prompt_column: the column holding the prompt text.
        type: ``harmful``/``benign`` for every row; or give ``type_column`` instead
            (values ``harmful``/``unsafe``/``1`` or ``benign``/``safe``/``0``).
        category_column, id_column, answer_column, context_column: optional columns.
        name: the set's name; default the file path.

    Raises:
        PromptSetError: missing file or column (the message lists the columns there),
            bad type value, or no rows.
    """
    path = Path(path)
    records, columns = read_records(path)
    rows = rows_from_records(
        records,
        columns,
        where=str(path),
        source=path.stem,
        prompt_column=prompt_column,
        type=type,
        type_column=type_column,
        category_column=category_column,
        id_column=id_column,
        answer_column=answer_column,
        context_column=context_column,
    )
    return nonempty(PromptSet(name or str(path), tuple(rows)), str(path))


def nonempty(ps: PromptSet, where: str) -> PromptSet:
    """Return ``ps`` or raise a PromptSetError if it has no rows."""
    if not len(ps):
        raise PromptSetError(f"prompt set `{ps.name}` must have at least one row, got 0 ({where})")
    return ps
