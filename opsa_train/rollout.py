"""Student rollouts: the student samples its own responses to the plain prompts.

Two samplers, one interface (`RolloutSampler`):

- `HFRollouts` generates with the *training model itself* (eval mode, no grad), so
  the sampler is always the current student and no weight sync is needed. It reuses
  :class:`flipsearch.engines.HFEngine`'s batching, stop handling and log-probs.
- `VLLMRollouts` runs an in-process :class:`flipsearch.engines.VLLMEngine` on the same
  model folder and, after every optimiser step, loads the trained weights into it
  (`sync`). `score` returns the engine's log-probs of a fixed token sequence, which
  the trainer compares with its own every ``sync_check_every`` steps
  (``sync/max_abs_logprob_diff``).

Rollouts are seeded per step (``seed * 1_000_003 + step``), not from the global RNG, so a
resumed run samples the same responses as an uninterrupted one.

Example:
    >>> sampler = HFRollouts(model, tokenizer, batch_size=8)  # doctest: +SKIP
    >>> rollouts = sampler.sample(rows, Sampling(max_tokens=32, seed=1))  # doctest: +SKIP
    >>> rollouts[0].completion_ids  # the student's exact tokens  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from flipsearch.engines._hf import HFEngine
from flipsearch.engines.chat import render_prompt_ids, stop_token_ids
from flipsearch.prompts import PromptRow
from flipsearch.types import Sampling
from opsa_train.data import student_conversation

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flipsearch.engines import VLLMEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    """One sampled response of the student to one prompt."""

    row: PromptRow
    prompt_ids: tuple[int, ...]
    """The student's rendered prompt (chat template, no context)."""
    completion_ids: tuple[int, ...]
    """The sampled response tokens, including the stop token if one was produced."""
    logprobs: tuple[float, ...]
    """The sampler's log-prob of each completion token (raw, untempered distribution);
    empty from :class:`HFRollouts`, which skips them (the loss does not use them)."""
    text: str
    finish_reason: str


def rollout_seed(seed: int, step: int, *, process: int = 0) -> int:
    """The sampling seed of optimiser step ``step`` (1-based) of a run seeded ``seed``, on
    process ``process`` of a distributed run (0, the default, for a single process)."""
    return (seed * 1_000_003 + step + process * 1_000_000_007) % (2**31 - 1)


class RolloutSampler(Protocol):
    """Rows in, ``n`` rollouts per row out (row-major, order preserved)."""

    name: str

    def sample(self, rows: Sequence[PromptRow], sampling: Sampling) -> list[Rollout]: ...

    def sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the sampler use the trained weights (no-op when it shares them)."""
        ...

    def close(self) -> None: ...


def _to_rollouts(
    rows: Sequence[PromptRow], prompt_ids: Sequence[list[int]], generations: list
) -> list[Rollout]:
    out = []
    for row, ids, gens in zip(rows, prompt_ids, generations, strict=True):
        for gen in gens:
            out.append(
                Rollout(
                    row=row,
                    prompt_ids=tuple(ids),
                    completion_ids=tuple(gen.token_ids),
                    logprobs=tuple(gen.logprobs),
                    text=gen.text,
                    finish_reason=gen.finish_reason,
                )
            )
    return out


# --------------------------------------------------------------------------------------
# transformers: the training model generates


class _SharedModelEngine(HFEngine):
    # HFEngine around an already loaded model (the student being trained), no reload.
    # The loss does not read the sampler's log-probs: skip keeping (T, B, V) logits.
    return_logprobs = False

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int
    ) -> None:
        from flipsearch.engines import EngineConfig

        self.config = EngineConfig(engine="hf", batch_size=batch_size, device="cpu")
        self.model_path = str(getattr(model, "name_or_path", ""))
        self.model = model
        self.tokenizer = tokenizer
        self._stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._stop_ids[0]


class HFRollouts:
    """Sample with ``model.generate`` on the training model (eval mode, no grad).

    Args:
        model: the student being trained (unwrapped from DDP/FSDP wrappers).
        tokenizer: its tokenizer.
        batch_size: prompts per ``generate`` call.
    """

    name = "hf"

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_size: int
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._engine = _SharedModelEngine(model, tokenizer, batch_size)

    def sample(self, rows: Sequence[PromptRow], sampling: Sampling) -> list[Rollout]:
        """``sampling.n`` rollouts per row of the plain prompt (no context)."""
        prompt_ids = [render_prompt_ids(self.tokenizer, student_conversation(r)) for r in rows]
        was_training = self.model.training
        self.model.eval()  # dropout off while sampling (a no-op for most LLMs)
        try:
            gens = self._engine.generate_ids(prompt_ids, sampling)
        finally:
            self.model.train(was_training)
        return _to_rollouts(rows, prompt_ids, gens)

    def sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """No-op: the sampler is the training model."""

    def close(self) -> None:
        """Nothing to release (the model belongs to the trainer)."""


# --------------------------------------------------------------------------------------
# vLLM: a separate in-process engine, synced after each step


class VLLMRollouts:
    """Sample with an in-process vLLM engine whose weights follow the trained ones.

    Args:
        engine: a :class:`~flipsearch.engines.VLLMEngine` on the initial weights.
    """

    name = "vllm"

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer

    def sample(self, rows: Sequence[PromptRow], sampling: Sampling) -> list[Rollout]:
        """``sampling.n`` rollouts per row of the plain prompt (no context)."""
        prompt_ids = [render_prompt_ids(self.tokenizer, student_conversation(r)) for r in rows]
        gens = self.engine.generate_ids(prompt_ids, sampling)
        return _to_rollouts(rows, prompt_ids, gens)

    def sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the trained weights into the running engine (and drop its prefix cache)."""
        self.engine.load_weights(named_tensors)

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """The engine's log-prob of each completion token after ``prompt_ids``.

        Uses vLLM's prompt log-probs over ``prompt + completion`` (one generated token,
        discarded), so the sequence is fixed and independent of sampling.
        """
        from vllm import SamplingParams, TokensPrompt

        ids = [*prompt_ids, *completion_ids]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        (out,) = self.engine.llm.generate(
            [TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False
        )
        steps = out.prompt_logprobs  # one entry per prompt token, None for the first
        start = len(prompt_ids)
        return [float(steps[t][ids[t]].logprob) for t in range(start, len(ids))]

    def close(self) -> None:
        """Shut the engine down."""
        self.engine.close()
