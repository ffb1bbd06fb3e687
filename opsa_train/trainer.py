"""The OPSA training loop: sample -> teacher score -> loss -> step -> log -> maybe checkpoint.

On-policy self-distillation for safety alignment (arXiv 2605.15239). Each step:

1. **sample**: the student generates ``n_rollouts`` responses per prompt to the plain
   prompt, no context (`opsa_train.rollout`; the HF sampler is the training model
   itself, the vLLM one gets the new weights after every step).
2. **teacher score**: a frozen copy of the *initial* weights reads
   [type-conditional context + prompt] and the student's exact tokens, with the same
   chat template (:func:`flipsearch.engines.chat.render_prompt_ids`) and the context
   placed as the export file says (:meth:`flipsearch.contexts.Context.apply`). Benign
   prompts without an I_b get no context (see `opsa_train.data`).
3. **loss**: the per-token KL of ``config.loss`` (`opsa_train.losses`), token mean over
   the whole global batch (``masked_token_mean(num_tokens=...)``), so gradient
   accumulation gives the same gradient as one big batch.
4. **step**: AdamW on float32 master weights (bf16 only inside autocast: a bf16 weight
   cannot hold an update of lr 1e-5 relative), warm-up + cosine/constant schedule,
   global-norm clipping; then the vLLM sampler (if any) receives the new weights.
5. **log** (``metrics.jsonl``/``.csv``) and **maybe checkpoint** (``checkpoints/step-N``).

How it departs from the textbook recipe: the teacher is the *initial* model, never
updated (no EMA), and it differs from the student only by the privileged context, so
the KL at step 0 is exactly the context's effect on the student's own responses.

Multi-GPU: the loop runs under ``accelerate launch`` (see ``opsa_train/fsdp_config.yaml``
and the README); the token count is summed over processes so the loss stays a global
token mean. The single-process CPU path needs no launcher and is the tested one.

Example (a CPU smoke run of a few minutes)::

    opsa-train run --context best.json --out runs/smoke --steps 4 batch_size=2 max_new_tokens=16

or from Python::

    from opsa_train.config import TrainConfig
    from opsa_train.trainer import train
    result = train(TrainConfig.cpu_default(out_dir="runs/R"), context_file="best.json")
    result.final_dir  # runs/R/final, loadable by EngineConfig(model="runs/R/final")
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flipsearch.atomic import atomic_write_text
from flipsearch.engines.chat import pad_token_id, render_prompt_ids
from flipsearch.engines.teacher_forcing import (
    CompletionBatch,
    build_completion_batch,
    completion_logits,
)
from flipsearch.errors import FlipsearchError
from flipsearch.export import ExportFile
from flipsearch.judges import make_judge
from flipsearch.models import resolve_model
from flipsearch.paths import recordable
from flipsearch.prompts import PromptRow
from flipsearch.types import Sampling
from opsa_train import preflight
from opsa_train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from opsa_train.config import TrainConfig
from opsa_train.data import (
    PromptSampler,
    TeacherContexts,
    load_train_prompts,
    student_conversation,
    total_steps,
)
from opsa_train.errors import CheckpointError, ConfigError, PreflightError
from opsa_train.losses import (
    full_vocab_kl_loss,
    kl_by_position,
    masked_token_mean,
    sampled_token_reverse_kl_loss,
    teacher_topk,
    token_logprobs,
    topk_kl_loss,
)
from opsa_train.metrics_log import MetricsLogger
from opsa_train.rollout import HFRollouts, Rollout, RolloutSampler, VLLMRollouts, rollout_seed

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
MODEL_JSON = "model.json"
"""The run's initial model by identity (:func:`flipsearch.models.model_identity`)."""
FINAL_DIR = "final"
FINAL_MARKER = "opsa_final.json"
FIRST_TOKENS = 16  # kl_by_position split: safety acts mostly on the first tokens
SYNC_WARN = 1.0  # |engine lp - trainer lp| above this means the engine missed the weights


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns."""

    out_dir: Path
    final_dir: Path
    """An HF folder (model, tokenizer, generation config): ``EngineConfig(model=...)``."""
    steps: int
    """Optimiser steps done in total (including those before a resume)."""
    resumed_from: int | None
    """The checkpoint step this call resumed from; None for a fresh run."""
    last_metrics: dict[str, Any] = field(default_factory=dict)
    """The last logged metrics row (empty when this call ran no step)."""


def write_model_record(out_dir: Path, spec: str, path: Path) -> Path:
    """Write ``<out_dir>/model.json``: the initial model by identity (name or hub id,
    ``$FLIPSEARCH_CACHE``-relative folder, content fingerprint), never an absolute path."""
    from flipsearch.models import model_identity

    return atomic_write_text(
        Path(out_dir) / MODEL_JSON, json.dumps(model_identity(spec, path), indent=2) + "\n"
    )


# --------------------------------------------------------------------------------------
# Preparation: preflight + models


@dataclass
class _Prepared:
    # Everything checked before the first step.
    export: Any
    model_path: Path
    contexts: TeacherContexts
    rows: list[PromptRow]
    tokenizer: PreTrainedTokenizerBase
    window: int
    longest_student_prompt: int


def prepare(config: TrainConfig, *, export: ExportFile | None = None) -> _Prepared:
    """Run every pre-flight check that needs no model weights (seconds).

    Args:
        config: the run's options.
        export: an in-memory export (e.g. `preflight.hand_written_export`) used instead
            of reading ``config.context_file``.

    Raises:
        PreflightError: naming the field and value at fault (see `opsa_train.preflight`).
    """
    from transformers import AutoConfig, AutoTokenizer

    if export is None:
        export = preflight.read_context_file(config.context_file)
    try:
        model_path = resolve_model(config.model)
    except FlipsearchError as exc:
        raise PreflightError(
            f"`model` must resolve to a model folder, got {config.model!r}: {exc}"
        ) from exc
    preflight.check_run_folder(config.out_dir, model=config.model, model_path=model_path)
    preflight.check_export_model(
        export, model=config.model, model_path=model_path, policy=config.export_model_mismatch
    )
    contexts = TeacherContexts.from_export(export, config)
    rows = load_train_prompts(config)
    preflight.check_has_harmful(rows, has_harmful_context=contexts.harmful is not None)

    student_tok = AutoTokenizer.from_pretrained(model_path)
    teacher_tok = AutoTokenizer.from_pretrained(model_path)
    model_config = AutoConfig.from_pretrained(model_path)
    vocab = getattr(model_config, "vocab_size", None)
    preflight.check_tokenizers(
        student_tok, teacher_tok, student_vocab_size=vocab, teacher_vocab_size=vocab
    )
    teacher_convs = [contexts.conversation(r) for r in rows]
    ids = [r.id for r in rows]
    preflight.check_conversations(teacher_convs, ids)
    teacher_lens = [len(render_prompt_ids(teacher_tok, c)) for c in teacher_convs]
    student_lens = [len(render_prompt_ids(student_tok, student_conversation(r))) for r in rows]
    window = int(getattr(model_config, "max_position_embeddings", 0) or 0) or 2048
    preflight.check_window(
        [max(t, s) for t, s in zip(teacher_lens, student_lens, strict=True)],
        ids,
        max_new_tokens=config.max_new_tokens,
        window=window,
    )
    return _Prepared(
        export=export,
        model_path=model_path,
        contexts=contexts,
        rows=rows,
        tokenizer=student_tok,
        window=window,
        longest_student_prompt=max(student_lens),
    )


def load_model(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """A causal LM from a model folder in ``dtype`` (training: no eval/no-grad switches)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def _make_accelerator(config: TrainConfig) -> Any | None:
    # accelerate when it imports (it is a dependency); a plain loop otherwise.
    try:
        from accelerate import Accelerator
    except ImportError:
        logger.warning("accelerate is not installed: single-process training only")
        return None
    mixed = "bf16" if config.dtype == "bfloat16" else "no"
    return Accelerator(mixed_precision=mixed)


def make_adamw(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over all parameters with the config's lr, betas and weight decay.

    The fused kernel (CPU and CUDA, float32 master weights) is several times faster than
    the per-tensor loop; it falls back where this torch build lacks it.
    """
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
    raise ConfigError(f"`schedule` must be 'cosine' or 'constant', got {schedule!r}")


# --------------------------------------------------------------------------------------
# Teacher scores per micro-batch


@dataclass
class _MicroBatch:
    rollouts: list[Rollout]
    student: CompletionBatch
    teacher: CompletionBatch
    mask_B_T: torch.Tensor
    topk_lp_B_T_K: torch.Tensor | None = None
    topk_ids_B_T_K: torch.Tensor | None = None
    logits_B_T_V: torch.Tensor | None = None  # mixed_full only
    token_lp_B_T: torch.Tensor | None = None  # sampled_token only


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# --------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One OPSA run: build with a config, call `run` (or use the stages one by one).

    The stages are public so tests and notebooks can drive them: `sample`,
    `teacher_score`, `loss_and_backward`, `optimizer_step`, plus the evaluation helpers
    `mean_kl` and `greedy_refusal_rate`.

    Args:
        config: the run's options (see :class:`opsa_train.config.TrainConfig`).
        resume: True requires a checkpoint in ``out_dir``; False starts fresh (an
            existing checkpoint index raises); None (default) resumes if one exists.

    Raises:
        PreflightError: a pre-flight check failed.
        CheckpointError: ``resume`` does not fit what ``out_dir`` holds.
    """

    def __init__(self, config: TrainConfig, *, resume: bool | None = None) -> None:
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.prepared = prepare(config)
        self.contexts = self.prepared.contexts
        self.tokenizer = self.prepared.tokenizer
        self.accelerator = _make_accelerator(config)
        self.device = self.accelerator.device if self.accelerator else torch.device("cpu")
        self.is_main = self.accelerator.is_main_process if self.accelerator else True
        self.num_processes = self.accelerator.num_processes if self.accelerator else 1

        # Student: float32 master weights (autocast gives bf16 compute). Teacher: frozen
        # copy of the initial weights, stored in the compute dtype (it is never updated).
        self.model = load_model(self.prepared.model_path, torch.float32)
        self.model.config.use_cache = False
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model.train()
        self.teacher = load_model(self.prepared.model_path, getattr(torch, config.dtype))
        self.teacher.eval().requires_grad_(False).to(self.device)
        preflight.check_tokenizers(
            self.tokenizer,
            self.tokenizer,
            student_vocab_size=self.model.get_output_embeddings().weight.shape[0],
            teacher_vocab_size=self.teacher.get_output_embeddings().weight.shape[0],
        )
        self.pad_id = pad_token_id(self.tokenizer)
        self.optimizer = make_adamw(self.model, config)
        if self.accelerator is not None:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        else:
            self.model.to(self.device)
        self.total_steps = total_steps(config, len(self.prepared.rows))
        warmup = config.warmup_steps or int(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self._raw_optimizer,
            lambda s: lr_factor(s, total=self.total_steps, warmup=warmup, schedule=config.schedule),
        )
        self.data = PromptSampler(self.prepared.rows, seed=config.seed)
        self.judge = make_judge("refusal")
        self.step = 0
        self.resumed_from: int | None = None
        self._resume(resume)
        self.sampler = self._build_sampler()

    # ---- setup helpers ------------------------------------------------------------------

    @property
    def student(self) -> PreTrainedModel:
        """The student without DDP/FSDP wrappers."""
        if self.accelerator is not None:
            return self.accelerator.unwrap_model(self.model)
        return self.model

    @property
    def _raw_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.accelerator is not None:
            return self.accelerator.autocast()
        return contextlib.nullcontext()

    def _resume(self, resume: bool | None) -> None:
        info = latest_checkpoint(self.out_dir)
        if resume is True and info is None:
            raise CheckpointError(
                f"`resume` needs a complete checkpoint in {str(self.out_dir)!r}, got none: "
                "drop --resume to start a new run"
            )
        if resume is False and info is not None:
            raise CheckpointError(
                f"`out_dir` {str(self.out_dir)!r} must not hold checkpoints for a fresh run, got "
                f"step {info.step}: pass --resume to continue it or choose another --out"
            )
        self._check_config_file()
        if info is None:
            return
        loaded = load_checkpoint(
            info.path, model=self.student, optimizer=self._raw_optimizer, scheduler=self.scheduler
        )
        self.data.load_state_dict(loaded.data_state)
        self.step = self.resumed_from = loaded.step
        logger.info("resumed from %s (step %d of %d)", info.path, self.step, self.total_steps)

    def _check_config_file(self) -> None:
        # config.json holds the resolved config; a resume with other options warns.
        path = self.out_dir / CONFIG_JSON
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = {}
            # Recorded with portable paths (recordable): compare in that form.
            new = recordable(self.config.to_dict())
            changed = sorted(k for k in new if k in old and recordable(old[k]) != new[k])
            if changed:
                logger.warning("run folder config differs from this run in: %s", changed)
        text = json.dumps(recordable(self.config.to_dict()), indent=2) + "\n"
        if self.is_main and not (path.is_file() and path.read_text(encoding="utf-8") == text):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
            write_model_record(self.out_dir, self.config.model, self.prepared.model_path)

    def _build_sampler(self) -> RolloutSampler:
        from flipsearch.engines import EngineConfig, choose_engine

        name = choose_engine(self.config.engine, self.config.dtype).engine
        if name == "hf":
            size = self.config.rollout_batch_size or self.config.batch_size
            return HFRollouts(self.student, self.tokenizer, batch_size=size)
        need = self.prepared.longest_student_prompt + self.config.max_new_tokens
        engine = EngineConfig(
            model=str(self.prepared.model_path),
            engine="vllm",
            dtype=self.config.dtype,
            max_model_len=min(self.prepared.window, 256 * math.ceil(need / 256)),
        ).build()
        preflight.check_tokenizers(self.tokenizer, engine.tokenizer)
        sampler = VLLMRollouts(engine)  # type: ignore[arg-type]
        if self.step > 0:  # resumed: the engine started from the initial weights
            sampler.sync(self._named_weights())
        return sampler

    def _named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, param in self.student.named_parameters():
            yield name, param.detach()

    # ---- stage 1: sample ----------------------------------------------------------------

    def sampling(self, step: int) -> Sampling:
        """The rollout options of optimiser step ``step`` (seeded by step, for resume)."""
        return Sampling(
            n=self.config.n_rollouts,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            seed=rollout_seed(self.config.seed, step),
        )

    def sample(self, rows: Sequence[PromptRow], step: int) -> list[Rollout]:
        """The student's rollouts for ``rows`` (``n_rollouts`` each, no context)."""
        with torch.no_grad(), self._autocast():
            return self.sampler.sample(rows, self.sampling(step))

    # ---- stage 2: teacher score -------------------------------------------------------

    def teacher_score(self, rollouts: Sequence[Rollout]) -> list[_MicroBatch]:
        """Split into micro-batches and score each with the frozen teacher.

        The teacher reads [context + prompt] then the student's exact tokens; its
        outputs are kept as the loss needs them: top-k log-probs and ids (``*_topk``),
        full logits (``mixed_full``) or the sampled tokens' log-probs (``sampled_token``).
        """
        size = self.config.micro_batch_size * self.config.n_rollouts
        out = []
        for chunk in _chunks(rollouts, size):
            completions = [r.completion_ids for r in chunk]
            teacher_prompts = [
                render_prompt_ids(self.tokenizer, self.contexts.conversation(r.row)) for r in chunk
            ]
            mb = _MicroBatch(
                rollouts=chunk,
                student=build_completion_batch(
                    [r.prompt_ids for r in chunk], completions, self.pad_id
                ),
                teacher=build_completion_batch(teacher_prompts, completions, self.pad_id),
                mask_B_T=torch.empty(0),
            )
            mb.mask_B_T = mb.student.completion_mask_B_T.to(self.device)
            with torch.no_grad():
                logits_B_T_V = completion_logits(self.teacher, mb.teacher)
                loss = self.config.loss
                if loss.endswith("_topk"):
                    mb.topk_lp_B_T_K, mb.topk_ids_B_T_K = teacher_topk(
                        logits_B_T_V, self.config.top_k
                    )
                elif loss == "mixed_full":
                    mb.logits_B_T_V = logits_B_T_V
                elif loss == "sampled_token":
                    targets = mb.teacher.targets_B_T.to(self.device)
                    mb.token_lp_B_T = token_logprobs(logits_B_T_V, targets)
                else:
                    raise ConfigError(f"`loss` must be one of the known losses, got {loss!r}")
                del logits_B_T_V
            out.append(mb)
        return out

    # ---- stage 3: loss ------------------------------------------------------------------

    def per_token_loss(
        self, student_logits_B_T_V: torch.Tensor, mb: _MicroBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-token loss of ``config.loss`` (B, T) and detached per-token diagnostics."""
        cfg = self.config
        extras: dict[str, torch.Tensor] = {}
        if cfg.loss.endswith("_topk"):
            assert mb.topk_lp_B_T_K is not None and mb.topk_ids_B_T_K is not None
            loss_B_T = topk_kl_loss(
                student_logits_B_T_V,
                mb.topk_lp_B_T_K,
                mb.topk_ids_B_T_K,
                alpha=cfg.kl_alpha,
                tail_bucket=cfg.tail_bucket,
            )
            with torch.no_grad():
                detached = student_logits_B_T_V.detach()
                for key, alpha in (("kl_fwd", 1.0), ("kl_rev", 0.0)):
                    extras[key] = topk_kl_loss(
                        detached,
                        mb.topk_lp_B_T_K,
                        mb.topk_ids_B_T_K,
                        alpha=alpha,
                        tail_bucket=cfg.tail_bucket,
                    )
        elif cfg.loss == "mixed_full":
            assert mb.logits_B_T_V is not None
            loss_B_T = full_vocab_kl_loss(
                student_logits_B_T_V, mb.logits_B_T_V, alpha=cfg.kl_alpha, chunk_size=cfg.chunk_size
            )
        elif cfg.loss == "sampled_token":
            assert mb.token_lp_B_T is not None
            targets = mb.student.targets_B_T.to(student_logits_B_T_V.device)
            student_lp_B_T = token_logprobs(student_logits_B_T_V, targets)
            # On-policy: the "old" policy is the current one, so the ratio is exactly 1.
            loss_B_T = sampled_token_reverse_kl_loss(
                student_lp_B_T, mb.token_lp_B_T, student_lp_B_T.detach()
            )
        else:
            raise ConfigError(f"`loss` must be one of the known losses, got {cfg.loss!r}")
        return loss_B_T, extras

    def _global_tokens(self, micro_batches: Sequence[_MicroBatch]) -> torch.Tensor:
        local = sum(float(mb.mask_B_T.sum()) for mb in micro_batches)
        count = torch.tensor(local, device=self.device)
        if self.accelerator is not None and self.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return count

    def loss_and_backward(self, micro_batches: Sequence[_MicroBatch]) -> dict[str, float]:
        """Forward/backward every micro-batch; gradients accumulate to the global token mean.

        Returns:
            ``train/loss``, ``train/kl``, the first-tokens/rest split and, for top-k
            losses, ``train/kl_fwd``/``train/kl_rev`` (this process's tokens).
        """
        num_tokens = self._global_tokens(micro_batches)
        # DDP averages gradients over processes; the token mean wants their sum.
        scale = float(self.num_processes)
        total = torch.zeros((), device=self.device)
        kl_rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        extra_sums: dict[str, float] = {}
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = (
                self.accelerator.no_sync(self.model)
                if self.accelerator is not None and not last and self.num_processes > 1
                else contextlib.nullcontext()
            )
            with sync:
                with self._autocast():
                    logits_B_T_V = completion_logits(self.model, mb.student)
                loss_B_T, extras = self.per_token_loss(logits_B_T_V, mb)
                loss = masked_token_mean(loss_B_T, mb.mask_B_T, num_tokens=num_tokens) * scale
                if self.accelerator is not None:
                    self.accelerator.backward(loss)
                else:
                    loss.backward()
            total += loss.detach() / scale
            kl_rows.append((loss_B_T.detach(), mb.mask_B_T))
            for key, value_B_T in extras.items():
                kept = torch.where(mb.mask_B_T.bool(), value_B_T, torch.zeros_like(value_B_T))
                extra_sums[key] = extra_sums.get(key, 0.0) + float(kept.sum())
            del logits_B_T_V, loss_B_T, loss
        kl_B_T, mask_B_T = _pad_cat(kl_rows)
        first, rest = kl_by_position(kl_B_T, mask_B_T, first_n=FIRST_TOKENS)
        n_local = max(1.0, float(mask_B_T.sum()))
        metrics = {
            "train/loss": float(total),
            "train/kl": float(masked_token_mean(kl_B_T, mask_B_T)),
            f"train/kl_first{FIRST_TOKENS}": first,
            "train/kl_rest": rest,
            "train/tokens": float(num_tokens),
        }
        metrics.update({f"train/{k}": v / n_local for k, v in extra_sums.items()})
        return metrics

    # ---- stage 4: step --------------------------------------------------------------------

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step AdamW and the schedule, zero the gradients, sync the sampler."""
        lr = self.scheduler.get_last_lr()[0]
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        if self.accelerator is not None:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        self.sampler.sync(self._named_weights())
        return {
            "train/grad_norm": float(norm),
            "train/lr": float(lr),
            "time/sync": time.perf_counter() - start,
        }

    # ---- checks and evaluation --------------------------------------------------------------

    def trainer_logprobs(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int]
    ) -> list[float]:
        """The student's log-prob of each completion token (no grad): the trainer's view."""
        batch = build_completion_batch([list(prompt_ids)], [list(completion_ids)], self.pad_id)
        with torch.no_grad(), self._autocast():
            logits = completion_logits(self.model, batch)
            lp_B_T = token_logprobs(logits, batch.targets_B_T.to(logits.device))
        return lp_B_T[0, : len(completion_ids)].tolist()

    def check_sync(self, rollout: Rollout) -> dict[str, float]:
        """Engine vs trainer log-probs of one fixed sequence (vLLM only; {} for HF)."""
        if not isinstance(self.sampler, VLLMRollouts) or not rollout.completion_ids:
            return {}
        engine_lp = self.sampler.score(rollout.prompt_ids, rollout.completion_ids)
        trainer_lp = self.trainer_logprobs(rollout.prompt_ids, rollout.completion_ids)
        diffs = [abs(a - b) for a, b in zip(engine_lp, trainer_lp, strict=True)]
        worst = max(diffs)
        if worst > SYNC_WARN:
            logger.warning(
                "vLLM weight sync check: max |engine - trainer| log-prob %.3f > %.1f; the "
                "engine may not have received the trained weights",
                worst,
                SYNC_WARN,
            )
        return {
            "sync/max_abs_logprob_diff": worst,
            "sync/mean_abs_logprob_diff": sum(diffs) / len(diffs),
        }

    def mean_kl(self, rollouts: Sequence[Rollout]) -> float:
        """Token-mean per-token loss (the KL for KL losses) of the current student, no grad."""
        micro_batches = self.teacher_score(rollouts)
        total, count = 0.0, 0.0
        with torch.no_grad():
            for mb in micro_batches:
                with self._autocast():
                    logits = completion_logits(self.model, mb.student)
                loss_B_T, _ = self.per_token_loss(logits, mb)
                keep = mb.mask_B_T.bool()
                total += float(torch.where(keep, loss_B_T, torch.zeros_like(loss_B_T)).sum())
                count += float(keep.sum())
        return total / max(count, 1.0)

    def greedy_refusal_rate(self, rows: Sequence[PromptRow], *, max_tokens: int = 32) -> float:
        """The offline judge's refusal rate of the student's greedy responses to ``rows``."""
        with torch.no_grad(), self._autocast():
            rollouts = self.sampler.sample(rows, Sampling(greedy=True, max_tokens=max_tokens))
        verdicts = self.judge.judge([r.row.prompt for r in rollouts], [r.text for r in rollouts])
        return sum(bool(v.refusal) for v in verdicts) / max(1, len(verdicts))

    def _rollout_metrics(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        verdicts = self.judge.judge([r.row.prompt for r in rollouts], [r.text for r in rollouts])
        out: dict[str, float] = {
            "rollout/length_mean": sum(len(r.completion_ids) for r in rollouts) / len(rollouts),
            "rollout/truncated_frac": sum(r.finish_reason == "length" for r in rollouts)
            / len(rollouts),
        }
        for kind in ("harmful", "benign"):
            picked = [v for r, v in zip(rollouts, verdicts, strict=True) if r.row.type == kind]
            out[f"rollout/refusal_{kind}"] = (
                sum(bool(v.refusal) for v in picked) / len(picked) if picked else math.nan
            )
        return out

    # ---- the loop ---------------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step (1-based ``step``): the whole loop body, timed stage by stage."""
        timer = _Timer()
        rows = self.data.next_batch(self.config.batch_size)
        with timer("time/rollout"):
            rollouts = self.sample(rows, step)
        with timer("time/teacher"):
            micro_batches = self.teacher_score(rollouts)
        with timer("time/loss"):
            metrics = self.loss_and_backward(micro_batches)
        with timer("time/step"):
            metrics.update(self.optimizer_step())
        metrics.update(self._rollout_metrics(rollouts))
        if (
            isinstance(self.sampler, VLLMRollouts)
            and self.config.sync_check_every
            and step % self.config.sync_check_every == 0
        ):
            with timer("time/sync_check"):
                metrics.update(self.check_sync(rollouts[0]))
        metrics.update(timer.times)
        metrics["time/total"] = sum(timer.times.values())
        metrics["perf/tokens_per_s"] = metrics["train/tokens"] / max(metrics["time/total"], 1e-9)
        return metrics

    def maybe_checkpoint(self, step: int, *, force: bool = False) -> Path | None:
        """Save ``checkpoints/step-N`` every ``checkpoint_every`` steps (or when forced)."""
        every = self.config.checkpoint_every
        if not force and not (every and step % every == 0):
            return None
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        path = save_checkpoint(
            self.out_dir,
            step=step,
            model=self.student,
            optimizer=self._raw_optimizer,
            scheduler=self.scheduler,
            rng_state=capture_rng_state(),
            data_state=self.data.state_dict(),
        )
        if self.config.keep_checkpoints is not None:
            prune_checkpoints(self.out_dir, self.config.keep_checkpoints)
        return path

    def run(self) -> TrainResult:
        """Train from ``self.step`` to the last step, then write ``final/``.

        A run already at its last step trains nothing and, when ``final/`` holds that
        step, writes nothing (re-running a finished run is a no-op). Only the main
        process writes (metrics, checkpoints, ``final/``); the others train alongside.
        """
        final = self.out_dir / FINAL_DIR
        last: dict[str, Any] = {}
        try:
            if self.step < self.total_steps:
                last = self._train_to_end()
            elif self.step > self.total_steps:
                logger.warning(
                    "%s is at step %d, past the %d steps asked for: nothing to train",
                    self.out_dir,
                    self.step,
                    self.total_steps,
                )
            if self.is_main and self._final_needed(final):
                save_final(
                    self.student, self.tokenizer, final, dtype=self.config.dtype, step=self.step
                )
            if self.accelerator is not None:
                self.accelerator.wait_for_everyone()  # no rank returns before final/ exists
        finally:
            self.sampler.close()
        return TrainResult(
            out_dir=self.out_dir,
            final_dir=final,
            steps=self.step,
            resumed_from=self.resumed_from,
            last_metrics=last,
        )

    def _train_to_end(self) -> dict[str, Any]:
        # The loop of `run`: steps, logs (main process only) and checkpoints; the last
        # step is always checkpointed. Returns the last logged metrics row.
        from tqdm.auto import tqdm

        cfg = self.config
        last: dict[str, Any] = {}
        log = (
            MetricsLogger(
                self.out_dir,
                tensorboard=cfg.tensorboard,
                wandb=cfg.wandb,
                wandb_project=cfg.wandb_project,
                config=recordable(cfg.to_dict()),
            )
            if self.is_main
            else None
        )
        progress = tqdm(
            total=self.total_steps, initial=self.step, desc="opsa-train", disable=not self.is_main
        )
        with log or contextlib.nullcontext(), progress:
            while self.step < self.total_steps:
                step = self.step + 1
                metrics = self.train_step(step)
                self.step = step
                if log is not None and (step % cfg.log_every == 0 or step == self.total_steps):
                    log.log(step, metrics)
                    last = {"step": step, **metrics}
                progress.update(1)
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
                self.maybe_checkpoint(step)
        every = cfg.checkpoint_every
        if not (every and self.step % every == 0):  # same decision on every rank
            self.maybe_checkpoint(self.step, force=True)
        return last

    def _final_needed(self, final: Path) -> bool:
        # final/ is (re)written unless it already holds this step's weights.
        try:
            meta = json.loads((final / FINAL_MARKER).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return True
        return not isinstance(meta, dict) or meta.get("step") != self.step


# --------------------------------------------------------------------------------------
# Helpers


class _Timer:
    # `with timer("time/x"):` adds the block's wall time to timer.times["time/x"].
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start


def _pad_cat(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    # Stack (B_i, T_i) pairs into one right-padded (sum B_i, max T_i) pair.
    width = max(t.shape[1] for t, _ in rows)
    values = [torch.nn.functional.pad(t.float(), (0, width - t.shape[1])) for t, _ in rows]
    masks = [torch.nn.functional.pad(m.float(), (0, width - m.shape[1])) for _, m in rows]
    return torch.cat(values), torch.cat(masks)


def save_final(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    *,
    dtype: str,
    step: int,
) -> Path:
    """Write an HF folder (model in ``dtype``, tokenizer, generation config) atomically.

    The folder is written under a temporary name and renamed; an older ``final/`` is
    moved aside first and deleted after. ``opsa_final.json`` (the step) is written last.
    So ``final/`` is always whole; a kill between the two renames leaves none, and the
    next ``run`` rewrites it from the last checkpoint (always saved before ``final/``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent))
    try:
        target = getattr(torch, dtype)
        state = {k: v.detach().to(target) for k, v in model.state_dict().items()}
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # config.json says the weights' dtype, so loaders default to it.
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["torch_dtype"] = cfg["dtype"] = dtype
        cfg["use_cache"] = True
        cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        atomic_write_text(tmp / FINAL_MARKER, json.dumps({"step": step, "dtype": dtype}) + "\n")
        if path.exists():
            old = path.with_name(f"{path.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def train(
    config: TrainConfig,
    *,
    context_file: str | Path | None = None,
    resume: bool | None = None,
) -> TrainResult:
    """Run OPSA training and return where the results are.

    Example:
        >>> cfg = TrainConfig.cpu_default(out_dir="runs/R")
        >>> result = train(cfg, context_file="best.json")  # doctest: +SKIP
        >>> result.final_dir  # doctest: +SKIP
        PosixPath('runs/R/final')

    Args:
        config: the run's options.
        context_file: the flipsearch export file; overrides ``config.context_file``.
        resume: None resumes from ``out_dir``'s last checkpoint if there is one; True
            requires one; False requires a fresh ``out_dir``.

    Raises:
        PreflightError: a pre-flight check failed (nothing was trained).
        CheckpointError: ``resume`` does not fit the run folder, or a checkpoint is bad.
    """
    if context_file is not None:
        config = dataclasses.replace(config, context_file=str(context_file))
    return Trainer(config, resume=resume).run()


main = train
