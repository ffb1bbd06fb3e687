"""Teacher forcing: per-token logprobs of given completions under a transformers model.

Given conversations and completion token ids (e.g. a student's rollouts), one
forward pass over ``prompt + completion`` yields the model's logprob of every
completion token, and optionally its top-k logprobs per position. The trainer
(teacher scores) and the token-level analysis both build on :func:`completion_logits`.
When every row starts with the same token ids (the chat header and a privileged
context), :func:`encode_prefix` computes their KV cache once and ``completion_logits(...,
prefix=...)`` runs only the rest of each row on top of it.

Example:
    >>> scorer = TeacherForcingScorer.from_pretrained(path)  # doctest: +SKIP
    >>> scores = scorer.score([conv], [gen.token_ids], top_k=8)  # doctest: +SKIP
    >>> scores[0].logprobs  # one float per completion token  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flipsearch.engines.chat import pad_token_id, render_prompt_ids
from flipsearch.errors import ConfigError
from flipsearch.types import Conversation

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class CompletionBatch:
    """Right-padded ``prompt + completion`` rows and where each completion sits.

    ``completion_mask_B_T`` is 1 at positions whose *next-token logits* predict a
    completion token, so ``logits_B_T_V[mask]`` lines up with the completion ids.
    """

    input_ids_B_L: torch.Tensor
    attention_mask_B_L: torch.Tensor
    targets_B_T: torch.Tensor
    """Completion ids, right-padded to T (the longest completion)."""
    completion_mask_B_T: torch.Tensor
    prompt_lens: tuple[int, ...]
    completion_lens: tuple[int, ...]


def build_completion_batch(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> CompletionBatch:
    """Pack prompts and completions into one right-padded batch."""
    import torch

    if len(prompt_ids) != len(completion_ids):
        raise ConfigError(
            f"`completion_ids` must have one entry per prompt ({len(prompt_ids)}), "
            f"got {len(completion_ids)}"
        )
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(lengths)
    t_max = max((len(c) for c in completion_ids), default=0)
    batch = len(prompt_ids)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    targets = torch.full((batch, max(t_max, 1)), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, max(t_max, 1)), dtype=torch.float32)
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        row = list(p) + list(c)
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[b, : len(row)] = 1
        if c:
            targets[b, : len(c)] = torch.tensor(list(c), dtype=torch.long)
            mask[b, : len(c)] = 1.0
    return CompletionBatch(
        input_ids_B_L=input_ids,
        attention_mask_B_L=attention,
        targets_B_T=targets,
        completion_mask_B_T=mask,
        prompt_lens=tuple(len(p) for p in prompt_ids),
        completion_lens=tuple(len(c) for c in completion_ids),
    )


@dataclass(frozen=True)
class PrefixCache:
    """The KV cache of token ids that every row of a batch starts with (computed at batch 1).

    Exact only for decoders whose every layer attends to all earlier positions, with
    rotary positions (the rows continue at position P): see `supports_prefix_cache`.
    """

    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    """Per layer (keys, values), each (1, kv_heads, P, head_dim)."""


@dataclass(frozen=True)
class PrefixBatch:
    """The KV caches of several prefixes, one per row of a batch, right-padded to the
    longest and computed in one pass (:func:`encode_prefixes`); :meth:`select` picks a
    prefix for each row. Exact under the same conditions as :class:`PrefixCache`."""

    lengths: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    """Per layer (keys, values), each (K, kv_heads, P_max, head_dim); padding past a
    prefix's length is never attended."""

    def select(self, rows: Sequence[int]) -> PrefixBatch:
        """The prefixes of a batch whose row ``b`` continues prefix ``rows[b]``."""
        import torch

        index = torch.tensor(list(rows), dtype=torch.long, device=self.layers[0][0].device)
        return PrefixBatch(
            lengths=tuple(self.lengths[r] for r in rows),
            layers=tuple(
                (k.index_select(0, index), v.index_select(0, index)) for k, v in self.layers
            ),
        )


def encode_prefixes(model: PreTrainedModel, prefixes: Sequence[Sequence[int]]) -> PrefixBatch:
    """Run every prefix through the decoder in one right-padded pass (no grad) and keep
    their KV caches. Causal attention keeps each prefix's KV independent of the padding.

    Raises:
        ConfigError: no prefixes, or an empty one.
    """
    import torch

    if not prefixes or any(not ids for ids in prefixes):
        raise ConfigError("`prefixes` must be non-empty lists of token ids")
    device = next(model.parameters()).device
    width = max(len(ids) for ids in prefixes)
    input_ids = torch.zeros((len(prefixes), width), dtype=torch.long)
    attention = torch.zeros((len(prefixes), width), dtype=torch.long)
    for row, ids in enumerate(prefixes):
        input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, : len(ids)] = 1
    with torch.no_grad():
        out = model.get_decoder()(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=True
        )
    layers = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
    return PrefixBatch(lengths=tuple(len(ids) for ids in prefixes), layers=layers)


def common_prefix(rows: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The longest run of token ids every row starts with (() for no rows)."""
    if not rows:
        return ()
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return tuple(first[:i])
    return tuple(first[:n])


def encode_prefix(model: PreTrainedModel, ids: Sequence[int]) -> PrefixCache:
    """Run ``ids`` through the decoder once (no grad) and keep its KV cache.

    Raises:
        ConfigError: ``ids`` is empty.
    """
    import torch

    if not ids:
        raise ConfigError("`ids` must hold at least one token id, got []")
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.get_decoder()(
            input_ids=torch.tensor([list(ids)], device=device), use_cache=True
        )
    layers = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
    return PrefixCache(ids=tuple(int(i) for i in ids), layers=layers)


_PREFIX_CACHE_MODEL_TYPES = {"llama", "qwen2", "qwen3"}


def supports_prefix_cache(model: PreTrainedModel) -> bool:
    """Whether ``completion_logits(model, ..., prefix=...)`` is exact for this model: a
    full-attention decoder of a known type (Llama/SmolLM2, Qwen2/3 without sliding window)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in _PREFIX_CACHE_MODEL_TYPES:
        return False
    return not getattr(config, "use_sliding_window", False)


def completion_logits(
    model: PreTrainedModel,
    batch: CompletionBatch,
    *,
    prefix: PrefixCache | PrefixBatch | None = None,
) -> torch.Tensor:
    """Next-token logits at each completion position, shape (B, T, V).

    Row ``b``, position ``t`` holds the logits that predict completion token ``t``
    (taken from sequence position ``prompt_len + t - 1``). Gradients flow when the
    caller enables them (not into ``prefix``); padded positions hold zeros.

    Args:
        model: a causal LM.
        batch: the rows; with ``prefix``, the part of each row *after* the prefix (its
            ``prompt_lens`` count the prompt tokens after the prefix, at least one).
        prefix: the KV cache of the token ids every row starts with (`encode_prefix`);
            the rows then sit at positions ``len(prefix.ids)`` onwards. Or one prefix
            per row (`PrefixBatch.select`), each row after its own.
    """
    import torch

    device = next(model.parameters()).device
    t_max = batch.targets_B_T.shape[1]
    # Gather the predicting positions: prompt_len - 1 + t, clamped inside the row.
    starts = torch.tensor(batch.prompt_lens, device=device) - 1
    offsets = torch.arange(t_max, device=device)
    width = batch.input_ids_B_L.shape[1]
    positions_B_T = (starts[:, None] + offsets[None, :]).clamp(max=width - 1)
    inputs: dict[str, object] = {
        "input_ids": batch.input_ids_B_L.to(device),
        "attention_mask": batch.attention_mask_B_L.to(device),
        "use_cache": False,
    }
    if prefix is not None:
        inputs.update(prefix_forward_inputs(batch, prefix, device))
    head = _plain_lm_head(model)
    if head is not None:
        # Only completion positions go through the LM head: teacher prompts carry the
        # context, so this skips most of the (L, V) logits and their memory.
        hidden_B_L_H = model.get_decoder()(**inputs).last_hidden_state
        index = positions_B_T[:, :, None].expand(-1, -1, hidden_B_L_H.shape[-1])
        logits_B_T_V = head(hidden_B_L_H.gather(1, index))
    else:
        logits_B_L_V = model(**inputs).logits
        index = positions_B_T[:, :, None].expand(-1, -1, logits_B_L_V.shape[-1])
        logits_B_T_V = logits_B_L_V.gather(1, index)
    return logits_B_T_V * batch.completion_mask_B_T.to(device)[:, :, None].to(logits_B_T_V.dtype)


def prefix_forward_inputs(
    batch: CompletionBatch, prefix: PrefixCache | PrefixBatch, device: torch.device
) -> dict[str, object]:
    """Decoder arguments that run ``batch``'s rows on top of ``prefix``.

    The prefix's KV is expanded over the batch (a view; each layer's update concatenates
    into a fresh tensor, so the shared cache is never written), its positions are
    attended, and the rows' positions start at ``len(prefix.ids)``. A
    :class:`PrefixBatch` gives each row its own prefix: its padding is masked and the
    row's positions start at its prefix's length.
    """
    import torch
    from transformers import DynamicCache

    n_rows, width = batch.input_ids_B_L.shape
    if isinstance(prefix, PrefixBatch):
        if len(prefix.lengths) != n_rows:
            raise ValueError(f"one prefix per row: {len(prefix.lengths)} for {n_rows} rows")
        lengths_B = torch.tensor(prefix.lengths, device=device)
        n_prefix = int(prefix.layers[0][0].shape[2])
        prefix_mask_B_P = (torch.arange(n_prefix, device=device)[None] < lengths_B[:, None]).to(
            batch.attention_mask_B_L.dtype
        )
        return {
            "attention_mask": torch.cat(
                [prefix_mask_B_P, batch.attention_mask_B_L.to(device)], dim=1
            ),
            "position_ids": lengths_B[:, None] + torch.arange(width, device=device)[None],
            "past_key_values": DynamicCache(list(prefix.layers)),
            "use_cache": True,
        }
    n_prefix = len(prefix.ids)
    attention_B_PL = torch.cat(
        [
            torch.ones((n_rows, n_prefix), dtype=batch.attention_mask_B_L.dtype),
            batch.attention_mask_B_L,
        ],
        dim=1,
    )
    cache = DynamicCache(
        [(k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1)) for k, v in prefix.layers]
    )
    return {
        "attention_mask": attention_B_PL.to(device),
        "position_ids": (n_prefix + torch.arange(width, device=device))[None].expand(n_rows, -1),
        "past_key_values": cache,
        "use_cache": True,
    }


def _plain_lm_head(model: PreTrainedModel) -> torch.nn.Module | None:
    # The LM head alone, when the model's logits are exactly head(decoder(x)): no
    # soft-capping or logit scaling in its forward. Else None (use the full forward).
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    if getattr(config, "model_type", None) not in _PLAIN_HEAD_MODEL_TYPES:
        return None
    try:
        return model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None


_PLAIN_HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"}


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of one completion."""

    logprobs: tuple[float, ...]
    """Logprob of each completion token."""
    topk_ids: tuple[tuple[int, ...], ...] | None = None
    topk_logprobs: tuple[tuple[float, ...], ...] | None = None


class TeacherForcingScorer:
    """Scores given completion tokens of chat conversations with a transformers model."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 8,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = pad_token_id(tokenizer)

    @classmethod
    def from_pretrained(
        cls, path: str, *, dtype: str = "float32", batch_size: int = 8
    ) -> TeacherForcingScorer:
        """Load a model folder for scoring (eval mode, no grad)."""
        from flipsearch.engines._hf import load_hf_model

        model, tokenizer = load_hf_model(str(path), dtype)
        return cls(model, tokenizer, batch_size=batch_size)

    def score(
        self,
        conversations: Sequence[Conversation],
        completion_ids: Sequence[Sequence[int]],
        *,
        top_k: int | None = None,
    ) -> list[TokenScores]:
        """Per-token logprobs of each completion after its conversation's prompt.

        Args:
            conversations: chat conversations ending in a user turn.
            completion_ids: the response token ids to score, one list per conversation.
            top_k: also return the k most likely ids and their logprobs per position.

        Returns:
            One :class:`TokenScores` per conversation, in input order.
        """
        import torch

        prompts = [render_prompt_ids(self.tokenizer, c) for c in conversations]
        if len(prompts) != len(completion_ids):
            raise ConfigError(
                f"`completion_ids` must have one entry per conversation ({len(prompts)}), "
                f"got {len(completion_ids)}"
            )
        out: list[TokenScores] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = build_completion_batch(
                prompts[start : start + self.batch_size],
                completion_ids[start : start + self.batch_size],
                self.pad_id,
            )
            with torch.inference_mode():
                logits_B_T_V = completion_logits(self.model, batch).float()
                logprobs_B_T_V = torch.log_softmax(logits_B_T_V, dim=-1)
                token_lp_B_T = logprobs_B_T_V.gather(
                    -1, batch.targets_B_T[:, :, None].to(logprobs_B_T_V.device)
                ).squeeze(-1)
                topk = logprobs_B_T_V.topk(top_k, dim=-1) if top_k else None
            for b, n_tok in enumerate(batch.completion_lens):
                lps = tuple(token_lp_B_T[b, :n_tok].tolist())
                if topk is None:
                    out.append(TokenScores(logprobs=lps))
                    continue
                out.append(
                    TokenScores(
                        logprobs=lps,
                        topk_ids=tuple(tuple(r) for r in topk.indices[b, :n_tok].tolist()),
                        topk_logprobs=tuple(tuple(r) for r in topk.values[b, :n_tok].tolist()),
                    )
                )
        return out
