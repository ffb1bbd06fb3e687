"""iter_jsonl_objects: objects with their line numbers; bad lines name file and line.
read_jsonl_log: our append-only logs, with a torn last line (a killed writer) skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from flipsearch.errors import JudgeError, PromptSetError
from flipsearch.jsonl import JsonlLog, iter_jsonl_objects, read_jsonl_log


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


# ---------------------------------------------------------------- tolerant log reader


def test_log_reader_skips_a_torn_last_line_and_reports_where_records_end(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n{"a": 3, "b')
    log = read_jsonl_log(path, error=ValueError)
    assert log.rows == [{"a": 1}, {"a": 2}]
    assert log.good_bytes == len(b'{"a": 1}\n\n{"a": 2}\n')
    assert "log.jsonl: ignoring a torn last line (11 bytes)" in caplog.text


@pytest.mark.parametrize(
    ("keep", "rows", "good"), [(True, [{"a": 1}, {"a": 2}], 17), (False, [{"a": 1}], 9)]
)
def test_log_reader_keeps_a_complete_unterminated_record_only_when_asked(
    tmp_path, keep, rows, good
):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    log = read_jsonl_log(path, keep_unterminated=keep)
    assert (log.rows, log.good_bytes) == (rows, good)


def test_log_reader_counts_a_blank_unterminated_tail_as_complete(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n  ')
    assert read_jsonl_log(path) == JsonlLog([{"a": 1}], 11)


@pytest.mark.parametrize("bad", [b"not json", b"[1, 2]"])
def test_log_reader_torn_middle_line_raises_the_callers_error(tmp_path, bad):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n' + bad + b'\n{"a": 2}\n')
    with pytest.raises(PromptSetError, match=r"log.jsonl` line 2 must be a JSON object, got "):
        read_jsonl_log(path, error=PromptSetError)


def test_log_reader_without_an_error_class_warns_and_skips_a_torn_middle_line(tmp_path, caplog):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n[3]\n{"a": 2}\n')
    log = read_jsonl_log(path)
    assert log.rows == [{"a": 1}, {"a": 2}]
    assert log.good_bytes == path.stat().st_size
    assert "line 2 must be a JSON object" in caplog.text
    assert "line 3 must be a JSON object, got [3]" in caplog.text


def test_log_reader_conversion_failures_are_bad_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"n": 1}\n{"m": 2}')

    def convert(obj: dict) -> int:
        return obj["n"]

    log = read_jsonl_log(path, error=ValueError, convert=convert, what="a counter")
    assert log.rows == [1]  # the last line converts badly: torn, skipped
    path.write_bytes(b'{"m": 2}\n{"n": 1}\n')
    with pytest.raises(
        ValueError, match=r"line 1 must be a counter, got b'\{\"m\": 2\}': KeyError"
    ):
        read_jsonl_log(path, error=ValueError, convert=convert, what="a counter")


def test_log_reader_reads_a_missing_file_as_empty(tmp_path):
    assert read_jsonl_log(tmp_path / "missing.jsonl", error=ValueError) == JsonlLog([], 0)


_KILLED_WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for i in range(3):
    os.write(fd, b'{"i": %d}\\n' % i)
os.write(fd, b'{"i": 3, "text": "half of a rec')  # the rest never comes
os.fsync(fd)
print("ready", flush=True)
time.sleep(60)
"""


def test_log_reader_recovers_the_file_of_a_writer_killed_mid_record(tmp_path):
    path = tmp_path / "log.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    log = read_jsonl_log(path, error=ValueError)
    assert log.rows == [{"i": 0}, {"i": 1}, {"i": 2}]
    with open(path, "r+b") as f:  # what an appender does before its next record
        f.truncate(log.good_bytes)
        f.seek(0, os.SEEK_END)
        f.write(b'{"i": 4}\n')
    assert [r["i"] for r in read_jsonl_log(path, error=ValueError).rows] == [0, 1, 2, 4]
