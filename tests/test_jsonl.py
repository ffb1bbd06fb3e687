"""iter_jsonl_objects: objects with their line numbers; bad lines name file and line."""

from __future__ import annotations

import pytest

from flipsearch.errors import JudgeError, PromptSetError
from flipsearch.jsonl import iter_jsonl_objects


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"b": 2}\n', encoding="utf-8")
    assert list(iter_jsonl_objects(path, ValueError)) == [(1, {"a": 1}), (4, {"b": 2})]


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ('{"a": 1}\n{"a": \n', PromptSetError, r"rows.jsonl` line 2 must be a JSON object, got '"),
        ('{"a": 1}\n[1, 2]\n', JudgeError, r"line 2 must be a JSON object, got \[1, 2\]"),
    ],
)
def test_bad_lines_raise_the_callers_error(tmp_path, text, error, match):
    path = tmp_path / "rows.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error, match=match):
        list(iter_jsonl_objects(path, error))
