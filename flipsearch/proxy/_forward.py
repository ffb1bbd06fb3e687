"""Forward passes the proxies share: one context's rows, its KV computed once.

Every row of one context starts with the same token ids (the chat header and, for
``system`` and ``prefix`` placement, the context itself). The functions here encode that
common prefix once and run only the rest of each row; several contexts' rows are batched
together, each on its own prefix's KV. They count the forward tokens they ran, the unit
in which the proxies' cost is compared with generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flipsearch.contexts import Context
from flipsearch.engines.chat import render_prompt_ids
from flipsearch.engines.teacher_forcing import (
    PrefixBatch,
    build_completion_batch,
    common_prefix,
    completion_logits,
    encode_prefixes,
    prefix_forward_inputs,
    supports_prefix_cache,
)
from flipsearch.types import make_conversation

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def context_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    context: Context | None,
    *,
    default_system: str | None = None,
) -> list[list[int]]:
    """Each prompt as a chat turn with ``context`` applied (None: none), rendered to ids
    with the generation prompt, as generation-based scoring renders it."""
    ids = []
    for prompt in prompts:
        conv = make_conversation(prompt)
        if context is not None:
            conv = context.apply(conv, default_system=default_system)
        ids.append(render_prompt_ids(tokenizer, conv))
    return ids


@dataclass
class ForwardCount:
    """Tokens run through the model: the prefix once, plus every row's own tokens.

    ``tokens`` counts whole-model equivalents: a pass that stops after a fraction of the
    decoder blocks is charged that fraction per token.
    """

    tokens: float = 0.0
    passes: int = 0

    def add(self, tokens: int, *, fraction: float = 1.0) -> None:
        self.tokens += tokens * fraction
        self.passes += 1


@dataclass(frozen=True)
class AnswerScores:
    """Per row: the completion's mean token log-probability, and the log of the
    probability mass the first completion position puts on ``first_tokens``."""

    mean_logprob: tuple[float, ...]
    first_token_mass: tuple[float, ...]


def answer_scores(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    first_tokens: Sequence[int],
    *,
    count: ForwardCount,
    micro_batch: int = 32,
) -> AnswerScores:
    """Teacher-force ``completions[i]`` after ``prompts[i]``, one forward pass per row.

    Every completion must hold at least one token. All prompts' common prefix is
    encoded once. ``first_token_mass`` is log sum_j p(first_tokens[j] | prompt) at the
    position that predicts the first completion token (-inf for no ``first_tokens``).
    """
    return answer_scores_grouped(
        model, [(prompts, completions)], first_tokens, counts=[count], micro_batch=micro_batch
    )[0]


def answer_scores_grouped(
    model: PreTrainedModel,
    groups: Sequence[tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]]],
    first_tokens: Sequence[int],
    *,
    counts: Sequence[ForwardCount],
    micro_batch: int = 32,
) -> list[AnswerScores]:
    """:func:`answer_scores` of several groups of ``(prompts, completions)`` (one group
    per context), batched together: each group's common prefix is encoded once, all
    prefixes in one pass, and rows of different groups share micro-batches. Each
    group's tokens are charged to its own ``counts`` entry."""
    import torch

    if any(not c for _, completions in groups for c in completions):
        raise ValueError("every completion must hold at least one token")
    shared, rests = _encode_group_prefixes(model, [prompts for prompts, _ in groups], counts)
    rows = [
        (g, rest, list(completion))
        for g, ((_, completions), group_rests) in enumerate(zip(groups, rests, strict=True))
        for rest, completion in zip(group_rests, completions, strict=True)
    ]
    first = torch.tensor(sorted(set(first_tokens)), dtype=torch.long)
    means: list[list[float]] = [[] for _ in groups]
    masses: list[list[float]] = [[] for _ in groups]
    with torch.no_grad():
        for start in range(0, len(rows), micro_batch):
            chunk = rows[start : start + micro_batch]
            batch = build_completion_batch([p for _, p, _ in chunk], [c for _, _, c in chunk], 0)
            owners = [g for g, _, _ in chunk]
            _charge_rows(counts, owners, batch.attention_mask_B_L.sum(dim=1).tolist())
            prefix = shared.select(owners) if shared is not None else None
            logits_B_T_V = completion_logits(model, batch, prefix=prefix)
            logp_B_T_V = torch.log_softmax(logits_B_T_V.float(), dim=-1)
            targets_B_T = batch.targets_B_T.to(logp_B_T_V.device)
            chosen_B_T = logp_B_T_V.gather(-1, targets_B_T[:, :, None])[:, :, 0]
            mask_B_T = batch.completion_mask_B_T.to(logp_B_T_V.device)
            mean_B = ((chosen_B_T * mask_B_T).sum(dim=1) / mask_B_T.sum(dim=1)).tolist()
            if len(first):
                mass_B = torch.logsumexp(
                    logp_B_T_V[:, 0, first.to(logp_B_T_V.device)], dim=-1
                ).tolist()
            else:
                mass_B = [float("-inf")] * len(chunk)
            for g, mean, mass in zip(owners, mean_B, mass_B, strict=True):
                means[g].append(mean)
                masses[g].append(mass)
    return [AnswerScores(tuple(m), tuple(x)) for m, x in zip(means, masses, strict=True)]


def _encode_group_prefixes(
    model: PreTrainedModel,
    groups: Sequence[Sequence[Sequence[int]]],
    counts: Sequence[ForwardCount],
) -> tuple[PrefixBatch | None, list[list[list[int]]]]:
    # Each group's common prefix, all encoded in one pass (every block, charged to the
    # group's count), and each row's ids after its group's prefix. No prefix at all
    # (None, whole rows) when any group has none to share.
    if len(counts) != len(groups):
        raise ValueError(f"one count per group: {len(counts)} for {len(groups)} groups")
    prefixes = [_prefix_ids(model, prompts) for prompts in groups]
    shared = encode_prefixes(model, prefixes) if all(prefixes) else None
    if shared is not None:
        for ids, count in zip(prefixes, counts, strict=True):
            count.add(len(ids))
    cuts = [len(ids) if shared is not None else 0 for ids in prefixes]
    rests = [[list(row[cut:]) for row in rows] for rows, cut in zip(groups, cuts, strict=True)]
    return shared, rests


def _charge_rows(
    counts: Sequence[ForwardCount],
    owners: Sequence[int],
    tokens_B: Sequence[int],
    *,
    fraction: float = 1.0,
) -> None:
    # Charge each group the tokens of its rows in one micro-batch.
    for g in sorted(set(owners)):
        counts[g].add(
            sum(t for o, t in zip(owners, tokens_B, strict=True) if o == g), fraction=fraction
        )


def _prefix_ids(model: PreTrainedModel, rows: Sequence[Sequence[int]]) -> tuple[int, ...]:
    # The ids all rows start with, leaving each row at least one token of its own; ()
    # where the model type cannot reuse a prefix's KV.
    if not rows or not supports_prefix_cache(model):
        return ()
    return common_prefix(rows)[: min(len(r) for r in rows) - 1]


class _StopForward(Exception):
    """Raised by a hook once the last needed layer has run (early exit)."""


def last_token_states(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    count: ForwardCount,
    micro_batch: int = 32,
) -> dict[int, torch.Tensor]:
    """Residual-stream states at each prompt's last token: layer -> (N, H) float32.

    Layer 0 is the embedding output, layer ``l`` the output of decoder block ``l``
    (transformers' ``hidden_states`` indexing). Only blocks up to the highest requested
    layer run (a hook stops the forward pass there); ``count`` is charged that fraction
    of the model per token. All prompts' common prefix is encoded once (every block).
    """
    return last_token_states_grouped(
        model, [prompts], layers, counts=[count], micro_batch=micro_batch
    )[0]


def last_token_states_grouped(
    model: PreTrainedModel,
    groups: Sequence[Sequence[Sequence[int]]],
    layers: Sequence[int],
    *,
    counts: Sequence[ForwardCount],
    micro_batch: int = 32,
) -> list[dict[int, torch.Tensor]]:
    """:func:`last_token_states` of several groups of prompts (one per context), batched
    together as :func:`answer_scores_grouped` batches them."""
    import torch

    n_layers = int(model.config.num_hidden_layers)
    top = max(layers)
    fraction = top / n_layers
    # Every block runs on a prefix: the rows attend to the KV of all layers.
    shared, rests = _encode_group_prefixes(model, groups, counts)
    rows = [(g, rest) for g, group_rests in enumerate(rests) for rest in group_rests]
    decoder = model.get_decoder()
    device = next(model.parameters()).device
    parts: list[dict[int, list[torch.Tensor]]] = [{layer: [] for layer in layers} for _ in groups]
    with torch.no_grad():
        for start in range(0, len(rows), micro_batch):
            chunk = rows[start : start + micro_batch]
            batch = build_completion_batch([p for _, p in chunk], [[] for _ in chunk], pad_id=0)
            owners = [g for g, _ in chunk]
            tokens_B = batch.attention_mask_B_L.sum(dim=1).tolist()
            _charge_rows(counts, owners, tokens_B, fraction=fraction)
            inputs: dict[str, object] = {
                "input_ids": batch.input_ids_B_L.to(device),
                "attention_mask": batch.attention_mask_B_L.to(device),
                "use_cache": False,
                "output_hidden_states": True,
            }
            if shared is not None:
                inputs.update(prefix_forward_inputs(batch, shared.select(owners), device))
            hidden = _hidden_states_up_to(decoder, inputs, top)
            last_B = torch.tensor(batch.prompt_lens, device=device) - 1
            rows_B = torch.arange(len(chunk), device=device)
            for layer in layers:
                states = hidden[layer][rows_B, last_B].float().cpu()
                for b, g in enumerate(owners):
                    parts[g][layer].append(states[b : b + 1])
    return [
        {layer: torch.cat(chunks) if chunks else torch.empty(0) for layer, chunks in p.items()}
        for p in parts
    ]


def _hidden_states_up_to(decoder: torch.nn.Module, inputs: dict[str, object], top: int) -> list:
    # hidden_states[0..top]: the embeddings, then each block's output, collected by hooks;
    # the hook on block `top` stops the pass, so later blocks never run.
    blocks = list(decoder.layers)  # type: ignore[arg-type]
    states: list = []
    handles = [decoder.embed_tokens.register_forward_hook(_collect(states))]  # type: ignore[union-attr]
    for i, block in enumerate(blocks[:top]):
        handles.append(block.register_forward_hook(_collect(states, stop=i + 1 == top)))
    try:
        decoder(**inputs)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return states


def _collect(states: list, *, stop: bool = False) -> Callable[..., None]:
    def hook(_module: object, _args: object, output: object) -> None:
        states.append(output[0] if isinstance(output, tuple) else output)
        if stop:
            raise _StopForward

    return hook
