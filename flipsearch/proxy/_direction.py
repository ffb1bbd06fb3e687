"""Design (b), refusal direction: how far a context moves prompts along it.

After Arditi et al. 2024 ("Refusal in Language Models Is Mediated by a Single
Direction"): per layer, the difference between the mean residual-stream state at the last
prompt token of harmful and of harmless prompts. The direction is fitted on one half of a
train split (by prompt hash) and its layer picked by how well it separates the other half
(Cohen's d of the projections). A context's score is the mean change of the harmful
prompts' projection when the context is added, in units of the projections' pooled
standard deviation. Prompt tokens only: no answers, no generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flipsearch.contexts import Context
from flipsearch.errors import ConfigError
from flipsearch.prompts._split import prompt_bucket
from flipsearch.proxy._forward import (
    ForwardCount,
    context_prompt_ids,
    last_token_states,
    last_token_states_grouped,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class RefusalDirection:
    """A unit direction in one layer's residual stream, and the scale of projections on it."""

    layer: int
    direction: torch.Tensor
    """(H,), unit norm, float32."""
    scale: float
    """Pooled standard deviation of harmful and harmless projections (held-out half)."""
    separation: dict[int, float]
    """Cohen's d on the held-out half, per candidate layer."""

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """(N, H) states -> (N,) projections onto the direction."""
        return states.float() @ self.direction


def fit_refusal_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    micro_batch: int = 32,
) -> RefusalDirection:
    """Fit the direction on the half of each set with prompt hash < 0.5 and pick the
    layer whose direction best separates the other half.

    Args:
        layers: the candidate layers (default 1..L-1: the last block's output only feeds
            the LM head, and transformers' last hidden state is normalised, unlike the
            others).

    Raises:
        ConfigError: either half of either set has fewer than 2 prompts, or a layer is
            outside 1..L-1.
    """
    import torch

    halves = {
        name: (
            [p for p in prompts if prompt_bucket(p) < 0.5],
            [p for p in prompts if prompt_bucket(p) >= 0.5],
        )
        for name, prompts in (("harmful", harmful), ("harmless", harmless))
    }
    for name, (fit, held) in halves.items():
        if len(fit) < 2 or len(held) < 2:
            raise ConfigError(
                f"the refusal direction needs at least 2 {name} prompts in each half of its "
                f"train set (split by prompt hash), got {len(fit)} and {len(held)}: pass a "
                f"larger {name} set"
            )
    n_layers = int(model.config.num_hidden_layers)
    layers = list(range(1, n_layers)) if layers is None else sorted(set(layers))
    if not layers or layers[0] < 1 or layers[-1] >= n_layers:
        raise ConfigError(
            f"`layers` must be a non-empty subset of 1..{n_layers - 1} (blocks before the "
            f"last), got {layers}"
        )
    count = ForwardCount()

    def states(prompts: Sequence[str]) -> dict[int, torch.Tensor]:
        ids = context_prompt_ids(tokenizer, prompts, None)
        return last_token_states(model, ids, layers, count=count, micro_batch=micro_batch)

    fit_h, held_h = (states(x) for x in halves["harmful"])
    fit_b, held_b = (states(x) for x in halves["harmless"])
    best: tuple[float, int, torch.Tensor, float] | None = None
    separation: dict[int, float] = {}
    for layer in layers:
        diff = fit_h[layer].mean(0) - fit_b[layer].mean(0)
        unit = diff / diff.norm().clamp_min(1e-12)
        ph, pb = held_h[layer] @ unit, held_b[layer] @ unit
        pooled = float(torch.cat([ph - ph.mean(), pb - pb.mean()]).std().clamp_min(1e-12))
        d = float(ph.mean() - pb.mean()) / pooled
        separation[layer] = d
        if best is None or d > best[0]:
            best = (d, layer, unit, pooled)
    assert best is not None
    _, layer, unit, pooled = best
    return RefusalDirection(layer=layer, direction=unit, scale=pooled, separation=separation)


@dataclass(frozen=True)
class DirectionTargets:
    """The harmful prompts a context is scored on, and their context-free projections."""

    direction: RefusalDirection
    prompts: tuple[str, ...]
    base_projection: tuple[float, ...]
    default_system: str | None = None

    @classmethod
    def build(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        direction: RefusalDirection,
        prompts: Sequence[str],
        *,
        default_system: str | None = None,
        micro_batch: int = 32,
    ) -> DirectionTargets:
        if not prompts:
            raise ConfigError("the direction proxy needs at least one harmful prompt, got none")
        targets = cls(direction, tuple(prompts), (), default_system)
        base = targets.projections(model, tokenizer, None, ForwardCount(), micro_batch)
        return cls(direction, tuple(prompts), tuple(base), default_system)

    def projections(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        context: Context | None,
        count: ForwardCount,
        micro_batch: int = 32,
    ) -> list[float]:
        ids = context_prompt_ids(
            tokenizer, self.prompts, context, default_system=self.default_system
        )
        layer = self.direction.layer
        states = last_token_states(model, ids, [layer], count=count, micro_batch=micro_batch)
        return [float(x) for x in self.direction.project(states[layer])]


@dataclass(frozen=True)
class DirectionScore:
    """Design (b)'s score of one context (higher: pushed further towards refusal)."""

    score: float
    forward_tokens: float


def direction_shift(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: Context,
    targets: DirectionTargets,
    *,
    micro_batch: int = 32,
) -> DirectionScore:
    """Mean projection change over ``targets.prompts``, in units of the direction's scale."""
    return direction_shifts(model, tokenizer, [context], targets, micro_batch=micro_batch)[0]


def direction_shifts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[Context],
    targets: DirectionTargets,
    *,
    micro_batch: int = 32,
) -> list[DirectionScore]:
    """:func:`direction_shift` of each of ``contexts``, their rows batched together."""
    groups = [
        context_prompt_ids(tokenizer, targets.prompts, c, default_system=targets.default_system)
        for c in contexts
    ]
    counts = [ForwardCount() for _ in contexts]
    layer = targets.direction.layer
    states = last_token_states_grouped(
        model, groups, [layer], counts=counts, micro_batch=micro_batch
    )
    scores = []
    for by_layer, count in zip(states, counts, strict=True):
        with_ctx = [float(x) for x in targets.direction.project(by_layer[layer])]
        shifts = [a - b for a, b in zip(with_ctx, targets.base_projection, strict=True)]
        score = sum(shifts) / len(shifts) / targets.direction.scale
        scores.append(DirectionScore(score=score, forward_tokens=count.tokens))
    return scores
