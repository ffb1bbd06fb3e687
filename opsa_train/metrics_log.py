"""Crash-safe metric logs: ``metrics.jsonl`` (the record), ``metrics.csv`` (a view).

Each step's metrics are appended to ``metrics.jsonl`` as one JSON line, flushed and
fsynced, so a kill loses at most the line being written; readers ignore a torn last
line (no trailing newline) and appenders cut it off first. ``metrics.csv`` is derived:
rows are appended while the columns stay the same, and the whole file is rewritten from
the JSONL (atomically) when a new metric key appears or the logger reopens a run.
TensorBoard and Weights & Biases are optional and imported lazily.

`append_jsonl`/`read_jsonl` are also the checkpoint index's reader and writer.

Example:
    >>> import tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> with MetricsLogger(run_dir) as log:
    ...     log.log(1, {"train/loss": 0.5, "train/kl_fwd": float("nan")})
    >>> read_metrics(run_dir)
    [{'step': 1, 'train/loss': 0.5, 'train/kl_fwd': None}]
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from flipsearch.jsonl import read_jsonl_log

logger = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


# --------------------------------------------------------------------------------------
# Append-only JSONL


def _plain(value: object) -> object:
    # Tensors/numpy scalars -> Python numbers; NaN/inf -> None (strict JSON has neither).
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _drop_torn_tail(f: IO[bytes]) -> None:
    # Truncate the file after its last newline: a line without one was torn by a kill.
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    pos = end
    while pos > 0:
        start = max(0, pos - 65536)
        f.seek(start)
        block = f.read(pos - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            pos = start + newline + 1
            break
        pos = start
    logger.warning("dropping a torn last line (%d bytes) from %s", end - pos, f.name)
    f.truncate(pos)
    f.seek(pos)


def append_jsonl(path: str | Path, row: Mapping[str, object]) -> None:
    """Append ``row`` as one JSON line, flushed and fsynced; a torn last line is cut first.

    Non-finite floats are written as ``null``; tensor and numpy scalars as numbers.
    """
    line = (json.dumps(_plain(row), allow_nan=False, ensure_ascii=False) + "\n").encode()
    mode = "r+b" if Path(path).exists() else "w+b"
    with open(path, mode) as f:
        _drop_torn_tail(f)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a missing file gives []. A last line without a trailing
    newline (torn by a kill) is ignored; a malformed line elsewhere is skipped with a
    warning (see :func:`flipsearch.jsonl.read_jsonl_log`)."""
    return read_jsonl_log(path, keep_unterminated=False).rows


# --------------------------------------------------------------------------------------
# Metrics logger


def read_metrics(run_dir: str | Path, *, last_per_step: bool = False) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` in order.

    After a resume, the steps between the last checkpoint and the crash are logged
    twice; ``last_per_step=True`` keeps only the latest row of each step, in step order.
    """
    rows = read_jsonl(Path(run_dir) / METRICS_JSONL)
    if not last_per_step:
        return rows
    by_step: dict[object, dict[str, Any]] = {}
    for row in rows:
        by_step[row.get("step")] = row
    return sorted(by_step.values(), key=lambda r: (r.get("step") is None, r.get("step")))


class MetricsLogger:
    """Append one row of metrics per logged step to ``metrics.jsonl`` and ``metrics.csv``.

    Args:
        run_dir: the run folder (created if missing); reopening it appends.
        tensorboard: also write events to ``run_dir/tensorboard`` (needs ``tensorboard``;
            warns and continues without it if missing).
        wandb: also log to Weights & Biases (raises ImportError if it is missing).
        wandb_project: W&B project; None uses W&B's default.
        config: the run's config, given to W&B.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str | None = None,
        config: Mapping[str, object] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / METRICS_JSONL
        self.csv_path = self.run_dir / METRICS_CSV
        self._jsonl = open(self.jsonl_path, "r+b" if self.jsonl_path.exists() else "w+b")  # noqa: SIM115
        _drop_torn_tail(self._jsonl)
        # The CSV may be torn or stale after a crash: rebuild it from the JSONL.
        rows = read_jsonl(self.jsonl_path)
        self._columns = _columns(rows)
        self._rewrite_csv(rows)
        self._csv = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._tb = _open_tensorboard(self.run_dir) if tensorboard else None
        self._wandb = _open_wandb(self.run_dir, wandb_project, config) if wandb else None

    def log(self, step: int, metrics: Mapping[str, object]) -> None:
        """Record ``metrics`` for ``step``; keys are namespaced (``train/loss``)."""
        row: dict[str, Any] = {"step": step, **_plain(dict(metrics))}  # type: ignore[dict-item]
        line = json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n"
        self._jsonl.write(line.encode())
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        if any(key not in self._columns for key in row):
            self._columns = _columns([{k: None for k in self._columns}, row])
            self._csv.close()
            self._rewrite_csv(read_jsonl(self.jsonl_path))
            self._csv = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        else:
            csv.DictWriter(self._csv, fieldnames=self._columns).writerow(row)
            self._csv.flush()
        numbers = {
            k: v
            for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, global_step=step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        if not self._jsonl.closed:
            self._jsonl.close()
        if not self._csv.closed:
            self._csv.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _rewrite_csv(self, rows: list[dict[str, Any]]) -> None:
        # Atomic: a kill mid-rewrite leaves the old CSV, never a half-written one.
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".csv.tmp", dir=self.run_dir)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.csv_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    # "step" first, then keys in first-seen order.
    seen = {"step": None}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _open_tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning(
            "`tensorboard` logging was requested but tensorboard is not installed "
            "(pip install tensorboard); continuing without it"
        )
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _open_wandb(run_dir: Path, project: str | None, config: Mapping[str, object] | None) -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(
            "`wandb` logging was requested but wandb is not installed: pip install wandb "
            "(or set wandb=false)"
        ) from exc
    return wandb.init(project=project, dir=str(run_dir), config=dict(config or {}))
