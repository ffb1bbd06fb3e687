"""Judge a JSONL file of (prompt, response) rows into a JSONL file of verdicts."""

from __future__ import annotations

import json
from pathlib import Path

from flipsearch.atomic import atomic_write_text
from flipsearch.errors import JudgeError
from flipsearch.jsonl import iter_jsonl_objects
from flipsearch.judges._base import Judge

_FIELDS = ("prompt", "response")


def read_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """Prompts and responses from a JSONL file with ``prompt`` and ``response`` per line.

    Raises:
        JudgeError: missing file, a line that is not a JSON object, or a row lacking a
            string ``prompt``/``response`` (the message names the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise JudgeError(f"`input_path` must be an existing JSONL file, got {str(path)!r}")
    prompts: list[str] = []
    responses: list[str] = []
    for lineno, row in iter_jsonl_objects(path, JudgeError):
        for field in _FIELDS:
            if not isinstance(row.get(field), str):
                raise JudgeError(
                    f"`{path}` line {lineno} must have a string `{field}` field, got "
                    f"{row.get(field)!r} (fields: {sorted(row)!r})"
                )
        prompts.append(row["prompt"])
        responses.append(row["response"])
    if not prompts:
        raise JudgeError(
            f"`input_path` must hold at least one JSONL row with `prompt` and `response`, got "
            f"an empty file {str(path)!r}: nothing was judged and no output was written"
        )
    return prompts, responses


def judge_file(input_path: str | Path, out_path: str | Path, judge: Judge) -> int:
    """Judge every row of ``input_path``; write one verdict row per input row, same order.

    Each output row has ``refusal``, ``unsafe``, ``outcome``, ``raw``, ``judge`` and
    ``categories`` (see :meth:`flipsearch.types.Verdict.to_dict`). The file is written
    to a temporary name and renamed, so a crash never leaves half a file.

    Example:
        >>> judge_file("gens.jsonl", "verdicts.jsonl", make_judge("refusal"))  # doctest: +SKIP
        120

    Returns:
        The number of rows judged.

    Raises:
        JudgeError: see :func:`read_pairs`; also if the judge returns the wrong count.
    """
    prompts, responses = read_pairs(input_path)
    verdicts = judge.judge(prompts, responses)
    if len(verdicts) != len(prompts):
        raise JudgeError(
            f"`judge` must return one verdict per row, got {len(verdicts)} for {len(prompts)}"
        )
    text = "".join(json.dumps(v.to_dict(), ensure_ascii=False) + "\n" for v in verdicts)
    atomic_write_text(out_path, text)
    return len(verdicts)
