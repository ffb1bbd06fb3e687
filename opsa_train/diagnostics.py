"""What the OPSA trainer measures besides its loss (no gradients, nothing trained).

- `mean_kl`: the token-mean loss (the KL for KL losses) of the current student on
  fixed rollouts; `greedy_refusal_rate`: the offline judge on greedy responses;
- `rollout_metrics`: length, truncation and refusal rates of a step's rollouts, and
  the harmful rollouts split into refusal / compliance / non-answer shares (a student
  that learns to derail rather than refuse shows in ``rollout/non_answer_harmful``; a
  reasoning student whose trace runs past max_tokens in ``rollout/unfinished_harmful``);
- `trainer_logprobs` / `check_sync`: the vLLM sampler's log-probs of one sequence
  against the trainer's, which tells whether the engine received the new weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from flipsearch.engines.chat import template_opens_trace
from flipsearch.engines.teacher_forcing import build_completion_batch, completion_logits
from flipsearch.judges import judge_responses
from flipsearch.prompts import PromptRow
from flipsearch.types import Sampling
from opsa_train.rollout import Rollout, VLLMRollouts
from opsa_train.token_stats import token_logprobs

if TYPE_CHECKING:
    from flipsearch.judges import Judge
    from opsa_train.trainer import Trainer

__all__ = [
    "check_sync",
    "greedy_refusal_rate",
    "mean_kl",
    "rollout_counts",
    "rollout_metrics",
    "rollout_rates",
    "trainer_logprobs",
]

logger = logging.getLogger(__name__)

SYNC_WARN = 1.0  # |engine lp - trainer lp| above this means the engine missed the weights


def trainer_logprobs(
    trainer: Trainer, prompt_ids: Sequence[int], completion_ids: Sequence[int]
) -> list[float]:
    """The student's log-prob of each completion token (no grad): the trainer's view."""
    batch = build_completion_batch([list(prompt_ids)], [list(completion_ids)], trainer.pad_id)
    with torch.no_grad(), trainer._autocast():
        logits = completion_logits(trainer.model, batch)
        lp_B_T = token_logprobs(logits, batch.targets_B_T.to(logits.device))
    return lp_B_T[0, : len(completion_ids)].tolist()


def check_sync(trainer: Trainer, rollout: Rollout) -> dict[str, float]:
    """Engine vs trainer log-probs of one fixed sequence (vLLM only; {} for HF)."""
    if not isinstance(trainer.sampler, VLLMRollouts) or not rollout.completion_ids:
        return {}
    engine_lp = trainer.sampler.score(rollout.prompt_ids, rollout.completion_ids)
    trainer_lp = trainer_logprobs(trainer, rollout.prompt_ids, rollout.completion_ids)
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


def mean_kl(trainer: Trainer, rollouts: Sequence[Rollout]) -> float:
    """Token-mean per-token loss (the KL for KL losses) of the current student, no grad."""
    micro_batches = trainer.teacher_score(rollouts)
    total, count = 0.0, 0.0
    with torch.no_grad():
        for mb in micro_batches:
            with trainer._autocast():
                logits = completion_logits(trainer.model, mb.student)
            loss_B_T, _ = trainer.per_token_loss(logits, mb)
            keep = mb.mask_B_T.bool()
            total += float(torch.where(keep, loss_B_T, torch.zeros_like(loss_B_T)).sum())
            count += float(keep.sum())
    return total / max(count, 1.0)


def greedy_refusal_rate(
    trainer: Trainer, rows: Sequence[PromptRow], *, max_tokens: int = 32
) -> float:
    """The offline judge's refusal rate of the student's greedy responses to ``rows``."""
    with torch.no_grad(), trainer._autocast():
        rollouts = trainer.sampler.sample(rows, Sampling(greedy=True, max_tokens=max_tokens))
    verdicts = judge_responses(
        trainer.judge,
        [r.row.prompt for r in rollouts],
        [r.text for r in rollouts],
        opened_in_prompt=template_opens_trace(trainer.tokenizer),
    )
    return sum(bool(v.refusal) for v in verdicts) / max(1, len(verdicts))


def rollout_metrics(
    judge: Judge, rollouts: Sequence[Rollout], *, opened_in_prompt: bool = False
) -> dict[str, float]:
    """Mean length, truncated fraction, the judge's refusal rate by prompt type, and the
    harmful rollouts' ``rollout/compliance_harmful``, ``rollout/non_answer_harmful`` and
    ``rollout/unfinished_harmful`` shares (with ``rollout/refusal_harmful`` they sum to 1,
    less any invalid verdicts; NaN without harmful rollouts).

    The judge reads each rollout's final answer after ``</think>``; a trace that never
    closed is ``unfinished`` (:func:`flipsearch.judges.judge_responses`).
    ``opened_in_prompt``: the chat template opens ``<think>`` in the prompt."""
    return rollout_rates(rollout_counts(judge, rollouts, opened_in_prompt=opened_in_prompt))


def rollout_counts(
    judge: Judge, rollouts: Sequence[Rollout], *, opened_in_prompt: bool = False
) -> dict[str, float]:
    """The counts behind `rollout_metrics` (``count/...`` keys, always the same ones), so
    the processes of a distributed run can add theirs up before `rollout_rates`."""
    verdicts = judge_responses(
        judge,
        [r.row.prompt for r in rollouts],
        [r.text for r in rollouts],
        opened_in_prompt=opened_in_prompt,
    )
    out: dict[str, float] = {
        "count/rollouts": float(len(rollouts)),
        "count/completion_tokens": float(sum(len(r.completion_ids) for r in rollouts)),
        "count/truncated": float(sum(r.finish_reason == "length" for r in rollouts)),
    }
    for kind in ("harmful", "benign"):
        picked = [v for r, v in zip(rollouts, verdicts, strict=True) if r.row.type == kind]
        out[f"count/{kind}"] = float(len(picked))
        out[f"count/refusal_{kind}"] = float(sum(bool(v.refusal) for v in picked))
    harmful = [v for r, v in zip(rollouts, verdicts, strict=True) if r.row.type == "harmful"]
    for outcome, name in (
        ("compliance", "compliance"),
        ("other", "non_answer"),
        ("unfinished", "unfinished"),
    ):
        out[f"count/{name}_harmful"] = float(sum(v.outcome == outcome for v in harmful))
    return out


def rollout_rates(counts: dict[str, float]) -> dict[str, float]:
    """`rollout_metrics` from (possibly summed) `rollout_counts`."""

    def share(part: str, whole: str) -> float:
        return counts[part] / counts[whole] if counts[whole] else math.nan

    out = {
        "rollout/length_mean": share("count/completion_tokens", "count/rollouts"),
        "rollout/truncated_frac": share("count/truncated", "count/rollouts"),
    }
    for kind in ("harmful", "benign"):
        out[f"rollout/refusal_{kind}"] = share(f"count/refusal_{kind}", f"count/{kind}")
    for name in ("compliance", "non_answer", "unfinished"):
        out[f"rollout/{name}_harmful"] = share(f"count/{name}_harmful", "count/harmful")
    return out
