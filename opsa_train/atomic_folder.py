"""Write a folder whole or not at all: checkpoints (``step-N/``) and ``final/`` alike.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> def fill(tmp): (tmp / "done.json").write_text("{}")
    >>> write_folder_atomically(root / "out", fill, marker="done.json").name
    'out'
    >>> sorted(p.name for p in root.iterdir())
    ['out']
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["fsync_path", "write_folder_atomically"]


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes its renames durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder_atomically(path: Path, fill: Callable[[Path], None], *, marker: str) -> Path:
    """Let ``fill(tmp)`` write the folder's contents, then swap them in at ``path``.

    ``tmp`` is a new sibling ``<name>.tmp-XXXX``; after ``fill`` every file in it and the
    folder itself are fsynced, then it is renamed to ``path`` and the parent fsynced. An
    existing ``path`` first loses its ``marker`` file (the one that says the folder is
    whole, written last by ``fill``), is moved aside to ``<name>.old-<pid>-<ns>``, and is
    deleted after the swap.

    So a reader sees the old folder, the new one or none, never half of one: an
    exception removes ``tmp``; a hard kill leaves a ``.tmp-``/``.old-`` sibling (and at
    worst no ``path``), which readers ignore and the writer's next run rebuilds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent))
    try:
        fill(tmp)
        for file in sorted(tmp.rglob("*")):
            if file.is_file():
                fsync_path(file)
        fsync_path(tmp)
        if path.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            old = path.with_name(f"{path.name}.old-{os.getpid()}-{time.time_ns()}")
            (path / marker).unlink(missing_ok=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
