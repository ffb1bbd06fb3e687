"""The training config: one frozen, validated, JSON-serialisable dataclass.

`TrainConfig` holds every option of an OPSA run, each documented where it is declared
and grouped by stage. All cross-field rules live in ``__post_init__``, so a config that
exists is a config that can run; files and models are checked later, at preflight.
`load_train_config` merges a YAML file and ``key=value`` CLI overrides onto a preset,
coercing strings to each field's declared type.

Example:
    >>> cfg = load_train_config(None, {"lr": "2e-5", "steps": "10"}, base=TrainConfig.cpu_default())
    >>> cfg.lr, cfg.steps, cfg.micro_batch_size, cfg.kl_alpha
    (2e-05, 10, 8, 0.5)
    >>> TrainConfig(batch_size=64, grad_accumulation=5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    opsa_train.errors.OpsaConfigError: `batch_size` must be divisible by ...
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from flipsearch import coerce
from flipsearch.contexts import PLACEMENTS
from flipsearch.models import DEFAULT_MODEL
from opsa_train.checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_number,
    check_prompt_specs,
    check_str,
)
from opsa_train.errors import OpsaConfigError
from opsa_train.presets import (
    CPU_DEMO,
    DTYPES,
    ENGINES,
    LOSSES,
    MISMATCH_POLICIES,
    PAPER,
    SCHEDULES,
)

logger = logging.getLogger(__name__)

# Losses that read `alpha`, and the fixed alpha of the others (forward weight).
_ALPHA_LOSSES = ("mixed_topk", "mixed_full")
_FIXED_ALPHA = {"forward_topk": 1.0, "reverse_topk": 0.0, "sampled_token": 0.0}
_DEFAULT_ALPHA = 0.5  # the paper's 0.5 forward + 0.5 reverse


@dataclass(frozen=True)
class TrainConfig:
    """Every option of an OPSA training run (see the module docstring and `paper`)."""

    # ---- model & context ---------------------------------------------------------------
    model: str = DEFAULT_MODEL
    """Student and teacher weights: embedded name, local HF folder or hub id
    (:func:`flipsearch.models.resolve_model`). The teacher is a frozen copy of it."""
    context_file: str | None = None
    """flipsearch export file (JSON/YAML) holding the privileged safety context. Required
    to train (preflight raises without it); None only lets configs be built and tested."""
    benign_context: str | None = None
    """Context text for benign prompts (I_b), overriding the export's ``contexts.benign``;
    None uses the export's, and with none there the benign prompts' teacher gets no
    context. "" also means no context (the teacher then equals the initial model there)."""
    placement: str | None = None
    """Override of the export's placement: ``system``, ``prefix`` or ``suffix``; None
    keeps the placement the context was searched with (changing it voids its scores)."""
    keep_default_system: bool = False
    """With ``system`` placement on a chat template that has a default system prompt (the
    embedded SmolLM2's), keep it after the teacher's context instead of replacing it; use
    the value the context was searched with (``flipsearch sweep --keep-default-system``)."""
    enable_thinking: bool | None = None
    """The chat template's thinking switch (Qwen3's ``enable_thinking``), passed to every
    prompt render of the run (rollouts, teacher scoring, the vLLM sampler); None passes
    nothing (the template's default). With thinking on, the student's rollouts hold a
    ``<think>`` trace and the teacher distils the whole sequence, trace included (as the
    paper does); raise ``max_new_tokens`` so the answer after ``</think>`` fits."""

    # ---- data --------------------------------------------------------------------------
    harmful_prompts: tuple[str, ...] = ("harmful_core:train",)
    """Harmful training prompt sets, ``name[:split]`` each (CLI: comma-separated)."""
    benign_prompts: tuple[str, ...] = ("benign:train",)
    """Benign training prompt sets, mixed in to keep helpfulness (the safety tax);
    empty trains on harmful prompts only."""
    max_prompts: int | None = None
    """Cap on prompts taken from each set after a seeded shuffle; None takes all."""
    benign_share: float | None = None
    """Share of every batch drawn from the benign prompts, in (0, 1): each type then cycles
    its own seeded permutations (a small benign set is revisited more often). None: one
    permutation over all prompts, so batches mirror the sets' own mix."""

    # ---- rollout -----------------------------------------------------------------------
    engine: str = "auto"
    """Student sampler: ``vllm``, ``hf``, or ``auto`` (vLLM on a CUDA machine where it
    imports, else ``hf``)."""
    gpu_memory_utilization: float | None = None
    """The vLLM sampler's share of the GPU, in (0, 1]; None: vLLM's default (0.9). The
    student, its optimiser state and the frozen teacher live beside it on the same GPU:
    give vLLM what the rollouts need (e.g. 0.3 for a 0.6B model)."""
    n_rollouts: int = 1
    """Responses sampled per prompt per step, >= 1."""
    max_new_tokens: int = 512
    """Tokens per sampled response, >= 1; truncated responses are still trained on."""
    temperature: float = 1.0
    """Sampling temperature, > 0. 1 samples the distribution being trained (on-policy)."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 samples the whole distribution (on-policy)."""

    # ---- loss --------------------------------------------------------------------------
    loss: str = "mixed_topk"
    """``mixed_topk`` (paper): alpha * KL(T||S) + (1 - alpha) * KL(S||T) over the teacher's
    top-k; ``forward_topk``/``reverse_topk``: alpha fixed to 1/0; ``mixed_full``: the mix
    over the whole vocabulary; ``sampled_token``: reverse KL through the sampled tokens
    only (policy-gradient form). See :mod:`opsa_train.losses`."""
    alpha: float | None = None
    """Forward-KL weight in [0, 1] for ``mixed_topk``/``mixed_full``; None means 0.5 (the
    paper). Ignored, with a warning, by the other losses; read `kl_alpha` instead."""
    top_k: int = 64
    """Teacher ids kept per position for the ``*_topk`` losses, >= 1 (see `paper`)."""
    tail_bucket: bool = True
    """``*_topk``: add a (K+1)-th outcome with the mass outside the top-k, so a student
    moving mass off the teacher's support is penalised; False renormalises over the K."""
    chunk_size: int = 256
    """``mixed_full``: positions per chunk, >= 1; bounds the float32 (chunk, vocab) buffer."""

    # ---- optimisation ------------------------------------------------------------------
    lr: float = 1e-5
    """AdamW peak learning rate, > 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay, >= 0."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1) (CLI: ``betas=0.9,0.95``)."""
    warmup_steps: int = 0
    """Linear warm-up steps, >= 0 and < ``steps``; exclusive with ``warmup_ratio``."""
    warmup_ratio: float = 0.0
    """Warm-up as a fraction of all steps, in [0, 1); exclusive with ``warmup_steps``."""
    schedule: str = "constant"
    """Learning rate after warm-up: ``constant`` or ``cosine`` (to 0 at the last step)."""
    grad_clip: float | None = 1.0
    """Max global gradient norm, > 0; None disables clipping."""
    batch_size: int = 64
    """Prompts per optimiser step, >= 1 (each gives ``n_rollouts`` responses)."""
    grad_accumulation: int = 1
    """Micro-batches per step, >= 1, dividing ``batch_size``; the loss stays a token mean
    over the whole step (see :func:`opsa_train.losses.masked_token_mean`). Only the
    teacher and student forward/backward passes are split; rollouts are generated for
    the whole step at once (see ``rollout_batch_size``), so more micro-batches lower the
    peak memory of activations without slowing generation."""
    rollout_batch_size: int | None = None
    """Prompts per ``generate`` call of the ``hf`` engine, >= 1; None: the whole step's
    batch in one call (decoding costs about the same per step at batch 2 or 64 on CPU)."""
    epochs: float = 3.0
    """Passes over the prompts, > 0; ignored when ``steps`` is set."""
    steps: int | None = None
    """Optimiser steps, >= 1; when set, overrides ``epochs`` (as HF ``max_steps`` does)."""
    dtype: str = "bfloat16"
    """Model compute dtype: ``bfloat16`` or ``float32``. Optimiser state and master
    weights should stay float32: a bf16 weight cannot hold an update of 1e-5 relative."""
    teacher_dtype: str | None = None
    """The frozen teacher's dtype; None: ``dtype``. ``bfloat16`` halves its memory (and its
    time where the hardware does bf16: CUDA, AVX512_BF16, AMX) and rounds no update away,
    as the teacher is never trained; ``benchmarks/teacher_dtype.py`` measures what it
    changes in the teacher's log-probs."""
    gradient_checkpointing: bool = False
    """Recompute the student's layer activations in the backward pass instead of keeping
    them: less peak memory, about one more forward pass of compute (TRL turns it on by
    default). Rollouts (eval mode) are not affected."""
    sort_by_length: bool = True
    """Order each step's rollouts by teacher length (context + prompt + completion),
    longest first, before splitting them into micro-batches, so each micro-batch pads
    its rows to a similar length (logged: ``train/pad_frac``). Exact: the loss is a
    token mean over the whole step, so the order of micro-batches does not change it.
    No effect with one micro-batch (``grad_accumulation`` 1)."""
    reuse_teacher_prefix: bool = True
    """Teacher pass: compute the KV cache of the rendered prefix that all rows of a type
    share (chat header, and the context under ``system``/``prefix`` placement) once per
    run, and run only the rest of each row on top of it; rows that do not start with it
    take the full pass. Exact up to float rounding; on for Llama/Qwen decoders only, a
    no-op elsewhere (logged: ``train/teacher_prefix_reused``, tokens not recomputed)."""
    seed: int = 0
    """Seed for data order, sampling and init of anything random, >= 0."""

    # ---- runtime -----------------------------------------------------------------------
    out_dir: str = "runs/opsa"
    """Run folder: config.json, metrics.jsonl/csv, checkpoints/, final/. Re-entrant: the
    same command resumes from the last complete checkpoint."""
    checkpoint_every: int = 50
    """Steps between checkpoints, >= 0; 0 saves only at the end."""
    keep_checkpoints: int | None = 2
    """Most recent checkpoints kept, >= 1; None keeps all."""
    sync_check_every: int = 50
    """vLLM engine: every this many steps, check that the sampler's weights match the
    trained ones (log-probs of a fixed sequence); 0 disables. No-op for ``hf``."""
    log_every: int = 1
    """Steps between metric rows, >= 1."""
    tensorboard: bool = False
    """Also write TensorBoard events under ``out_dir/tensorboard``."""
    wandb: bool = False
    """Also log to Weights & Biases (``pip install wandb``)."""
    wandb_project: str | None = None
    """W&B project; None uses W&B's default. Ignored unless ``wandb``."""
    export_model_mismatch: str = "error"
    """When the export file's model differs from ``model``: ``error`` (a context found for
    another model rarely flips this one) or ``warn``."""

    # ------------------------------------------------------------------------------------

    def __post_init__(self) -> None:
        # Normalise: YAML lists and CLI strings into tuples.
        for name in ("harmful_prompts", "benign_prompts"):
            object.__setattr__(self, name, coerce.as_tuple(getattr(self, name)))
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        self._verify_model_and_data()
        self._verify_rollout_and_loss()
        self._verify_optimisation()
        self._verify_schedule()
        self._verify_runtime()
        self._warn_ignored()

    def _verify_model_and_data(self) -> None:
        check_str("model", self.model)
        check_str("context_file", self.context_file, optional=True)
        check_str("benign_context", self.benign_context, optional=True, allow_empty=True)
        check_choice("placement", self.placement, PLACEMENTS, optional=True)
        check_bool("keep_default_system", self.keep_default_system)
        if self.enable_thinking is not None:
            check_bool("enable_thinking", self.enable_thinking)
        for name in ("harmful_prompts", "benign_prompts"):
            check_prompt_specs(name, getattr(self, name))
        if not self.harmful_prompts:
            raise OpsaConfigError(
                "`harmful_prompts` must name at least one prompt set, got (): "
                "OPSA aligns the student on harmful prompts"
            )
        check_int("max_prompts", self.max_prompts, optional=True)
        check_fraction(
            "benign_share",
            self.benign_share,
            include_0=False,
            include_1=False,
            optional=True,
            why="a batch mixes both types; None keeps the sets' own mix",
        )
        if self.benign_share is not None and not self.benign_prompts:
            raise OpsaConfigError(
                f"`benign_share` is {self.benign_share!r} but `benign_prompts` is empty: "
                "name benign prompt sets or set benign_share to None"
            )

    def _verify_rollout_and_loss(self) -> None:
        check_choice("engine", self.engine, ENGINES)
        if self.gpu_memory_utilization is not None:
            check_fraction(
                "gpu_memory_utilization",
                self.gpu_memory_utilization,
                include_0=False,
                why="the vLLM sampler's share of the GPU",
            )
        check_int("n_rollouts", self.n_rollouts)
        check_int("max_new_tokens", self.max_new_tokens)
        check_number(
            "temperature",
            self.temperature,
            above=0,
            why="on-policy training samples the student; "
            "greedy rollouts would train on one mode only",
        )
        check_fraction("top_p", self.top_p, include_0=False)
        check_choice("loss", self.loss, LOSSES)
        if self.alpha is not None:  # None: the loss's own alpha (see `kl_alpha`)
            check_fraction(
                "alpha", self.alpha, why="1 is pure forward KL(teacher||student), 0 pure reverse"
            )
        check_int("top_k", self.top_k)
        check_bool("tail_bucket", self.tail_bucket)
        check_int("chunk_size", self.chunk_size)

    def _verify_optimisation(self) -> None:
        check_number("lr", self.lr, above=0)
        check_number("weight_decay", self.weight_decay, minimum=0)
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise OpsaConfigError(f"`betas` must be two floats, got {self.betas!r}")
        for beta in self.betas:
            check_number("betas", beta)
            if not 0.0 <= beta < 1.0:
                raise OpsaConfigError(f"`betas` must each be in [0, 1), got {self.betas!r}")
        check_number(
            "grad_clip", self.grad_clip, above=0, optional=True, why="None disables clipping"
        )
        check_int("batch_size", self.batch_size)
        check_int("grad_accumulation", self.grad_accumulation)
        if self.batch_size % self.grad_accumulation:
            raise OpsaConfigError(
                f"`batch_size` must be divisible by `grad_accumulation` "
                f"({self.grad_accumulation}), got {self.batch_size!r}"
            )
        check_int("rollout_batch_size", self.rollout_batch_size, optional=True)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("teacher_dtype", self.teacher_dtype, DTYPES, optional=True)
        check_bool("gradient_checkpointing", self.gradient_checkpointing)
        check_bool("sort_by_length", self.sort_by_length)
        check_bool("reuse_teacher_prefix", self.reuse_teacher_prefix)
        check_int("seed", self.seed, minimum=0)

    def _verify_schedule(self) -> None:
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_fraction("warmup_ratio", self.warmup_ratio, include_1=False)
        if self.warmup_steps and self.warmup_ratio:
            raise OpsaConfigError(
                f"`warmup_steps` must be 0 when `warmup_ratio` is set ({self.warmup_ratio!r}), "
                f"got {self.warmup_steps!r}. Set only one of them."
            )
        check_choice("schedule", self.schedule, SCHEDULES)
        check_number("epochs", self.epochs, above=0)
        check_int("steps", self.steps, optional=True)
        if self.steps is not None and self.warmup_steps >= self.steps:
            raise OpsaConfigError(
                f"`warmup_steps` must be < `steps` ({self.steps}), got {self.warmup_steps!r}"
            )

    def _verify_runtime(self) -> None:
        check_str("out_dir", self.out_dir)
        check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        check_int("keep_checkpoints", self.keep_checkpoints, optional=True)
        check_int("sync_check_every", self.sync_check_every, minimum=0)
        check_int("log_every", self.log_every)
        check_bool("tensorboard", self.tensorboard)
        check_bool("wandb", self.wandb)
        check_str("wandb_project", self.wandb_project, optional=True)
        check_choice("export_model_mismatch", self.export_model_mismatch, MISMATCH_POLICIES)

    def _warn_ignored(self) -> None:
        if self.alpha is not None and self.loss not in _ALPHA_LOSSES:
            logger.warning(
                "`alpha`=%r is ignored by loss %r, which uses alpha=%r; set `alpha` only with %s",
                self.alpha,
                self.loss,
                _FIXED_ALPHA[self.loss],
                " or ".join(_ALPHA_LOSSES),
            )
        if self.loss == "sampled_token" and (self.temperature != 1.0 or self.top_p != 1.0):
            logger.warning(
                "loss 'sampled_token' is a policy-gradient estimate, biased unless rollouts "
                "sample the raw distribution; got temperature=%r, top_p=%r (expected 1.0, 1.0)",
                self.temperature,
                self.top_p,
            )
        if self.wandb_project is not None and not self.wandb:
            logger.warning(
                "`wandb_project`=%r is ignored because `wandb` is False", self.wandb_project
            )
        if self.lr > 1e-3:
            logger.warning(
                "`lr`=%r is unusually high for full-parameter fine-tuning (typical 1e-6..1e-4)",
                self.lr,
            )

    # ---- derived -----------------------------------------------------------------------

    @property
    def kl_alpha(self) -> float:
        """The forward-KL weight the loss actually uses (1 forward ... 0 reverse)."""
        if self.loss in _FIXED_ALPHA:
            return _FIXED_ALPHA[self.loss]
        return _DEFAULT_ALPHA if self.alpha is None else self.alpha

    @property
    def teacher_dtype_or(self) -> str:
        """The teacher's dtype: ``teacher_dtype``, else ``dtype``."""
        return self.teacher_dtype or self.dtype

    @property
    def micro_batch_size(self) -> int:
        """Prompts per forward/backward pass: ``batch_size // grad_accumulation``."""
        return self.batch_size // self.grad_accumulation

    # ---- presets -----------------------------------------------------------------------

    @classmethod
    def paper(cls, **overrides: object) -> TrainConfig:
        """The paper's recipe (arXiv 2605.15239): full-parameter AdamW at lr 1e-5, batch 64,
        3 epochs, 0.5 forward + 0.5 reverse KL over the teacher's top-k, token mean,
        grad clip 1.0, bf16; the choices the paper does not pin are explained at
        :data:`opsa_train.presets.PAPER`.

        Example:
            >>> TrainConfig.paper().lr, TrainConfig.paper(lr=2e-5).lr
            (1e-05, 2e-05)
        """
        return _build(cls, {**PAPER, **overrides})

    @classmethod
    def cpu_default(cls, **overrides: object) -> TrainConfig:
        """A demo sized for minutes on 2 CPU cores with the embedded 135M model: 20 steps
        of 8 prompts, 24 new tokens, float32, lr 3e-4 (why: :data:`opsa_train.presets.CPU_DEMO`).

        Example:
            >>> cfg = TrainConfig.cpu_default()
            >>> cfg.model, cfg.steps, cfg.batch_size, cfg.dtype
            ('smollm2-135m', 20, 8, 'float32')
        """
        return _build(cls, {**CPU_DEMO, **overrides})

    # ---- serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready values (tuples become lists), in field order."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self, *, indent: int | None = 2) -> str:
        """The config as JSON, as written to ``config.json``; `load_train_config` reads it back."""
        return json.dumps(self.to_dict(), indent=indent)


# --------------------------------------------------------------------------------------
# Loading: YAML + CLI overrides (see :mod:`flipsearch.coerce`)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["lr=1e-5", "steps=10"]`` -> ``{"lr": "1e-5", "steps": "10"}``; later keys win.
    Raises OpsaConfigError for an item without ``=`` or a key."""
    return coerce.parse_overrides(items, error=OpsaConfigError)


def load_train_config(
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Build a `TrainConfig`: ``base`` (default: the field defaults), then the YAML file,
    then ``overrides``, each value coerced to its field's declared type.

    Strings are parsed for every field type: ``"1e-5"`` for floats, ``"true"``/``"0"``
    for bools, ``"none"``/``"null"`` for optional fields, ``"a,b"`` for tuples. A
    ``config.json`` written by `TrainConfig.to_json` loads too (JSON is YAML), and so does a
    run folder's, whose :data:`RECORD_EXTRAS` records are skipped.

    Example:
        >>> load_train_config(None, {"loss": "mixed_full", "alpha": "0.3"}).kl_alpha
        0.3

    Raises:
        OpsaConfigError: a missing or malformed file, an unknown key (with close matches),
            a value that cannot be coerced, or any `TrainConfig` rule.
    """
    values = base.to_dict() if base is not None else None
    # A run folder's config.json also holds the records of RECORD_EXTRAS: not options.
    return coerce.load_config(
        TrainConfig,
        yaml_path,
        overrides,
        base=values,
        error=OpsaConfigError,
        file_extras=RECORD_EXTRAS,
    )


RECORD_EXTRAS = ("baseline", "template")
"""Keys ``config.json`` may hold beside TrainConfig's fields: the baseline's options, and
what the chat template does with a ``system``-placed teacher context (``template``:
``system_placement``, ``default_system``; :meth:`TemplateCaps.record`)."""


def saved_train_config(path: str | Path) -> TrainConfig:
    """The TrainConfig a run folder's ``config.json`` records, without its extras."""
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise OpsaConfigError(f"{path}: config.json must hold a mapping, got {values!r}")
    for key in RECORD_EXTRAS:
        values.pop(key, None)
    try:
        return load_train_config(None, values)
    except OpsaConfigError as e:
        raise OpsaConfigError(f"{path}: {e}") from e


def _build(cls: type[TrainConfig], values: dict[str, Any]) -> TrainConfig:
    coerce.check_keys(values, [f.name for f in fields(TrainConfig)], error=OpsaConfigError)
    return cls(**values)
