"""`TrainConfig` option values: the choices of each enumerated option, and the two presets.

:data:`PAPER` is :meth:`opsa_train.config.TrainConfig.paper`, :data:`CPU_DEMO` is
:meth:`~opsa_train.config.TrainConfig.cpu_default`, each with why its values were chosen;
both take overrides on top.

Example:
    >>> PAPER["lr"], CPU_DEMO["lr"]
    (1e-05, 0.0003)
"""

from __future__ import annotations

from typing import Literal, get_args

from flipsearch.models import DEFAULT_MODEL

__all__ = [
    "CPU_DEMO",
    "DTYPES",
    "ENGINES",
    "LOSSES",
    "MISMATCH_POLICIES",
    "PAPER",
    "SCHEDULES",
    "Dtype",
    "Engine",
    "Loss",
    "MismatchPolicy",
    "Schedule",
]

Engine = Literal["auto", "vllm", "hf"]
Loss = Literal["mixed_topk", "forward_topk", "reverse_topk", "mixed_full", "sampled_token"]
Schedule = Literal["cosine", "constant"]
Dtype = Literal["bfloat16", "float32"]
MismatchPolicy = Literal["warn", "error"]

ENGINES: tuple[str, ...] = get_args(Engine)
LOSSES: tuple[str, ...] = get_args(Loss)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
DTYPES: tuple[str, ...] = get_args(Dtype)
MISMATCH_POLICIES: tuple[str, ...] = get_args(MismatchPolicy)


PAPER: dict[str, object] = {
    "loss": "mixed_topk",
    "alpha": None,  # 0.5 for the mixed losses; None so `loss=` overrides stay quiet
    "top_k": 64,
    "tail_bucket": True,
    "engine": "auto",
    "n_rollouts": 1,
    "max_new_tokens": 512,
    "temperature": 1.0,
    "top_p": 1.0,
    "lr": 1e-5,
    "weight_decay": 0.0,
    "betas": (0.9, 0.999),
    "warmup_steps": 0,
    "warmup_ratio": 0.0,
    "schedule": "constant",
    "grad_clip": 1.0,
    "batch_size": 64,
    "epochs": 3.0,
    "steps": None,
    "dtype": "bfloat16",
}
"""The paper's recipe (arXiv 2605.15239): full-parameter AdamW at lr 1e-5, batch 64,
3 epochs, 0.5 forward + 0.5 reverse KL over the teacher's top-k, token mean,
grad clip 1.0, bf16.

Choices the paper does not pin, made here:

- ``top_k=64`` with ``tail_bucket=True``: for instruct models sampled at
  temperature 1 the top 64 ids hold nearly all of the teacher's mass at almost
  every position, the tail bucket accounts for the rest (so reverse KL still sees
  student mass leaving the teacher's support), and (B, T, 64) log-probs are
  negligible next to (B, T, V) logits. Sweep 16..256 if the tail mass is large.
- ``max_new_tokens=512``: long enough for a refusal or most helpful answers;
  raise it for reasoning models. ``n_rollouts=1``, temperature 1, top_p 1
  (on-policy). Constant lr, no warm-up, weight decay 0 (none stated).
- ``alpha=None``, which `kl_alpha` resolves to the paper's 0.5; left unset so that
  ``paper(loss="forward_topk")`` does not warn about an ignored alpha.
"""

CPU_DEMO: dict[str, object] = {
    "model": DEFAULT_MODEL,
    "engine": "hf",
    "n_rollouts": 1,
    "max_new_tokens": 24,
    "loss": "mixed_topk",
    "alpha": None,
    "top_k": 64,
    "lr": 3e-4,
    "batch_size": 8,
    "grad_accumulation": 1,
    "steps": 20,
    "dtype": "float32",
    "out_dir": "runs/cpu-demo",
    "checkpoint_every": 10,
    "keep_checkpoints": 2,
    "sync_check_every": 0,
    "log_every": 1,
}
"""A run sized for minutes on 2 CPU cores with the embedded 135M model: the recipe of
the dev-only calibration studies (``results/calibration/``).

20 steps of 8 prompts, 24 new tokens each, float32, the ``hf`` engine (no vLLM
start-up or weight sync). ``lr=3e-4``, 30x the paper's 1e-5: on this model 20 steps at
5e-5 left the student where the base model was (harmful rates within noise, retention
KL 0.015), while 3e-4 beat 1e-3 on dev distillation efficiency (0.565 vs 0.435, 1e-3 was
first worse than base) and closed 0.9 of the teacher gap on 210 held-out prompts. 24
tokens: refusals and derailments show in the first tokens, and the judge is tuned on
them. float32 because CPU bf16 matmuls are slow without native bf16 and bf16 weights
round small updates away. The demo (``configs/demo.yaml``) adds the data of the second
study: the ``:train`` splits of the public harmful sets and ``benign_share=0.5`` (half of
every batch benign, which brought dev over-refusal down to the teacher's); they are not
here because they need the public data sets and benign prompts.
"""
