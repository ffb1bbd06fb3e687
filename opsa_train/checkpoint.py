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

Crash safety: files go to ``step-N.tmp-XXXX/``, all fsynced, then the folder is
``os.replace``d to ``step-N/`` and the parent fsynced (`write_folder_atomically`, which
also writes ``final/``: `save_final`); only then is a row appended to
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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from opsa_train.atomic_folder import write_folder_atomically
from opsa_train.checkpoint_index import (
    CHECKPOINTS_DIR,
    COMPLETE_MARKER,
    INDEX_FILE,
    CheckpointInfo,
    latest_checkpoint,
    prune_checkpoints,
)
from opsa_train.errors import CheckpointError, OpsaConfigError
from opsa_train.metrics_log import append_jsonl
from opsa_train.state_codec import (
    capture_rng_state,
    decode_state,
    encode_state,
    restore_rng_state,
)

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "FINAL_DIR",
    "FINAL_MARKER",
    "INDEX_FILE",
    "CheckpointInfo",
    "LoadedCheckpoint",
    "capture_rng_state",
    "final_step",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "restore_rng_state",
    "save_checkpoint",
    "save_final",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FINAL_DIR = "final"
FINAL_MARKER = "opsa_final.json"
_MODEL = "model.safetensors"
_OPTIMIZER_TENSORS = "optimizer.safetensors"
_OPTIMIZER_JSON = "optimizer.json"
_SCHEDULER_JSON = "scheduler.json"
_DATA_JSON = "data.json"
_RNG_JSON = "rng.json"
_RNG_TENSORS = "rng.safetensors"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What `load_checkpoint` returns besides the state it restored in place."""

    step: int
    path: Path
    data_state: dict[str, Any]
    """The data position saved with the checkpoint (epoch, offset, order seed, ...)."""


# --------------------------------------------------------------------------------------
# Files


def _write_json(path: Path, obj: object) -> None:
    # No fsync here: write_folder_atomically fsyncs every file before the swap.
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(path))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step-{step}"


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
        raise OpsaConfigError(f"`step` must be an integer >= 0, got {step!r}")
    run_dir = Path(run_dir)
    final = write_folder_atomically(
        _step_dir(run_dir, step),
        lambda tmp: _write_contents(tmp, step, model, optimizer, scheduler, rng_state, data_state),
        marker=COMPLETE_MARKER,
    )
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
    if optimizer is not None:
        tensors: dict[str, torch.Tensor] = {}
        meta = encode_state(optimizer.state_dict(), "optimizer", tensors)
        _write_tensors(folder / _OPTIMIZER_TENSORS, tensors)
        _write_json(folder / _OPTIMIZER_JSON, meta)
    if scheduler is not None:
        tensors = {}
        meta = encode_state(scheduler.state_dict(), "scheduler", tensors)
        if tensors:
            raise CheckpointError(
                f"`scheduler.state_dict()` must hold no tensors, got {sorted(tensors)!r}"
            )
        _write_json(folder / _SCHEDULER_JSON, meta)
    tensors = {}
    rng_meta = encode_state(dict(rng_state or capture_rng_state()), "rng", tensors)
    _write_tensors(folder / _RNG_TENSORS, tensors)
    _write_json(folder / _RNG_JSON, rng_meta)
    data_tensors: dict[str, torch.Tensor] = {}
    data_meta = encode_state(dict(data_state or {}), "data", data_tensors)
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
        optimizer.load_state_dict(decode_state(_read_json(path / _OPTIMIZER_JSON), tensors))
    if scheduler is not None:
        if not (path / _SCHEDULER_JSON).is_file():
            raise CheckpointError(f"checkpoint {path} holds no scheduler state")
        scheduler.load_state_dict(decode_state(_read_json(path / _SCHEDULER_JSON), {}))
    if restore_rng:
        rng = decode_state(_read_json(path / _RNG_JSON), load_file(str(path / _RNG_TENSORS)))
        restore_rng_state(rng)  # type: ignore[arg-type]
    data_state = decode_state(_read_json(path / _DATA_JSON), {})
    return LoadedCheckpoint(step=int(meta["step"]), path=path, data_state=data_state)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# final/: the trained model as an HF folder


def save_final(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    *,
    dtype: str,
    step: int,
) -> Path:
    """Write an HF folder (model in ``dtype``, tokenizer, generation config) atomically.

    Through `write_folder_atomically`, with ``opsa_final.json`` (the step) written last
    as its marker. So ``final/`` is always whole; a kill between the two renames leaves
    none, and the next run rewrites it from the last checkpoint (always saved first).
    """

    def fill(tmp: Path) -> None:
        target = getattr(torch, dtype)
        state = {k: v.detach().to(target) for k, v in model.state_dict().items()}
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # config.json says the weights' dtype, so loaders default to it.
        cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        cfg["torch_dtype"] = cfg["dtype"] = dtype
        cfg["use_cache"] = True
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        (tmp / FINAL_MARKER).write_text(json.dumps({"step": step, "dtype": dtype}) + "\n")

    return write_folder_atomically(Path(path), fill, marker=FINAL_MARKER)


def final_step(path: str | Path) -> int | None:
    """The step whose weights the ``final/`` folder ``path`` holds; None if none is whole."""
    try:
        meta = json.loads((Path(path) / FINAL_MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    step = meta.get("step") if isinstance(meta, dict) else None
    return step if isinstance(step, int) else None
