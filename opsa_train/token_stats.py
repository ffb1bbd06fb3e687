"""Per-token measures and their reductions: what the losses, metrics and evaluation read.

- `token_logprobs`: the log-prob of each target token (no (B, T, V) float32 copy);
- `per_token_kl`: KL(p || q) and KL(q || p) per position over the full vocabulary;
- `masked_token_mean`: the paper's token mean over response tokens (the loss reduction);
- `kl_by_position`: the mean KL over the first response tokens and over the rest.

None of these is a loss with knobs; those are in `opsa_train.losses`. Math in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from opsa_train.errors import OpsaConfigError

__all__ = [
    "kl_by_position",
    "kl_sums_by_position",
    "masked_token_mean",
    "per_token_kl",
    "token_logprobs",
]


def token_logprobs(logits_B_T_V: torch.Tensor, targets_B_T: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token under the logits, float32, shape (B, T).

    Equals ``log_softmax(logits).gather(targets)`` but gathers first and subtracts the
    log-normaliser, so no (B, T, V) float32 log-prob tensor is materialised.

    Example:
        >>> token_logprobs(torch.tensor([[[0.0, math.log(3.0)]]]), torch.tensor([[1]]))
        tensor([[-0.2877]])
    """
    logits = logits_B_T_V.float()
    picked_B_T = logits.gather(-1, targets_B_T.unsqueeze(-1)).squeeze(-1)
    return picked_B_T - torch.logsumexp(logits, dim=-1)


def per_token_kl(
    p_logits_B_T_V: torch.Tensor, q_logits_B_T_V: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(p || q), KL(q || p))`` per position over the full vocabulary, float32, (B, T).

    Example:
        >>> p = torch.tensor([[[0.0, 0.0]]]); q = torch.tensor([[[0.0, math.log(3.0)]]])
        >>> [round(float(x), 4) for x in per_token_kl(p, q)]  # KL(1/2,1/2 || 1/4,3/4)
        [0.1438, 0.1308]
    """
    lp_B_T_V = F.log_softmax(p_logits_B_T_V.float(), dim=-1)
    lq_B_T_V = F.log_softmax(q_logits_B_T_V.float(), dim=-1)
    fwd_B_T = (lp_B_T_V.exp() * (lp_B_T_V - lq_B_T_V)).sum(-1)
    rev_B_T = (lq_B_T_V.exp() * (lq_B_T_V - lp_B_T_V)).sum(-1)
    return fwd_B_T.clamp(min=0.0), rev_B_T.clamp(min=0.0)


def masked_token_mean(
    loss_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of the loss over unmasked tokens divided by their count (the paper's token mean).

    Masked positions are selected away (``torch.where``), not multiplied by 0, so an
    inf or NaN there (padding) cannot leak. An all-masked batch returns a zero that is
    still attached to the graph, so ``backward()`` runs and gives zero gradients.

    Example:
        >>> loss = torch.tensor([[1.0, 3.0], [5.0, float("inf")]])
        >>> masked_token_mean(loss, torch.tensor([[1, 1], [1, 0]])).item()
        3.0

    Args:
        loss_B_T: per-token loss.
        mask_B_T: 1/True where a token counts (response tokens), 0/False elsewhere.
        num_tokens: the denominator to use instead of this batch's count: pass the
            token count of the whole global batch when accumulating gradients over
            micro-batches, so their sum is the global token mean.
    """
    if loss_B_T.shape != mask_B_T.shape:
        raise ValueError(
            f"`loss_B_T` and `mask_B_T` must have the same shape, got {tuple(loss_B_T.shape)} "
            f"and {tuple(mask_B_T.shape)}"
        )
    keep_B_T = mask_B_T.bool()
    total = torch.where(keep_B_T, loss_B_T, torch.zeros_like(loss_B_T)).sum()
    if num_tokens is None:
        count = keep_B_T.sum().to(total.dtype)
    else:
        count = torch.as_tensor(num_tokens, dtype=total.dtype, device=total.device)
    # clamp instead of `if count == 0`: no host sync, and 0 / 1 keeps the graph.
    return total / count.clamp(min=1.0)


def kl_by_position(
    per_token_kl_B_T: torch.Tensor, mask_B_T: torch.Tensor, *, first_n: int = 16
) -> tuple[float, float]:
    """Mean KL over the first ``first_n`` response tokens of each row, and over the rest.

    Response positions are counted from each row's first unmasked token, so prompt or
    left padding in the mask does not shift them. A group with no tokens gives NaN.
    Safety alignment is known to act mostly on the first few tokens (refuse or comply),
    so a KL concentrated there is expected.

    Example:
        >>> kl = torch.tensor([[9.0, 1.0, 2.0, 3.0]])
        >>> kl_by_position(kl, torch.tensor([[0, 1, 1, 1]]), first_n=1)
        (1.0, 2.5)
    """
    sums = kl_sums_by_position(per_token_kl_B_T, mask_B_T, first_n=first_n)
    first_sum, first_count, rest_sum, rest_count = sums
    return (
        first_sum / first_count if first_count else math.nan,
        rest_sum / rest_count if rest_count else math.nan,
    )


def kl_sums_by_position(
    per_token_kl_B_T: torch.Tensor, mask_B_T: torch.Tensor, *, first_n: int = 16
) -> tuple[float, float, float, float]:
    """The sums and token counts behind `kl_by_position`: (first sum, first count, rest
    sum, rest count), so processes of a distributed run can add theirs up.

    Example:
        >>> kl = torch.tensor([[9.0, 1.0, 2.0, 3.0]])
        >>> kl_sums_by_position(kl, torch.tensor([[0, 1, 1, 1]]), first_n=1)
        (1.0, 1.0, 5.0, 2.0)
    """
    if first_n < 1:
        raise OpsaConfigError(f"`first_n` must be >= 1, got {first_n!r}")
    keep_B_T = mask_B_T.bool()
    rank_B_T = keep_B_T.long().cumsum(dim=1)  # 1-based position within the response
    kl_B_T = per_token_kl_B_T.detach().float()
    first_B_T = keep_B_T & (rank_B_T <= first_n)
    rest_B_T = keep_B_T & (rank_B_T > first_n)
    return (
        float(kl_B_T[first_B_T].sum()),
        float(first_B_T.sum()),
        float(kl_B_T[rest_B_T].sum()),
        float(rest_B_T.sum()),
    )
