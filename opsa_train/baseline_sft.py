"""The baseline's SFT step in the shared training loop (`opsa_train.loop.TrainLoop`).

`opsa_train.baseline.train_baseline` collects the kept answers (`SFTExample`) and runs
`SFTTrainer`: cross-entropy on the kept response tokens given the plain prompt, token
mean over the step, with the OPSA run's optimiser, schedule, checkpoints and ``final/``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from flipsearch.engines.teacher_forcing import build_completion_batch, completion_logits
from flipsearch.prompts import PromptRow
from opsa_train.baseline import SFTExample
from opsa_train.config import TrainConfig
from opsa_train.loop import TrainLoop
from opsa_train.preflight import Prepared
from opsa_train.token_stats import masked_token_mean, token_logprobs

__all__ = ["SFTTrainer"]


def _sft_loss(
    model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int, num_tokens: float
) -> tuple[torch.Tensor, float]:
    # Token-summed CE of one micro-batch divided by the whole step's token count.
    batch = build_completion_batch(
        [e.prompt_ids for e in examples], [e.completion_ids for e in examples], pad_id
    )
    logits_B_T_V = completion_logits(model, batch).float()
    targets_B_T = batch.targets_B_T.to(logits_B_T_V.device)
    nll_B_T = -token_logprobs(logits_B_T_V, targets_B_T)
    mask_B_T = batch.completion_mask_B_T.to(logits_B_T_V.device)
    loss = masked_token_mean(nll_B_T, mask_B_T, num_tokens=num_tokens)
    return loss, float(torch.where(mask_B_T.bool(), nll_B_T.detach(), 0.0).sum())


class SFTTrainer(TrainLoop):
    """The shared loop (`opsa_train.loop.TrainLoop`) with an SFT step: cross-entropy on
    the kept answers given the plain prompt, token mean over the step."""

    progress_desc = "baseline-sft"
    autocast_on_cpu = False  # as the baseline always did: bf16 autocast on CUDA only

    def __init__(
        self,
        config: TrainConfig,
        prepared: Prepared,
        examples: Sequence[SFTExample],
        *,
        record: dict[str, Any],
    ) -> None:
        rows = [PromptRow(f"{ex.row_id}#{i}", ex.prompt, ex.type) for i, ex in enumerate(examples)]
        self.examples = {row.id: ex for row, ex in zip(rows, examples, strict=True)}
        super().__init__(config, prepared, rows, record=record)
        self._resume(None)

    def train_step(self, step: int) -> dict[str, float]:
        """One SFT step over ``batch_size`` kept answers, micro-batch by micro-batch."""
        start = time.perf_counter()
        batch = [self.examples[r.id] for r in self.next_local_batch()]
        num_tokens = float(self._global_tokens(sum(len(e.completion_ids) for e in batch)))
        total, size = 0.0, self.config.micro_batch_size
        for i in range(0, len(batch), size):
            with self._accumulating(last=i + size >= len(batch)):
                with self._autocast():
                    loss, nll_sum = _sft_loss(
                        self.model, batch[i : i + size], self.pad_id, num_tokens
                    )
                self._backward(loss * self.num_processes)  # DDP averages: want the sum
            total += nll_sum
        nll_sum = self.sum_over_processes({"nll": total})["nll"]  # the global batch's
        metrics = {"train/loss": nll_sum / max(num_tokens, 1.0), "train/tokens": num_tokens}
        metrics.update(self.optimizer_step())
        metrics["time/total"] = time.perf_counter() - start
        return metrics
