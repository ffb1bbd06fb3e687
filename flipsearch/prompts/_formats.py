"""Adapters for WildJailbreak and GPQA, and recognising their files by their columns.

- **WildJailbreak** (``allenai/wildjailbreak``): the ``train`` config's columns are
  ``vanilla``, ``adversarial``, ``completion``, ``data_type``; the ``eval`` config's are
  ``adversarial``, ``label``, ``data_type``. ``data_type`` is one of ``vanilla_harmful``,
  ``vanilla_benign``, ``adversarial_harmful``, ``adversarial_benign``. Only the
  adversarial rows are kept (the paper's WildJailbreak sets): ``adversarial_harmful`` ->
  harmful, ``adversarial_benign`` -> benign, the prompt is the ``adversarial`` text.
- **GPQA** (``Idavidrein/gpqa``, e.g. ``gpqa_diamond.csv``): ``Question``,
  ``Correct Answer``, ``Incorrect Answer 1..3``. The four answers are shuffled with a
  seed taken from the question (the same order on every run and machine) and listed as
  ``(A)``..``(D)`` after the question; ``answer`` holds the correct letter.

A local file or an ``hf:`` dataset with these columns is read with these adapters
(:func:`detect_format`) unless a column mapping is given.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from flipsearch.errors import PromptSetError
from flipsearch.prompts._files import Record, rows_from_records
from flipsearch.prompts._types import PromptRow

__all__ = [
    "GPQA_CHOICES",
    "WILDJAILBREAK_TYPES",
    "detect_format",
    "gpqa_rows",
    "wildjailbreak_rows",
]

WILDJAILBREAK_TYPES = {"adversarial_harmful": "harmful", "adversarial_benign": "benign"}
"""WildJailbreak ``data_type`` values kept -> prompt type."""
_WILDJAILBREAK_ALL = (*WILDJAILBREAK_TYPES, "vanilla_harmful", "vanilla_benign")

GPQA_CHOICES = ("A", "B", "C", "D")
_GPQA_ANSWERS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def wildjailbreak_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """WildJailbreak's adversarial rows (module docstring); ids ``wildjailbreak-<row>``.

    Raises:
        PromptSetError: a missing column, an unknown ``data_type``, or no adversarial row.
    """
    for col in ("adversarial", "data_type"):
        if col not in columns:
            raise PromptSetError(
                f"`{where}` must have the WildJailbreak column {col!r}, got {list(columns)!r}"
            )
    kept: list[Record] = []
    for i, rec in enumerate(records):
        data_type = str(rec.get("data_type", "")).strip()
        if data_type not in _WILDJAILBREAK_ALL:
            raise PromptSetError(
                f"`data_type` must be one of {list(_WILDJAILBREAK_ALL)} in {where} row {i}, "
                f"got {data_type!r}"
            )
        if data_type in WILDJAILBREAK_TYPES:
            kept.append({"id": f"wildjailbreak-{i}", **rec, "type": WILDJAILBREAK_TYPES[data_type]})
    if not kept:
        raise PromptSetError(
            f"`{where}` must hold adversarial rows (data_type {list(WILDJAILBREAK_TYPES)}), got "
            "none: only the adversarial prompts are WildJailbreak's evaluation sets"
        )
    return rows_from_records(
        kept,
        [*columns, "id", "type"],
        where=where,
        source="wildjailbreak",
        prompt_column="adversarial",
        type_column="type",
        category_column="data_type",
        id_column="id",
    )


def gpqa_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """GPQA multiple choice (module docstring): benign rows, ``answer`` = the correct letter.

    Raises:
        PromptSetError: a missing column or an empty answer.
    """
    for col in ("Question", *_GPQA_ANSWERS):
        if col not in columns:
            raise PromptSetError(
                f"`{where}` must have the GPQA column {col!r}, got {list(columns)!r}"
            )
    id_col = "Record ID" if "Record ID" in columns else None
    cat_col = next((c for c in ("Subdomain", "High-level domain") if c in columns), None)
    shaped: list[Record] = []
    for i, rec in enumerate(records):
        answers = [str(rec.get(c) or "").strip() for c in _GPQA_ANSWERS]
        if not all(answers):
            empty = _GPQA_ANSWERS[answers.index("")]
            raise PromptSetError(f"`{empty}` must not be empty in {where} row {i}")
        question = str(rec.get("Question") or "").strip()
        order = list(range(4))
        random.Random(_seed(question)).shuffle(order)
        options = "\n".join(f"({GPQA_CHOICES[j]}) {answers[k]}" for j, k in enumerate(order))
        shaped.append(
            {
                **rec,
                "prompt": f"{question}\n\n{options}" if question else "",
                "answer": GPQA_CHOICES[order.index(0)],
            }
        )
    return rows_from_records(
        shaped,
        [*columns, "prompt", "answer"],
        where=where,
        source="gpqa",
        type="benign",
        category_column=cat_col,
        id_column=id_col,
        answer_column="answer",
    )


def _seed(text: str) -> int:
    # A seed every platform and Python version derives the same way (hash() is salted).
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def detect_format(columns: Sequence[str]) -> str | None:
    """``wildjailbreak`` or ``gpqa`` when a table has that dataset's columns, else None.

    Example:
        >>> detect_format(["adversarial", "label", "data_type"]), detect_format(["prompt"])
        ('wildjailbreak', None)
    """
    cols = set(columns)
    if {"adversarial", "data_type"} <= cols:
        return "wildjailbreak"
    if {"Question", *_GPQA_ANSWERS} <= cols:
        return "gpqa"
    return None


FORMAT_ADAPTERS = {"wildjailbreak": wildjailbreak_rows, "gpqa": gpqa_rows}
"""Recognised format -> its adapter."""
