"""atomic_write_text: the whole text or the old file, no temporary left behind."""

from __future__ import annotations

import pytest

from flipsearch.atomic import atomic_write_text


def test_writes_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b.json"
    assert atomic_write_text(path, "one\n") == path
    assert atomic_write_text(path, "twø\n") == path
    assert path.read_text(encoding="utf-8") == "twø\n"
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "b.txt"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["b.txt"]
