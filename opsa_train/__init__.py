"""opsa_train: on-policy self-distillation for safety alignment (OPSA).

Implements the trainer of "Reducing the Safety Tax in LLM Safety Alignment with
On-Policy Self-Distillation" (arXiv 2605.15239). The student (no context) samples
its own responses; a frozen copy of the initial weights, given the privileged safety
context that ``flipsearch`` found plus the prompt and the student's exact tokens,
scores every position; the student minimises a per-token KL to it (paper: 0.5
forward + 0.5 reverse over the teacher's top-k, token mean, AdamW lr 1e-5, batch 64,
3 epochs, full-parameter, grad clip 1.0).

Modules, one per stage:

- ``config``: ``TrainConfig`` (frozen, validated) and ``load_train_config`` (YAML + CLI).
- ``losses``: pure tensor math, per-token KL losses and masked means.
- ``checkpoint``: atomic, pickle-free checkpoints and the ``checkpoints.jsonl`` index.
- ``metrics_log``: ``metrics.jsonl``/``metrics.csv`` plus optional TensorBoard/W&B.
- ``errors``: ``OpsaTrainError`` and its subclasses.

The training loop itself (sample -> teacher score -> loss -> step -> log -> maybe
checkpoint) lives in ``opsa_train.trainer``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> object:
    # Lazy: `import opsa_train` must not import torch.
    if name in ("train", "TrainResult"):
        from opsa_train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
