"""The checkpoint index ``checkpoints.jsonl``: find the last whole checkpoint, prune old ones.

`opsa_train.checkpoint.save_checkpoint` appends a row ``{"step", "path", "time"}`` after
a checkpoint folder is swapped in whole. `latest_checkpoint` walks the index from the
end, ignores a torn last line and skips rows whose folder is missing or lacks
``complete.json``; `prune_checkpoints` keeps the most recent ones.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from opsa_train.atomic_folder import fsync_path
from opsa_train.errors import OpsaConfigError
from opsa_train.metrics_log import read_jsonl

__all__ = ["CheckpointInfo", "latest_checkpoint", "prune_checkpoints"]

CHECKPOINTS_DIR = "checkpoints"
INDEX_FILE = "checkpoints.jsonl"
COMPLETE_MARKER = "complete.json"


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint found through the index."""

    step: int
    path: Path


def _is_complete(path: Path, step: int | None = None) -> bool:
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and (step is None or meta.get("step") == step)


def _indexed(run_dir: Path) -> list[CheckpointInfo]:
    # Index rows, oldest first, whose folder exists and is complete; a path saved more
    # than once keeps its last position.
    found: dict[Path, CheckpointInfo] = {}
    for row in read_jsonl(run_dir / INDEX_FILE):
        step, rel = row.get("step"), row.get("path")
        if not isinstance(step, int) or not isinstance(rel, str):
            continue
        path = run_dir / rel
        found.pop(path, None)
        if _is_complete(path, step):
            found[path] = CheckpointInfo(step=step, path=path)
    return list(found.values())


def latest_checkpoint(run_dir: str | Path) -> CheckpointInfo | None:
    """The last complete checkpoint listed in ``run_dir/checkpoints.jsonl``, or None.

    "Last" is the index order (the most recent save), not the highest step, so a run
    restarted from an older checkpoint resumes from what it saved since.
    """
    rows = _indexed(Path(run_dir))
    return rows[-1] if rows else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recent complete checkpoints, plus leftovers.

    Leftovers are ``step-*`` folders that are not among the kept ones: interrupted
    ``.tmp-`` writes, incomplete or unindexed folders. Each folder loses its
    ``complete.json`` before the rest, so a kill mid-delete never leaves a folder that
    looks complete. Call it from the single process that saves.

    Returns:
        The deleted folders.
    """
    if not isinstance(keep, int) or keep < 1:
        raise OpsaConfigError(f"`keep` must be an integer >= 1, got {keep!r}")
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    kept = {info.path.resolve() for info in _indexed(run_dir)[-keep:]}
    removed = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not folder.name.startswith("step-"):
            continue
        if folder.resolve() in kept:
            continue
        (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        fsync_path(root)
    return removed
