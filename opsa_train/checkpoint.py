"""Atomic, pickle-free training checkpoints and their append-only index.

A checkpoint is a folder ``run_dir/checkpoints/step-N/``:

- ``model.safetensors``: weights (``safetensors.torch.save_model``, so tied weights
  are stored once and re-tied on load);
- ``optimizer.safetensors`` + ``optimizer.json``: every tensor of the optimizer's
  ``state_dict`` and the rest of it (param groups, step counts) as JSON;
- ``scheduler.json``, ``data.json`` (the data position), ``rng.json`` +
  ``rng.safetensors`` (Python, NumPy, torch CPU and CUDA generators);
- ``complete.json``, written last, with the step, format and file sizes.

Security rule: nothing is ever pickled or unpickled (no ``torch.save``/``torch.load``),
so a checkpoint from elsewhere cannot run code. Non-tensor state must be JSON.

Crash safety: files go to ``step-N.tmp-XXXX/``, each fsynced, then the folder is
``os.replace``d to ``step-N/`` and the parent fsynced; only then is a row appended to
``checkpoints.jsonl`` (fsynced). `latest_checkpoint` walks that index from the end,
ignores a torn last line and skips rows whose folder is missing or lacks
``complete.json``, so a kill at any point resumes from the last whole checkpoint.

Example:
    >>> import tempfile, torch
    >>> run_dir = tempfile.mkdtemp()
    >>> model = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> path = save_checkpoint(run_dir, step=3, model=model, optimizer=opt, data_state={"pos": 7})
    >>> info = latest_checkpoint(run_dir)
    >>> info.step, info.path == path
    (3, True)
    >>> load_checkpoint(info.path, model=model, optimizer=opt).data_state
    {'pos': 7}
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from opsa_train.errors import CheckpointError, ConfigError
from opsa_train.metrics_log import append_jsonl, read_jsonl

if TYPE_CHECKING:
    from torch.optim import Optimizer

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
INDEX_FILE = "checkpoints.jsonl"
COMPLETE_MARKER = "complete.json"
_MODEL = "model.safetensors"
_OPTIMIZER_TENSORS = "optimizer.safetensors"
_OPTIMIZER_JSON = "optimizer.json"
_SCHEDULER_JSON = "scheduler.json"
_DATA_JSON = "data.json"
_RNG_JSON = "rng.json"
_RNG_TENSORS = "rng.safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint found through the index."""

    step: int
    path: Path


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What `load_checkpoint` returns besides the state it restored in place."""

    step: int
    path: Path
    data_state: dict[str, Any]
    """The data position saved with the checkpoint (epoch, offset, order seed, ...)."""


# --------------------------------------------------------------------------------------
# JSON + safetensors encoding of nested state (no pickle)


def _encode(obj: object, where: str, tensors: dict[str, torch.Tensor]) -> object:
    # Nested state -> JSON, moving each tensor into `tensors` under a dotted name.
    # Tuples and non-string dict keys are tagged so decoding restores them exactly.
    if isinstance(obj, torch.Tensor):
        if where in tensors:
            raise CheckpointError(f"`{where}` names two tensors (keys 1 and '1'?)")
        tensors[where] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": where}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{where}.{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, bool | int | float | str) and k is not None:
                raise CheckpointError(f"`{where}` has a key of type {type(k).__name__}: {k!r}")
            items.append([k, _encode(v, f"{where}.{k}", tensors)])
        return {"__items__": items}
    raise CheckpointError(
        f"`{where}` must hold tensors, numbers, strings, lists or dicts, got "
        f"{type(obj).__name__}: checkpoints store no pickled objects"
    )


def _decode(obj: object, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """The Python, NumPy (if installed), torch CPU and CUDA generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch_cpu": torch.get_rng_state(),
    }
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = (kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss))
    if torch.cuda.is_available():
        state["torch_cuda"] = tuple(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `capture_rng_state` returned (missing parts are left alone)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"].to(torch.uint8))
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["torch_cuda"])
        if len(cuda_states) != torch.cuda.device_count():
            logger.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d; "
                "CUDA RNG not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda_states])


# --------------------------------------------------------------------------------------
# Files


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path))
    _fsync_path(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step-{step}"


def _is_complete(path: Path, step: int | None = None) -> bool:
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and (step is None or meta.get("step") == step)


# --------------------------------------------------------------------------------------
# Save / load


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: Any | None = None,
    rng_state: Mapping[str, Any] | None = None,
    data_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-{step}/`` atomically and index it.

    Args:
        run_dir: the run folder.
        step: optimiser steps done, >= 0.
        model: saved with ``safetensors.torch.save_model`` (tied weights once).
        optimizer: any ``torch.optim`` optimizer; its tensors go to safetensors.
        scheduler: anything with a JSON-able ``state_dict()`` (``LambdaLR`` qualifies;
            lambdas themselves are not saved, they come from the code).
        rng_state: from `capture_rng_state`; None captures it now.
        data_state: JSON-able data position, returned by `load_checkpoint`.

    Returns:
        The checkpoint folder.

    Note:
        Saving a step that already exists replaces it. An exception (or interrupt)
        removes the temporary folder; a hard kill leaves a ``step-N.tmp-*`` folder that
        nothing reads and `prune_checkpoints` removes.

    Raises:
        CheckpointError: state that is not tensors/JSON (nothing is pickled).
    """
    if not isinstance(step, int) or step < 0:
        raise ConfigError(f"`step` must be an integer >= 0, got {step!r}")
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = _step_dir(run_dir, step)
    tmp = Path(tempfile.mkdtemp(prefix=f"step-{step}.tmp-", dir=root))
    try:
        _write_contents(tmp, step, model, optimizer, scheduler, rng_state, data_state)
        _fsync_path(tmp)
        if final.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            old = final.with_name(f"{final.name}.old-{os.getpid()}-{time.time_ns()}")
            (final / COMPLETE_MARKER).unlink(missing_ok=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    append_jsonl(
        run_dir / INDEX_FILE,
        {"step": step, "path": f"{CHECKPOINTS_DIR}/{final.name}", "time": time.time()},
    )
    logger.info("saved checkpoint %s", final)
    return final


def _write_contents(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Optimizer | None,
    scheduler: Any | None,
    rng_state: Mapping[str, Any] | None,
    data_state: Mapping[str, Any] | None,
) -> None:
    save_model(model, str(folder / _MODEL), force_contiguous=True)
    _fsync_path(folder / _MODEL)
    if optimizer is not None:
        tensors: dict[str, torch.Tensor] = {}
        meta = _encode(optimizer.state_dict(), "optimizer", tensors)
        _write_tensors(folder / _OPTIMIZER_TENSORS, tensors)
        _write_json(folder / _OPTIMIZER_JSON, meta)
    if scheduler is not None:
        tensors = {}
        meta = _encode(scheduler.state_dict(), "scheduler", tensors)
        if tensors:
            raise CheckpointError(
                f"`scheduler.state_dict()` must hold no tensors, got {sorted(tensors)!r}"
            )
        _write_json(folder / _SCHEDULER_JSON, meta)
    tensors = {}
    rng_meta = _encode(dict(rng_state or capture_rng_state()), "rng", tensors)
    _write_tensors(folder / _RNG_TENSORS, tensors)
    _write_json(folder / _RNG_JSON, rng_meta)
    data_tensors: dict[str, torch.Tensor] = {}
    data_meta = _encode(dict(data_state or {}), "data", data_tensors)
    if data_tensors:
        raise CheckpointError(
            f"`data_state` must be JSON-able, got tensors {sorted(data_tensors)!r}"
        )
    _write_json(folder / _DATA_JSON, data_meta)
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    # Written last: a folder without it is never loaded.
    _write_json(folder / COMPLETE_MARKER, {"step": step, "format": FORMAT_VERSION, "files": sizes})


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> LoadedCheckpoint:
    """Restore a checkpoint folder into ``model``/``optimizer``/``scheduler`` in place.

    The model is loaded strictly onto the device of its first parameter; optimizer
    tensors are moved by ``optimizer.load_state_dict``. RNG states are restored unless
    ``restore_rng`` is False.

    Raises:
        CheckpointError: the folder is incomplete, of an unknown format, a file's size
            differs from the one recorded, or a part the caller asks for is missing.
    """
    path = Path(path)
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} must hold {COMPLETE_MARKER}: it is missing or was "
            "never finished. Use latest_checkpoint() to find a complete one."
        )
    meta = _read_json(marker)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format must be {FORMAT_VERSION}, got {meta.get('format')!r} in {path}"
        )
    for name, size in meta.get("files", {}).items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            raise CheckpointError(
                f"checkpoint file {name!r} in {path} must be {size} bytes, got {actual!r}: "
                "truncated or replaced. Delete this step folder to resume from an earlier "
                "checkpoint, or start a new run with another --out"
            )

    param = next(iter(model.parameters()), None)
    device = str(param.device) if param is not None else "cpu"
    missing, unexpected = load_model(model, str(path / _MODEL), strict=True, device=device)
    if missing or unexpected:  # strict=True raises first; kept for older safetensors
        raise CheckpointError(f"model keys differ: missing {missing}, unexpected {unexpected}")

    if optimizer is not None:
        if not (path / _OPTIMIZER_JSON).is_file():
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        tensors = load_file(str(path / _OPTIMIZER_TENSORS))
        optimizer.load_state_dict(_decode(_read_json(path / _OPTIMIZER_JSON), tensors))
    if scheduler is not None:
        if not (path / _SCHEDULER_JSON).is_file():
            raise CheckpointError(f"checkpoint {path} holds no scheduler state")
        scheduler.load_state_dict(_decode(_read_json(path / _SCHEDULER_JSON), {}))
    if restore_rng:
        rng = _decode(_read_json(path / _RNG_JSON), load_file(str(path / _RNG_TENSORS)))
        restore_rng_state(rng)  # type: ignore[arg-type]
    data_state = _decode(_read_json(path / _DATA_JSON), {})
    return LoadedCheckpoint(step=int(meta["step"]), path=path, data_state=data_state)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Index


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
        raise ConfigError(f"`keep` must be an integer >= 1, got {keep!r}")
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
        _fsync_path(root)
    return removed
