"""Reading JSONL files: strictly (files users give us) or tolerantly (our own append-only logs).

- :func:`iter_jsonl_objects` reads a user's file: any bad line is an error that names
  the file and the 1-based line number.
- :func:`read_jsonl_log` reads a log we append to (fsynced line by line): a kill
  mid-write leaves at most one torn last line, which is skipped with a warning; a bad
  line before it is an error or, when the caller passes no error class, a warning. It
  also reports where the complete records end, so the next append can cut the torn
  tail off first.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "log.jsonl"
    >>> _ = path.write_text('{"step": 1}\\n{"step": 2}\\n{"ste')  # killed mid-write
    >>> log = read_jsonl_log(path, error=ValueError)
    >>> log.rows, log.good_bytes
    ([{'step': 1}, {'step': 2}], 24)
    >>> list(iter_jsonl_objects(path, ValueError))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: `...log.jsonl` line 3 must be a JSON object, got '{"ste': ...
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["JsonlLog", "iter_jsonl_objects", "read_jsonl_log"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _BadLine(Exception):
    """A line that is not what the reader wants; the message names file and line."""


def _parse_line(
    line: str | bytes, path: Path, lineno: int, what: str, convert: Callable[[dict], T]
) -> T:
    # One JSON object, then the caller's conversion; every failure becomes _BadLine.
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise _BadLine(f"`{path}` line {lineno} must be {what}, got {line[:80]!r}: {e}") from e
    if not isinstance(obj, dict):
        raise _BadLine(f"`{path}` line {lineno} must be {what}, got {obj!r}")
    try:
        return convert(obj)
    except (ValueError, KeyError, TypeError) as e:
        raise _BadLine(f"`{path}` line {lineno} must be {what}, got {line[:80]!r}: {e!r}") from e


def _as_is(obj: dict) -> dict:
    return obj


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
                yield lineno, _parse_line(line, path, lineno, "a JSON object", _as_is)
            except _BadLine as e:
                raise error(str(e)) from e.__cause__


@dataclass(frozen=True)
class JsonlLog(Generic[T]):
    """What :func:`read_jsonl_log` read."""

    rows: list[T]
    """The records, in file order (blank, torn and skipped lines left out)."""
    good_bytes: int
    """Length of the file up to the end of its last record that counts: a torn tail
    starts here, and an appender should truncate the file to this length first."""


def read_jsonl_log(
    path: str | Path,
    *,
    error: type[Exception] | None = None,
    convert: Callable[[dict], T] = _as_is,  # type: ignore[assignment]
    what: str = "a JSON object",
    keep_unterminated: bool = True,
) -> JsonlLog[T]:
    """Read an append-only JSONL log, tolerating the torn last line a kill leaves.

    The last line (the bytes after the last newline) is torn when it does not parse;
    it is skipped with a warning and left out of ``good_bytes``. A complete record
    there is kept when ``keep_unterminated`` (``good_bytes`` then counts it, so an
    appender must write a newline first), else treated as torn too. Blank lines are
    skipped. A missing file reads as empty.

    Args:
        path: the log file.
        error: raised for a bad line before the last one (the message names the file,
            the 1-based line and the line); None logs a warning and skips the line.
        convert: applied to each object; its ``ValueError``/``KeyError``/``TypeError``
            makes the line bad.
        what: what a line must be, for messages ("a pool record").
        keep_unterminated: keep a valid last line that has no newline.

    Raises:
        error: a bad line before the last one, when ``error`` is given.
    """
    path = Path(path)
    if not path.exists():
        return JsonlLog([], 0)
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows: list[T] = []
    offset = 0
    for lineno, line in enumerate(lines, start=1):
        offset += len(line) + 1
        if not line.strip():
            continue
        try:
            rows.append(_parse_line(line, path, lineno, what, convert))
        except _BadLine as e:
            if error is not None:
                raise error(str(e)) from e.__cause__
            logger.warning("skipping a bad line: %s", e)
    if not tail.strip():
        offset += len(tail)
    else:
        try:
            if not keep_unterminated:
                raise _BadLine("it has no newline at the end")
            rows.append(_parse_line(tail, path, len(lines) + 1, what, convert))
            offset += len(tail)
        except _BadLine as e:
            logger.warning("%s: ignoring a torn last line (%d bytes): %s", path, len(tail), e)
    return JsonlLog(rows, offset)
