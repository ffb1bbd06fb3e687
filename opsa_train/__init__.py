"""opsa_train: on-policy self-distillation for safety alignment (OPSA).

Implements the trainer of "Reducing the Safety Tax in LLM Safety Alignment with
On-Policy Self-Distillation" (arXiv 2605.15239). The student (no context) samples
its own responses; a frozen copy of the initial weights, given the privileged safety
context that ``flipsearch`` found plus the prompt and the student's exact tokens,
scores every position; the student minimises a per-token KL to it (paper: 0.5
forward + 0.5 reverse over the teacher's top-k, token mean, AdamW lr 1e-5, batch 64,
3 epochs, full-parameter, grad clip 1.0).

Modules, one job each:

- ``config`` (+ ``presets``, ``checks``): ``TrainConfig`` (frozen, validated) and
  ``load_train_config`` (YAML + CLI, through ``flipsearch.coerce``).
- ``preflight``: checks before any weight moves, and ``prepare`` (prompts, context, model).
- ``loop``: ``TrainLoop``, the step -> log -> maybe checkpoint -> ``final/`` driver shared by
  OPSA (``trainer.Trainer``: sample -> teacher score -> loss -> step) and the off-policy
  baseline (``baseline`` collects the data, ``baseline_sft.SFTTrainer`` steps on it).
- ``losses`` (+ ``token_stats``): pure tensor math, per-token KL losses and masked means.
- ``optim``: model loading, AdamW, the LR schedule. ``diagnostics``: KL, refusal rate, sync.
- ``checkpoint`` (+ ``checkpoint_index``, ``state_codec``, ``atomic_folder``): atomic,
  pickle-free checkpoints, ``final/``, and the ``checkpoints.jsonl`` index.
- ``metrics_log``: ``metrics.jsonl``/``metrics.csv`` plus optional TensorBoard/W&B.
- ``evaluate`` (+ ``eval_config``, ``eval_metrics``, ``retention``, ``eval_report``),
  ``analysis`` (+ ``analysis_report``): evaluation and the token-level KL analysis.
- ``pipeline`` (+ ``pipeline_config``, ``pipeline_stages``, ``stage_state``,
  ``pipeline_report``): the whole study with keyed, resumable stages.
- ``errors``: ``OpsaTrainError`` (a ``flipsearch.errors.FlipsearchError``) and its subclasses.
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
