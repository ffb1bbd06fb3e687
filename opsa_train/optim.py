"""The trained model, its optimiser and its learning-rate schedule (OPSA and baseline alike).

- `load_model`: a causal LM from a model folder, in a given dtype;
- `make_adamw`: AdamW with the config's lr, betas and weight decay (fused where possible);
- `lr_factor` / `make_scheduler`: linear warm-up, then cosine or constant.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from opsa_train.config import TrainConfig
from opsa_train.errors import OpsaConfigError

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from transformers import PreTrainedModel

__all__ = ["load_model", "lr_factor", "make_adamw", "make_scheduler"]


def load_model(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """A causal LM from a model folder in ``dtype`` (training: no eval/no-grad switches)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def make_adamw(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over all parameters with the config's lr, betas and weight decay.

    The fused kernel (CPU and CUDA, float32 master weights) is several times faster than
    the per-tensor loop; it falls back where this torch build lacks it.
    """
    import torch

    kwargs: dict[str, Any] = {
        "lr": config.lr,
        "betas": config.betas,
        "weight_decay": config.weight_decay,
    }
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), **kwargs)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr for 0-based optimiser step ``step``.

    Linear warm-up over ``warmup`` steps (step 0 already gets ``1 / (warmup + 1)``, so
    no step is wasted at lr 0), then constant or a cosine that reaches 0 just after
    the last step.

    Example:
        >>> [round(lr_factor(s, total=4, warmup=1, schedule="cosine"), 3) for s in range(4)]
        [0.5, 1.0, 0.75, 0.25]
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise OpsaConfigError(f"`schedule` must be 'cosine' or 'constant', got {schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` as a ``LambdaLR`` over ``total`` steps; the warm-up is ``warmup_steps``
    or, when that is 0, ``warmup_ratio`` of ``total``."""
    import torch

    warmup = config.warmup_steps or int(config.warmup_ratio * total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total=total, warmup=warmup, schedule=config.schedule),
    )
