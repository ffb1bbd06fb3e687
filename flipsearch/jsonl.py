"""Reading JSONL files of objects, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

__all__ = ["iter_jsonl_objects"]


def iter_jsonl_objects(path: Path, error: type[Exception]) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of ``path``.

    Raises:
        error: a line that is not JSON, or not a JSON object (the message names
            ``path`` and the 1-based line number).
    """
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(
                    f"`{path}` line {lineno} must be a JSON object, got {line[:80]!r}: {e}"
                ) from e
            if not isinstance(obj, dict):
                raise error(f"`{path}` line {lineno} must be a JSON object, got {obj!r}")
            yield lineno, obj
