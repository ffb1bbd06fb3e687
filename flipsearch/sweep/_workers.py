"""Files shared by a study's workers: the set-up lock and the worker registry.

``<results_dir>/<study>/.lock`` serialises set-up steps (config check, enqueueing,
stale-trial recovery, baseline warm-up); ``workers.json`` maps ``host:pid`` to a worker
index, which offsets the sampler seed of concurrent workers.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with locked(folder):
    ...     register_worker(folder)
    0
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from flipsearch.atomic import atomic_write_text

__all__ = [
    "locked",
    "pid_alive",
    "register_worker",
    "unregister_worker",
    "worker_id",
    "write_json",
]


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    # One process at a time in set-up steps (config check, enqueueing, stale recovery,
    # baseline warm-up). An flock dies with its process, so a killed worker frees it.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: Path, doc: object) -> None:
    """Write ``doc`` as indented JSON, atomically (a kill leaves the old file or the new)."""
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def worker_id() -> dict[str, object]:
    """This worker as recorded on its trials: host name and process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def register_worker(folder: Path) -> int:
    # Smallest free index among live workers on this machine (called under the lock);
    # index 0 keeps `seed` as is, so a lone worker is reproducible.
    path = folder / "workers.json"
    workers = json.loads(path.read_text()) if path.is_file() else {}
    host = socket.gethostname()
    live = {
        k: v
        for k, v in workers.items()
        if not k.startswith(f"{host}:") or pid_alive(int(k.rsplit(":", 1)[1]))
    }
    used = set(live.values())
    index = next(i for i in range(len(used) + 1) if i not in used)
    live[f"{host}:{os.getpid()}"] = index
    write_json(path, live)
    return index


def unregister_worker(folder: Path) -> None:
    """Drop this process from ``workers.json`` (takes the lock itself)."""
    path = folder / "workers.json"
    with locked(folder):
        workers = json.loads(path.read_text()) if path.is_file() else {}
        workers.pop(f"{socket.gethostname()}:{os.getpid()}", None)
        write_json(path, workers)
