"""Answer extraction on the real GSM8K / MATH-500 rows and on tricky formats."""

from __future__ import annotations

import json

import pytest

from flipsearch.prompts import load_prompt_set
from opsa_train.answers import (
    answers_equal,
    extract_answer,
    extract_boxed,
    extract_gsm8k,
    extract_math,
    is_correct,
    normalize_math,
    parse_number,
)
from opsa_train.errors import OpsaConfigError


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_every_gsm8k_reference_solution_extracts_to_its_answer(shared_data):
    raw = _jsonl(shared_data / "gsm8k" / "test.jsonl")
    rows = load_prompt_set("gsm8k")
    assert len(raw) == len(rows) == 1319
    for record, row in zip(raw, rows, strict=True):
        assert extract_gsm8k(record["answer"]) == row.answer, record["answer"][-80:]
        assert is_correct(record["answer"], row.answer, kind="gsm8k")


def test_every_math500_reference_solution_extracts_to_its_answer(shared_data):
    raw = _jsonl(shared_data / "math500" / "test.jsonl")
    rows = load_prompt_set("math500")
    assert len(raw) == len(rows) == 500
    for record, row in zip(raw, rows, strict=True):
        assert is_correct(record["solution"], row.answer, kind="math500"), record["unique_id"]


def test_math500_wrong_answers_are_rejected(shared_data):
    # Each solution checked against the next row's answer: almost all must be wrong.
    rows = load_prompt_set("math500")
    raw = _jsonl(shared_data / "math500" / "test.jsonl")
    hits = sum(
        is_correct(raw[i]["solution"], rows[(i + 1) % len(rows)].answer, kind="math500")
        for i in range(len(rows))
    )
    assert hits < 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{\\sqrt{2}}} done", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{1} then \\boxed{\\{1,2\\}\\cup\\{3\\}}", "\\{1,2\\}\\cup\\{3\\}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{42}", "42"),
        ("\\boxed 7$", "7"),
        ("\\boxed{12} and a truncated \\boxed{\\frac{1}{", "12"),
        ("no box here", None),
    ],
)
def test_boxed_nesting(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The total is 1,234,567 apples.", "1234567"),
        ("It dropped to -12 degrees.", "-12"),
        ("She pays $18.50 in total.", "18.50"),
        ("So the answer is 42. Then 7 more words 9", "42"),
        ("#### 70,000", "70000"),
        ("Final: \\boxed{3,600}", "3600"),
        ("nothing numeric", None),
    ],
)
def test_gsm8k_numbers_commas_negatives_dollars(text, expected):
    assert extract_gsm8k(text) == expected


@pytest.mark.parametrize(
    ("pred", "ref", "kind", "same"),
    [
        ("\\dfrac{14}{3}", "\\frac{14}{3}", "math500", True),
        ("\\frac12", "0.5", "math500", True),
        ("\\frac{-1}{2}", "-\\frac{1}{2}", "math500", True),
        ("90^\\circ", "90", "math500", True),
        ("\\text{(C)}", "(C)", "math500", True),
        ("10,\\!080", "10080", "math500", True),
        ("x=5", "5", "math500", True),
        ("\\frac{3}{4}", "\\frac{4}{3}", "math500", False),
        ("1000.0", "1,000", "gsm8k", True),
        ("-3", "3", "gsm8k", False),
    ],
)
def test_answers_equal(pred, ref, kind, same):
    assert answers_equal(pred, ref, kind=kind) is same


def test_parse_number_and_normalise():
    assert parse_number("3/4") == parse_number("\\frac{3}{4}") == parse_number("0.75")
    assert parse_number("\\frac{1}{0}") is None
    assert normalize_math("\\left( 1, 2 \\right).") == "(1,2)"


def test_math_falls_back_to_the_answer_is():
    assert extract_math("Thus the answer is 17.") == "17"


def test_unknown_kind_raises():
    with pytest.raises(OpsaConfigError, match="`kind` must be one of"):
        extract_answer("1", "aime")
