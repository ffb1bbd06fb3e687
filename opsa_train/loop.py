"""The training loop that OPSA (`opsa_train.trainer`) and the SFT baseline
(`opsa_train.baseline`) share: step -> log -> maybe checkpoint, then ``final/``.

`TrainLoop` owns what both need: the student (float32 master weights, under
``accelerate`` when installed), AdamW and the schedule (`opsa_train.optim`), the data
position, resume from the last checkpoint, ``config.json``/``model.json``, the metrics
log, checkpoints and ``final/``. A subclass adds its own set-up, calls `_resume` last,
and defines `train_step` (one optimiser step, returning its metrics).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from flipsearch.atomic import atomic_write_text
from flipsearch.engines.chat import pad_token_id
from flipsearch.paths import recordable
from flipsearch.prompts import PromptRow
from opsa_train.checkpoint import (
    FINAL_DIR,
    capture_rng_state,
    final_step,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_final,
)
from opsa_train.config import RECORD_EXTRAS, TrainConfig
from opsa_train.data import make_sampler, total_steps
from opsa_train.errors import CheckpointError, OpsaConfigError
from opsa_train.metrics_log import MetricsLogger
from opsa_train.optim import load_model, make_adamw, make_scheduler
from opsa_train.preflight import Prepared

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "CONFIG_JSON",
    "MODEL_JSON",
    "TrainLoop",
    "TrainResult",
    "config_record",
    "write_model_record",
]

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
MODEL_JSON = "model.json"
"""The run's initial model by identity (:func:`flipsearch.models.model_identity`)."""


@dataclass(frozen=True)
class TrainResult:
    """What `train` (and `opsa_train.baseline.train_baseline`) returns."""

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


def config_record(config: TrainConfig, **extra: object) -> dict[str, Any]:
    """What ``config.json`` holds: the config plus ``extra`` (keys of :data:`RECORD_EXTRAS`),
    paths portable, no tokens (:func:`flipsearch.paths.recordable`)."""
    unknown = sorted(set(extra) - set(RECORD_EXTRAS))
    if unknown:
        raise ValueError(f"config.json extras must be among {RECORD_EXTRAS}, got {unknown}")
    return recordable({**config.to_dict(), **extra})


def _make_accelerator(config: TrainConfig, *, mixed: bool = True) -> Any | None:
    # accelerate when it imports (it is a dependency); a plain loop otherwise. With
    # mixed=False no bf16 autocast even when config.dtype is bfloat16.
    try:
        from accelerate import Accelerator
    except ImportError:
        logger.warning("accelerate is not installed: single-process training only")
        return None
    bf16 = mixed and config.dtype == "bfloat16"
    return Accelerator(mixed_precision="bf16" if bf16 else "no")


class TrainLoop:
    """The shared loop; subclasses define `train_step` and call `_resume` last.

    Args:
        config: the run's options.
        prepared: what `opsa_train.preflight.prepare` checked (model folder, prompts, ...);
            the number of steps comes from its prompts.
        rows: what the data sampler deals out, ``batch_size`` per step.
        record: what ``config.json`` holds; default: `config_record` of ``config``.
    """

    progress_desc = "train"
    autocast_on_cpu = True
    """False: bf16 autocast (``dtype: bfloat16``) on CUDA only; float32 compute on CPU."""

    def __init__(
        self,
        config: TrainConfig,
        prepared: Prepared,
        rows: Sequence[PromptRow],
        *,
        record: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.prepared = prepared
        self.tokenizer = prepared.tokenizer
        self.record = config_record(config) if record is None else record
        if self.autocast_on_cpu or torch.cuda.is_available():
            self.accelerator = _make_accelerator(config)
        else:
            self.accelerator = _make_accelerator(config, mixed=False)
        if getattr(self.accelerator, "distributed_type", None) == "FSDP":
            raise OpsaConfigError(
                "`accelerate launch` with FSDP is not supported by opsa_train yet, got "
                "distributed_type=FSDP: checkpoints and final/ would hold one process's "
                "shards and a resume would load them wrongly. Launch DDP instead "
                "(accelerate launch --multi_gpu: every GPU holds the whole model; "
                "docs/SCALE.md)"
            )
        self.device = self.accelerator.device if self.accelerator else torch.device("cpu")
        self.is_main = self.accelerator.is_main_process if self.accelerator else True
        self.num_processes = self.accelerator.num_processes if self.accelerator else 1
        self.process_index = self.accelerator.process_index if self.accelerator else 0
        launched = int(os.environ.get("WORLD_SIZE", self.num_processes))
        if launched != self.num_processes:
            raise OpsaConfigError(
                f"the launcher started WORLD_SIZE={launched} processes but accelerate sees "
                f"{self.num_processes}: each would train and write alone. On CPU set "
                "ACCELERATE_USE_CPU=true (accelerate launch --multi_gpu; see docs/SCALE.md)"
            )
        if config.batch_size % self.num_processes:
            raise OpsaConfigError(
                f"`batch_size` must be a multiple of the {self.num_processes} processes "
                f"(each trains an equal share of the global batch), got {config.batch_size}: "
                "choose a multiple or launch another number of processes"
            )

        # float32 master weights (autocast gives bf16 compute).
        self.model = load_model(prepared.model_path, torch.float32)
        self.model.config.use_cache = False
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model.train()
        self.pad_id = pad_token_id(self.tokenizer)
        self.optimizer = make_adamw(self.model, config)
        if self.accelerator is not None:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        else:
            self.model.to(self.device)
        self.total_steps = total_steps(config, len(prepared.rows))
        self.scheduler = make_scheduler(self._raw_optimizer, config, self.total_steps)
        self.data = make_sampler(rows, seed=config.seed, benign_share=config.benign_share)
        self.step = 0
        self.resumed_from: int | None = None

    # ---- what a subclass defines -------------------------------------------------------

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step (1-based ``step``); returns its metrics."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the subclass started (engines); called when `run` ends."""

    # ---- helpers for train_step ---------------------------------------------------------

    @property
    def student(self) -> PreTrainedModel:
        """The trained model without DDP/FSDP wrappers."""
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

    def next_local_batch(self) -> list[PromptRow]:
        """This process's share of the next global batch of ``batch_size`` prompts.

        Every process draws the whole batch (so the data position, saved by the main
        process, is the same on all) and keeps every ``num_processes``-th row from its
        index on: the processes together train each prompt of the batch once.
        """
        rows = self.data.next_batch(self.config.batch_size)
        return rows[self.process_index :: self.num_processes]

    def sum_over_processes(self, values: Mapping[str, float]) -> dict[str, float]:
        """``values`` summed key by key over the processes (one all-reduce; a copy with one
        process). Every process must pass the same keys, or a distributed run hangs."""
        if self.accelerator is None or self.num_processes == 1:
            return dict(values)
        keys = sorted(values)
        local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        summed = self.accelerator.reduce(local.to(self.device), reduction="sum")
        return dict(zip(keys, summed.cpu().tolist(), strict=True))

    def _global_tokens(self, local: float) -> torch.Tensor:
        # The step's token count summed over processes: the loss is a global token mean.
        count = torch.tensor(local, device=self.device)
        if self.accelerator is not None and self.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return count

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        # No gradient all-reduce before the step's last micro-batch.
        if self.accelerator is not None and not last and self.num_processes > 1:
            return self.accelerator.no_sync(self.model)
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step AdamW and the schedule, zero the gradients."""
        lr = self.scheduler.get_last_lr()[0]
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        if self.accelerator is not None:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train/grad_norm": float(norm), "train/lr": float(lr)}

    # ---- resume and the run folder ------------------------------------------------------

    def _resume(self, resume: bool | None) -> None:
        # True requires a checkpoint, False a fresh out_dir, None resumes if there is one.
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
            new = self.record
            changed = sorted(k for k in new if k in old and recordable(old[k]) != new[k])
            if changed:
                logger.warning("run folder config differs from this run in: %s", changed)
        text = json.dumps(self.record, indent=2) + "\n"
        if self.is_main and not (path.is_file() and path.read_text(encoding="utf-8") == text):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
            write_model_record(self.out_dir, self.config.model, self.prepared.model_path)

    # ---- the loop -----------------------------------------------------------------------

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
            # final/ is (re)written unless it already holds this step's weights.
            if self.is_main and final_step(final) != self.step:
                save_final(
                    self.student, self.tokenizer, final, dtype=self.config.dtype, step=self.step
                )
            if self.accelerator is not None:
                self.accelerator.wait_for_everyone()  # no rank returns before final/ exists
        finally:
            self.close()
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
                config=self.record,
            )
            if self.is_main
            else None
        )
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.progress_desc,
            disable=not self.is_main,
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


class Timer:
    """``with timer("time/x"):`` adds the block's wall time to ``timer.times["time/x"]``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start
