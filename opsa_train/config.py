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
    >>> TrainConfig(batch_size=64, grad_accumulation=5)
    Traceback (most recent call last):
    ...
    opsa_train.errors.ConfigError: `batch_size` must be divisible by `grad_accumulation` (5), got 64
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from flipsearch.contexts import PLACEMENTS
from flipsearch.models import DEFAULT_MODEL
from opsa_train.errors import ConfigError

logger = logging.getLogger(__name__)

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

# Losses that read `alpha`, and the fixed alpha of the others (forward weight).
_ALPHA_LOSSES = ("mixed_topk", "mixed_full")
_FIXED_ALPHA = {"forward_topk": 1.0, "reverse_topk": 0.0, "sampled_token": 0.0}
_DEFAULT_ALPHA = 0.5  # the paper's 0.5 forward + 0.5 reverse
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("none", "null")  # "" stays a string: `benign_context=` means no context


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
    """Context text for benign prompts, overriding the export's ``contexts.benign``; None
    uses the export's benign context, else its harmful one. "" means no context (the
    teacher then equals the student on benign prompts, and their KL is 0)."""
    placement: str | None = None
    """Override of the export's placement: ``system``, ``prefix`` or ``suffix``; None
    keeps the placement the context was searched with (changing it voids its scores)."""

    # ---- data --------------------------------------------------------------------------
    harmful_prompts: tuple[str, ...] = ("harmful_core:train",)
    """Harmful training prompt sets, ``name[:split]`` each (CLI: comma-separated)."""
    benign_prompts: tuple[str, ...] = ("benign:train",)
    """Benign training prompt sets, mixed in to keep helpfulness (the safety tax);
    empty trains on harmful prompts only."""
    max_prompts: int | None = None
    """Cap on prompts taken from each set after a seeded shuffle; None takes all."""

    # ---- rollout -----------------------------------------------------------------------
    engine: str = "auto"
    """Student sampler: ``vllm``, ``hf``, or ``auto`` (vLLM on a CUDA machine where it
    imports, else ``hf``)."""
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
    gradient_checkpointing: bool = False
    """Recompute the student's layer activations in the backward pass instead of keeping
    them: less peak memory, about one more forward pass of compute (TRL turns it on by
    default). Rollouts (eval mode) are not affected."""
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
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(s.strip() for s in value.split(",") if s.strip())
            elif isinstance(value, list):
                value = tuple(value)
            object.__setattr__(self, name, value)
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        self._verify()
        self._warn_ignored()

    def _verify(self) -> None:
        _check_str("model", self.model)
        _check_optional_str("context_file", self.context_file)
        _check_optional_str("benign_context", self.benign_context, allow_empty=True)
        if self.placement is not None:
            _check_choice("placement", self.placement, PLACEMENTS)
        for name in ("harmful_prompts", "benign_prompts"):
            _check_prompt_specs(name, getattr(self, name))
        if not self.harmful_prompts:
            raise ConfigError(
                "`harmful_prompts` must name at least one prompt set, got (): "
                "OPSA aligns the student on harmful prompts"
            )
        _check_int("max_prompts", self.max_prompts, minimum=1, optional=True)

        _check_choice("engine", self.engine, ENGINES)
        _check_int("n_rollouts", self.n_rollouts, minimum=1)
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_float("temperature", self.temperature)
        if self.temperature <= 0:
            raise ConfigError(
                f"`temperature` must be > 0, got {self.temperature!r}: on-policy training "
                "samples the student; greedy rollouts would train on one mode only"
            )
        _check_float("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"`top_p` must be in (0, 1], got {self.top_p!r}")

        _check_choice("loss", self.loss, LOSSES)
        if self.alpha is not None:
            _check_float("alpha", self.alpha)
            if not 0.0 <= self.alpha <= 1.0:
                raise ConfigError(
                    f"`alpha` must be in [0, 1], got {self.alpha!r}: "
                    "1 is pure forward KL(teacher||student), 0 pure reverse"
                )
        _check_int("top_k", self.top_k, minimum=1)
        _check_bool("tail_bucket", self.tail_bucket)
        _check_int("chunk_size", self.chunk_size, minimum=1)

        _check_float("lr", self.lr)
        if self.lr <= 0:
            raise ConfigError(f"`lr` must be > 0, got {self.lr!r}")
        _check_float("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ConfigError(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise ConfigError(f"`betas` must be two floats, got {self.betas!r}")
        for beta in self.betas:
            _check_float("betas", beta)
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"`betas` must each be in [0, 1), got {self.betas!r}")
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        _check_float("warmup_ratio", self.warmup_ratio)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"`warmup_ratio` must be in [0, 1), got {self.warmup_ratio!r}")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError(
                f"`warmup_steps` must be 0 when `warmup_ratio` is set ({self.warmup_ratio!r}), "
                f"got {self.warmup_steps!r}. Set only one of them."
            )
        _check_choice("schedule", self.schedule, SCHEDULES)
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip)
            if self.grad_clip <= 0:
                raise ConfigError(
                    f"`grad_clip` must be > 0 or None (no clipping), got {self.grad_clip!r}"
                )
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("grad_accumulation", self.grad_accumulation, minimum=1)
        if self.batch_size % self.grad_accumulation:
            raise ConfigError(
                f"`batch_size` must be divisible by `grad_accumulation` "
                f"({self.grad_accumulation}), got {self.batch_size!r}"
            )
        _check_int("rollout_batch_size", self.rollout_batch_size, minimum=1, optional=True)
        _check_float("epochs", self.epochs)
        if self.epochs <= 0:
            raise ConfigError(f"`epochs` must be > 0, got {self.epochs!r}")
        _check_int("steps", self.steps, minimum=1, optional=True)
        if self.steps is not None and self.warmup_steps >= self.steps:
            raise ConfigError(
                f"`warmup_steps` must be < `steps` ({self.steps}), got {self.warmup_steps!r}"
            )
        _check_choice("dtype", self.dtype, DTYPES)
        _check_bool("gradient_checkpointing", self.gradient_checkpointing)
        _check_int("seed", self.seed, minimum=0)

        _check_str("out_dir", self.out_dir)
        _check_int("checkpoint_every", self.checkpoint_every, minimum=0)
        _check_int("keep_checkpoints", self.keep_checkpoints, minimum=1, optional=True)
        _check_int("sync_check_every", self.sync_check_every, minimum=0)
        _check_int("log_every", self.log_every, minimum=1)
        _check_bool("tensorboard", self.tensorboard)
        _check_bool("wandb", self.wandb)
        _check_optional_str("wandb_project", self.wandb_project)
        _check_choice("export_model_mismatch", self.export_model_mismatch, MISMATCH_POLICIES)

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
    def micro_batch_size(self) -> int:
        """Prompts per forward/backward pass: ``batch_size // grad_accumulation``."""
        return self.batch_size // self.grad_accumulation

    # ---- presets -----------------------------------------------------------------------

    @classmethod
    def paper(cls, **overrides: object) -> TrainConfig:
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

        Example:
            >>> TrainConfig.paper().lr, TrainConfig.paper(lr=2e-5).lr
            (1e-05, 2e-05)
        """
        values: dict[str, object] = {
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
        return _build(cls, {**values, **overrides})

    @classmethod
    def cpu_default(cls, **overrides: object) -> TrainConfig:
        """A demo sized for minutes on 2 CPU cores with the embedded 135M model.

        20 steps of 8 prompts, 48 new tokens each, float32, the ``hf`` engine (no vLLM
        start-up or weight sync). ``lr=5e-5`` rather than the paper's 1e-5: an AdamW step
        moves each weight by about ``lr``, so 20 steps at 1e-5 barely change the KL,
        while 5e-5 makes a visible drop and is still a common fine-tuning rate for small
        models. float32 because CPU bf16 matmuls are slow on many CPUs and bf16 weights
        would round such updates away.

        Example:
            >>> cfg = TrainConfig.cpu_default()
            >>> cfg.model, cfg.steps, cfg.batch_size, cfg.dtype
            ('smollm2-135m', 20, 8, 'float32')
        """
        values: dict[str, object] = {
            "model": DEFAULT_MODEL,
            "engine": "hf",
            "n_rollouts": 1,
            "max_new_tokens": 48,
            "loss": "mixed_topk",
            "alpha": None,
            "top_k": 64,
            "lr": 5e-5,
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
        return _build(cls, {**values, **overrides})

    # ---- serialisation -----------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready values (tuples become lists), in field order."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self, *, indent: int | None = 2) -> str:
        """The config as JSON, as written to ``config.json``; `load_train_config` reads it back."""
        return json.dumps(self.to_dict(), indent=indent)


# --------------------------------------------------------------------------------------
# Loading: YAML + CLI overrides


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["lr=1e-5", "steps=10"]`` -> ``{"lr": "1e-5", "steps": "10"}``; later keys win.

    Raises:
        ConfigError: an item has no ``=`` or an empty key.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override must look like `key=value`, got {item!r}")
        out[key.strip()] = value.strip()
    return out


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
    ``config.json`` written by `TrainConfig.to_json` loads too (JSON is YAML).

    Example:
        >>> load_train_config(None, {"loss": "mixed_full", "alpha": "0.3"}).kl_alpha
        0.3

    Raises:
        ConfigError: a missing or malformed file, an unknown key (with close matches),
            a value that cannot be coerced, or any `TrainConfig` rule.
    """
    values: dict[str, Any] = base.to_dict() if base is not None else {}
    loaded: Any = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"`yaml_path` must be an existing file, got {str(path)!r}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(path)!r} must hold a mapping of options, "
                f"got {type(loaded).__name__}"
            )
        try:
            values.update(_coerce_all(loaded))
        except ConfigError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc}") from exc
    values.update(_coerce_all(dict(overrides or {})))
    try:
        return TrainConfig(**values)
    except ConfigError as exc:
        field = re.match(r"`(\w+)`", str(exc))
        if yaml_path is not None and field and field.group(1) in loaded:
            raise ConfigError(f"config file {str(yaml_path)!r}: {exc}") from exc
        raise


def _build(cls: type[TrainConfig], values: dict[str, Any]) -> TrainConfig:
    _check_keys(values)
    return cls(**values)


def _check_keys(values: Mapping[str, object]) -> None:
    known = [f.name for f in fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
            raise ConfigError(f"unknown config key `{key}`.{hint} Known keys: {', '.join(known)}")


def _coerce_all(values: Mapping[str, object]) -> dict[str, object]:
    _check_keys(values)
    hints = typing.get_type_hints(TrainConfig)
    return {key: _coerce(key, value, hints[key]) for key, value in values.items()}


def _coerce(name: str, value: object, tp: object) -> object:
    # Turn a YAML value or CLI string into `tp`; range rules are left to __post_init__.
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0]) if len(inner) == 1 else value
    if origin is Literal:
        return value  # __post_init__ names the choices
    if origin is tuple:
        if isinstance(value, str):
            items: list[object] = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ConfigError(f"`{name}` must be a list, got {value!r}")
        item_type = args[0] if args else str
        return tuple(_coerce(name, item, item_type) for item in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"`{name}` must be a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _to_float(value)
        if number is None or not number.is_integer():
            raise ConfigError(f"`{name}` must be an integer, got {value!r}")
        return int(number)
    if tp is float:
        number = _to_float(value)
        if number is None:
            raise ConfigError(f"`{name}` must be a number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{name}` must be a string, got {value!r}")
        return value
    return value


def _to_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------------------
# Field checks, one message form: "`name` must <rule>, got <value!r>"


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"`{name}` must be one of {choices}, got {value!r}")


def _check_int(name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        none = " or None" if optional else ""
        raise ConfigError(f"`{name}` must be an integer >= {minimum}{none}, got {value!r}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"`{name}` must be a finite number, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"`{name}` must be True or False, got {value!r}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"`{name}` must be a non-empty string, got {value!r}")


def _check_optional_str(name: str, value: object, *, allow_empty: bool = False) -> None:
    if value is None or (allow_empty and value == ""):
        return
    if not isinstance(value, str):
        raise ConfigError(f"`{name}` must be a string or None, got {value!r}")
    if not allow_empty:
        _check_str(name, value)


def _check_prompt_specs(name: str, specs: object) -> None:
    if not isinstance(specs, tuple):
        raise ConfigError(f"`{name}` must be a list of `name[:split]` strings, got {specs!r}")
    for spec in specs:
        if (
            not isinstance(spec, str)
            or not spec.strip()
            or spec.count(":") > 1
            or spec.startswith(":")
            or spec.endswith(":")
        ):
            raise ConfigError(
                f"`{name}` entries must look like `name` or `name:split`, got {spec!r}"
            )
