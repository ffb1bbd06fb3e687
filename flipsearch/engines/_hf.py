"""Generation with transformers ``generate``: batched, left-padded, sorted by length."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from flipsearch.engines._base import ChatEngine
from flipsearch.engines.chat import stop_token_ids
from flipsearch.types import Generation, Sampling

if TYPE_CHECKING:
    import torch

    from flipsearch.engines import EngineConfig

logger = logging.getLogger(__name__)


def load_hf_model(path: str, dtype: str, trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer for inference (eval mode, no grad)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
    )
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


class HFEngine(ChatEngine):
    """transformers ``generate`` behind the :class:`~flipsearch.engines.Engine` interface.

    Conversations are rendered with the chat template, sorted by prompt length
    (less padding), left-padded and generated ``batch_size`` at a time; outputs are
    returned in input order.
    """

    name = "hf"
    return_logprobs = True
    """Fill ``Generation.logprobs``. Keeping every step's logits costs (T, B, V) memory;
    a caller that does not read the log-probs can turn it off (they come back empty)."""

    def __init__(self, config: EngineConfig, model_path: str) -> None:
        import torch

        self.config = config
        self.model_path = model_path
        self.model, self.tokenizer = load_hf_model(
            model_path, config.dtype, config.trust_remote_code
        )
        if config.device != "auto":
            self.model.to(config.device)
        elif torch.cuda.is_available():
            self.model.to("cuda")
        self._stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        self._pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self._stop_ids[0]
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate_ids(
        self,
        prompts: Sequence[list[int]],
        sampling: Sampling,
        *,
        use_tqdm: bool = False,
    ) -> list[list[Generation]]:
        """Like :meth:`generate`, from already rendered prompt token ids."""
        import torch

        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[list[Generation] | None] = [None] * len(prompts)
        if sampling.seed is not None:
            # One seed per call: the same inputs give the same samples.
            torch.manual_seed(sampling.seed)
        batches = [
            order[i : i + self.config.batch_size]
            for i in range(0, len(order), self.config.batch_size)
        ]
        for batch in tqdm(batches, desc="generate (hf)", disable=not use_tqdm):
            outs = self._generate_batch([prompts[i] for i in batch], sampling)
            for i, gens in zip(batch, outs, strict=True):
                results[i] = gens
        return [r for r in results if r is not None]

    def _generate_batch(
        self, prompts: list[list[int]], sampling: Sampling
    ) -> list[list[Generation]]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p) :] = torch.tensor(p)
            attention[row, width - len(p) :] = 1
        kwargs: dict[str, object] = {
            "max_new_tokens": sampling.max_tokens,
            "num_return_sequences": sampling.n,
            "eos_token_id": self._stop_ids,
            "pad_token_id": self._pad_id,
            "return_dict_in_generate": True,
            # Raw logits, so log-probs are untempered like vLLM's.
            "output_logits": self.return_logprobs,
        }
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
            )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                **kwargs,
            )
        new_B_T = out.sequences[:, width:].cpu()
        logprobs_B_T = self._chosen_logprobs(out.logits, new_B_T) if self.return_logprobs else None
        gens: list[list[Generation]] = []
        for row in range(len(prompts)):
            samples = []
            for k in range(sampling.n):
                b = row * sampling.n + k
                lps = logprobs_B_T[b].tolist() if logprobs_B_T is not None else []
                samples.append(self._to_generation(new_B_T[b].tolist(), lps))
            gens.append(samples)
        return gens

    @staticmethod
    def _chosen_logprobs(logits: Sequence[torch.Tensor], new_B_T: torch.Tensor) -> torch.Tensor:
        # T tensors of (B, V) -> the log-prob of each chosen token, (B, T).
        import torch

        logits_T_B_V = torch.stack(list(logits), dim=0).float()
        return (
            torch.log_softmax(logits_T_B_V, dim=-1)
            .gather(-1, new_B_T.T.unsqueeze(-1).to(logits_T_B_V.device))
            .squeeze(-1)
            .T.cpu()
        )

    def _to_generation(self, ids: list[int], logprobs: list[float]) -> Generation:
        # Keep tokens up to and including the first stop token, like vLLM does.
        end = len(ids)
        finish = "length"
        for t, tok in enumerate(ids):
            if tok in self._stop_ids:
                end, finish = t + 1, "stop"
                break
        ids, logprobs = ids[:end], logprobs[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Generation(
            text=text, token_ids=tuple(ids), logprobs=tuple(logprobs), finish_reason=finish
        )

    def close(self) -> None:
        del self.model
