"""Nested training state as JSON + safetensors (no pickle), and the RNG states to save.

`encode_state` turns an ``optimizer.state_dict()`` (or any nest of dicts, lists, tuples,
numbers, strings and tensors) into JSON plus a flat name -> tensor dict that
``safetensors`` can store; `decode_state` restores it exactly. `capture_rng_state` and
`restore_rng_state` cover Python, NumPy, torch CPU and CUDA generators.

Example:
    >>> import torch
    >>> tensors = {}
    >>> meta = encode_state({"step": 3, "m": (torch.ones(2), 1)}, "opt", tensors)
    >>> sorted(tensors), decode_state(meta, tensors)["m"][1]
    (['opt.m.0'], 1)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import torch

from opsa_train.errors import CheckpointError

__all__ = ["capture_rng_state", "decode_state", "encode_state", "restore_rng_state"]

logger = logging.getLogger(__name__)


def encode_state(obj: object, where: str, tensors: dict[str, torch.Tensor]) -> object:
    """Nested state -> JSON, moving each tensor into ``tensors`` under a dotted name.

    Tuples and non-string dict keys are tagged so `decode_state` restores them exactly.

    Raises:
        CheckpointError: an object that is not a tensor, number, string, list or dict.
    """
    if isinstance(obj, torch.Tensor):
        if where in tensors:
            raise CheckpointError(f"`{where}` names two tensors (keys 1 and '1'?)")
        tensors[where] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": where}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, f"{where}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, f"{where}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, f"{where}.{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, bool | int | float | str) and k is not None:
                raise CheckpointError(f"`{where}` has a key of type {type(k).__name__}: {k!r}")
            items.append([k, encode_state(v, f"{where}.{k}", tensors)])
        return {"__items__": items}
    raise CheckpointError(
        f"`{where}` must hold tensors, numbers, strings, lists or dicts, got "
        f"{type(obj).__name__}: checkpoints store no pickled objects"
    )


def decode_state(obj: object, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of `encode_state`, given the JSON and the tensors it moved out."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: decode_state(v, tensors) for k, v in obj["__items__"]}
        return {k: decode_state(v, tensors) for k, v in obj.items()}
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
