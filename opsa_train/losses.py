"""Per-token distillation losses for OPSA: pure tensor math, no model, no config.

Each loss takes tensors plus keyword-only knobs and returns a per-token loss of shape
(B, T); the trainer masks and normalises it with `masked_token_mean` (the paper's
token mean). `make_loss` is the one place that maps a loss name (``TrainConfig.loss``)
to its teacher side (what is kept of the teacher's logits) and its student side.
Positions are response tokens: position t holds the distribution over
the token the student sampled at t, from the student (no context) and from the frozen
teacher (privileged context + prompt + the student's exact tokens).

KL naming, used everywhere in opsa_train (metrics ``train/kl_fwd``, ``train/kl_rev``):

- forward KL = KL(teacher || student) = sum_v p_T(v) (log p_T(v) - log p_S(v)),
  mass-covering: the student is pushed to cover all the teacher's likely tokens.
- reverse KL = KL(student || teacher) = sum_v p_S(v) (log p_S(v) - log p_T(v)),
  mode-seeking: the student is pushed off tokens the teacher finds unlikely.
- mixed = alpha * forward + (1 - alpha) * reverse; alpha = 1 is pure forward,
  alpha = 0 pure reverse, the paper uses 0.5. This is a weighted sum of the two KLs,
  not the generalised Jensen-Shannon divergence that TRL's GKD calls ``beta``.

The per-token measures and reductions (`token_logprobs`, `per_token_kl`,
`masked_token_mean`, `kl_by_position`) live in `opsa_train.token_stats` and are
re-exported here.

All math runs in float32 whatever the logits' dtype (bf16 log-probs are too coarse
for KL terms of order 1e-3).

Example:
    >>> import torch
    >>> logits_B_T_V = torch.randn(2, 3, 10)
    >>> lp_B_T_K, ids_B_T_K = teacher_topk(logits_B_T_V, k=4)
    >>> loss_B_T = topk_kl_loss(logits_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)
    >>> loss_B_T.shape, bool(loss_B_T.abs().max() < 1e-5)
    (torch.Size([2, 3]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from opsa_train.errors import OpsaConfigError
from opsa_train.token_stats import kl_by_position, masked_token_mean, per_token_kl, token_logprobs

__all__ = [
    "DistillLoss",
    "full_vocab_kl_loss",
    "kl_by_position",
    "make_loss",
    "masked_token_mean",
    "per_token_kl",
    "sampled_token_reverse_kl_loss",
    "teacher_topk",
    "token_logprobs",
    "topk_kl_loss",
]

# Teacher log-probs of -inf (banned or padded vocabulary ids) are raised to this floor:
# exp() of it is still exactly 0 in float32, but 0 * (-inf) no longer makes NaN.
_LOG_FLOOR = -1e4
# The top-k log-mass is clamped to <= -_TAIL_EPS, so the tail bucket keeps >= ~1e-7 of
# mass: float32 round-off can make the top-k mass reach or pass 1, and log(0) = -inf.
_TAIL_EPS = 1e-7


def _check_alpha(alpha: float) -> None:
    if not (0.0 <= alpha <= 1.0):
        raise OpsaConfigError(
            f"`alpha` must be in [0, 1], got {alpha!r}: 1 is pure forward KL, 0 pure reverse KL"
        )


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    # log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Maechler 2012).
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _mixed_kl(
    student_lp_N_K: torch.Tensor, teacher_lp_N_K: torch.Tensor, alpha: float
) -> torch.Tensor:
    # alpha * KL(T || S) + (1 - alpha) * KL(S || T) over the last axis; a term whose
    # weight is 0 is skipped, so it costs nothing and cannot leak a NaN.
    kl_N = torch.zeros(student_lp_N_K.shape[:-1], device=student_lp_N_K.device)
    if alpha > 0.0:
        fwd_N = (teacher_lp_N_K.exp() * (teacher_lp_N_K - student_lp_N_K)).sum(-1)
        kl_N = kl_N + alpha * fwd_N
    if alpha < 1.0:
        rev_N = (student_lp_N_K.exp() * (student_lp_N_K - teacher_lp_N_K)).sum(-1)
        kl_N = kl_N + (1.0 - alpha) * rev_N
    return kl_N


def _with_tail(lp_N_K: torch.Tensor) -> torch.Tensor:
    # Append log(1 - sum_k p_k) as a (K+1)-th outcome.
    mass_N_1 = torch.logsumexp(lp_N_K, dim=-1, keepdim=True).clamp(max=-_TAIL_EPS)
    return torch.cat([lp_N_K, _log1mexp(mass_N_1)], dim=-1)


def _renormalise(lp_N_K: torch.Tensor) -> torch.Tensor:
    return lp_N_K - torch.logsumexp(lp_N_K, dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------
# Top-k (the paper's loss)


def teacher_topk(teacher_logits_B_T_V: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely ids at each position and their full-vocabulary log-probs.

    The log-probs are those of the full ``log_softmax`` (not renormalised over the k
    ids), which `topk_kl_loss` needs for its tail bucket. No gradient flows.

    Example:
        >>> lp_B_T_K, ids_B_T_K = teacher_topk(torch.tensor([[[0.0, 1.0, 2.0]]]), k=2)
        >>> ids_B_T_K.tolist(), round(lp_B_T_K.exp().sum().item(), 4)
        ([[[2, 1]]], 0.91)

    Raises:
        OpsaConfigError: ``k`` is not in [1, vocabulary size].
    """
    vocab = teacher_logits_B_T_V.shape[-1]
    if not (isinstance(k, int) and 1 <= k <= vocab):
        raise OpsaConfigError(
            f"`top_k` must be an integer in [1, {vocab}] (the vocabulary), got {k!r}"
        )
    with torch.no_grad():
        # top-k of the logits = top-k of the log-probs (log_softmax is a monotone shift);
        # this avoids materialising a full float32 log_softmax.
        logits_B_T_K, ids_B_T_K = teacher_logits_B_T_V.topk(k, dim=-1)
        lse_B_T_1 = torch.logsumexp(teacher_logits_B_T_V.float(), dim=-1, keepdim=True)
        return logits_B_T_K.float() - lse_B_T_1, ids_B_T_K


def topk_kl_loss(
    student_logits_B_T_V: torch.Tensor,
    teacher_topk_logprobs_B_T_K: torch.Tensor,
    teacher_topk_ids_B_T_K: torch.Tensor,
    *,
    alpha: float,
    tail_bucket: bool,
) -> torch.Tensor:
    """Mixed forward/reverse KL restricted to the teacher's top-k ids, per token.

    Both distributions live on the same K outcomes, the teacher's top-k ids at each
    position. With ``tail_bucket=False`` each is renormalised over those K ids. With
    ``tail_bucket=True`` a (K+1)-th outcome holds the remaining mass, 1 - sum of the
    top-k probabilities (for the teacher and the student alike), so a student that
    moves mass outside the teacher's top-k is penalised instead of ignored.

    Example:
        >>> s = torch.tensor([[[0.0, 0.0, 0.0]]])
        >>> lp, ids = teacher_topk(torch.tensor([[[2.0, 0.0, -9.0]]]), k=2)
        >>> round(topk_kl_loss(s, lp, ids, alpha=1.0, tail_bucket=False).item(), 4)
        0.3278

    Args:
        student_logits_B_T_V: student logits; gradients flow into them.
        teacher_topk_logprobs_B_T_K: the teacher's full-vocabulary log-probs at its top-k
            ids (see `teacher_topk`); detached.
        teacher_topk_ids_B_T_K: the matching vocabulary ids (int64).
        alpha: weight of the forward KL in [0, 1]; the reverse KL gets ``1 - alpha``.
        tail_bucket: add the (K+1)-th "everything else" outcome instead of renormalising.

    Returns:
        The per-token loss, float32, shape (B, T), unmasked.

    Note:
        The tail is ``1 - sum(top-k)``, which cancels in float32: a tail of 1e-5 is known
        to ~0.5% (absolute error ~6e-8), so the tail term of the KL is approximate where
        the teacher's tail is tiny. It is clamped to >= ~1e-7 (SDPO does the same).

    Raises:
        OpsaConfigError: ``alpha`` is outside [0, 1].
        ValueError: the shapes do not line up.
    """
    _check_alpha(alpha)
    if teacher_topk_logprobs_B_T_K.shape != teacher_topk_ids_B_T_K.shape:
        raise ValueError(
            "`teacher_topk_logprobs_B_T_K` and `teacher_topk_ids_B_T_K` must have the same "
            f"shape, got {tuple(teacher_topk_logprobs_B_T_K.shape)} and "
            f"{tuple(teacher_topk_ids_B_T_K.shape)}"
        )
    if student_logits_B_T_V.shape[:-1] != teacher_topk_ids_B_T_K.shape[:-1]:
        raise ValueError(
            "student logits and teacher top-k must share (B, T), got "
            f"{tuple(student_logits_B_T_V.shape)} and {tuple(teacher_topk_ids_B_T_K.shape)}"
        )
    logits_B_T_V = student_logits_B_T_V.float()
    # Gather then subtract the log-normaliser: only (B, T, K) log-probs are materialised.
    lse_B_T_1 = torch.logsumexp(logits_B_T_V, dim=-1, keepdim=True)
    student_lp_B_T_K = logits_B_T_V.gather(-1, teacher_topk_ids_B_T_K) - lse_B_T_1
    teacher_lp_B_T_K = teacher_topk_logprobs_B_T_K.detach().float().clamp(min=_LOG_FLOOR)
    if tail_bucket:
        student_lp_B_T_K = _with_tail(student_lp_B_T_K)
        teacher_lp_B_T_K = _with_tail(teacher_lp_B_T_K)
    else:
        student_lp_B_T_K = _renormalise(student_lp_B_T_K)
        teacher_lp_B_T_K = _renormalise(teacher_lp_B_T_K)
    return _mixed_kl(student_lp_B_T_K, teacher_lp_B_T_K, alpha)


# --------------------------------------------------------------------------------------
# Full vocabulary, chunked


def _full_kl_rows(
    student_logits_C_V: torch.Tensor, teacher_logits_C_V: torch.Tensor, alpha: float
) -> torch.Tensor:
    student_lp_C_V = F.log_softmax(student_logits_C_V.float(), dim=-1)
    teacher_lp_C_V = F.log_softmax(teacher_logits_C_V.float(), dim=-1).clamp(min=_LOG_FLOOR)
    return _mixed_kl(student_lp_C_V, teacher_lp_C_V, alpha)


class _ChunkedFullKL(torch.autograd.Function):
    """Full-vocabulary KL whose gradient is computed chunk by chunk during the forward.

    Plain chunking under autograd would keep every chunk's (C, V) float32 log-softmax
    alive until backward, and slicing a (B, T, V) input would make each chunk's backward
    allocate a full-size zero gradient. Here each chunk's loss and gradient are computed
    and the temporaries freed at once; only one (B, T, V) gradient buffer is kept, in the
    student's dtype. Each row's loss depends on its own logits only, so backward is that
    buffer times ``grad_output`` per row, which is exact.
    """

    @staticmethod
    def forward(ctx, student_B_T_V, teacher_B_T_V, alpha: float, chunk_size: int):
        batch, length, _ = student_B_T_V.shape
        loss_B_T = torch.empty(batch, length, device=student_B_T_V.device)
        grad_B_T_V = torch.empty_like(student_B_T_V)
        for b in range(batch):
            for start in range(0, length, chunk_size):
                stop = min(start + chunk_size, length)
                with torch.enable_grad():
                    chunk_C_V = student_B_T_V[b, start:stop].detach().requires_grad_(True)
                    loss_C = _full_kl_rows(chunk_C_V, teacher_B_T_V[b, start:stop], alpha)
                    (grad_C_V,) = torch.autograd.grad(loss_C.sum(), chunk_C_V)
                loss_B_T[b, start:stop] = loss_C.detach()
                grad_B_T_V[b, start:stop] = grad_C_V
        ctx.save_for_backward(grad_B_T_V)
        return loss_B_T

    @staticmethod
    def backward(ctx, grad_out_B_T):
        (grad_B_T_V,) = ctx.saved_tensors
        return grad_B_T_V * grad_out_B_T.unsqueeze(-1).to(grad_B_T_V.dtype), None, None, None


def full_vocab_kl_loss(
    student_logits_B_T_V: torch.Tensor,
    teacher_logits_B_T_V: torch.Tensor,
    *,
    alpha: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mixed forward/reverse KL over the whole vocabulary, per token, in bounded memory.

    Positions are processed ``chunk_size`` at a time (chunks never span two sequences,
    so non-contiguous slices such as ``logits[:, p:-1]`` are not copied). The result and
    its gradient equal the unchunked computation.

    Example:
        >>> s = torch.randn(2, 5, 7, requires_grad=True)
        >>> loss_B_T = full_vocab_kl_loss(s, s.detach(), alpha=0.5, chunk_size=2)
        >>> bool(loss_B_T.abs().max() < 1e-6)
        True

    Args:
        student_logits_B_T_V: student logits; gradients flow into them.
        teacher_logits_B_T_V: teacher logits, same shape; detached.
        alpha: weight of the forward KL in [0, 1]; the reverse KL gets ``1 - alpha``.
        chunk_size: positions per chunk; None computes everything at once.

    Returns:
        The per-token loss, float32, shape (B, T), unmasked.

    Note:
        With gradients enabled, the chunked path computes the student's gradient during
        the forward (peak extra memory: one (B, T, V) buffer in the student's dtype plus
        one chunk in float32), so call it only where backward will follow or under
        ``torch.no_grad()``.

    Raises:
        OpsaConfigError: ``alpha`` is outside [0, 1] or ``chunk_size`` < 1.
        ValueError: the two logits tensors differ in shape.
    """
    _check_alpha(alpha)
    if student_logits_B_T_V.shape != teacher_logits_B_T_V.shape:
        raise ValueError(
            "student and teacher logits must have the same shape, got "
            f"{tuple(student_logits_B_T_V.shape)} and {tuple(teacher_logits_B_T_V.shape)}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise OpsaConfigError(f"`chunk_size` must be an integer >= 1 or None, got {chunk_size!r}")
    teacher_B_T_V = teacher_logits_B_T_V.detach()
    length = student_logits_B_T_V.shape[1]
    if chunk_size is None:
        return _full_kl_rows(student_logits_B_T_V, teacher_B_T_V, alpha)
    if torch.is_grad_enabled() and student_logits_B_T_V.requires_grad:
        return _ChunkedFullKL.apply(student_logits_B_T_V, teacher_B_T_V, alpha, chunk_size)
    rows = [
        _full_kl_rows(
            student_logits_B_T_V[b, t : t + chunk_size], teacher_B_T_V[b, t : t + chunk_size], alpha
        )
        for b in range(student_logits_B_T_V.shape[0])
        for t in range(0, length, chunk_size)
    ]
    return torch.cat(rows).view(student_logits_B_T_V.shape[:2])


# --------------------------------------------------------------------------------------
# Sampled-token (policy-gradient) form


def sampled_token_reverse_kl_loss(
    student_logprobs_B_T: torch.Tensor,
    teacher_logprobs_B_T: torch.Tensor,
    old_student_logprobs_B_T: torch.Tensor,
) -> torch.Tensor:
    """Reverse KL through the sampled tokens only, as a policy-gradient surrogate.

    Each position's advantage is ``teacher_lp - old_student_lp`` (detached): how much
    more the teacher likes the sampled token than the sampling policy did. The surrogate
    is ``-(advantage * ratio)`` with ``ratio = exp(student_lp - old_student_lp)``.

    On-policy (student == old), its value is ``old_lp - teacher_lp``, the one-sample
    estimate of KL(student || teacher), and its gradient is
    ``(old_lp - teacher_lp) * grad(student_lp)``, whose expectation over tokens sampled
    from the student is the exact reverse-KL gradient (the score-function identity).
    No top-k or full logits are needed, only one log-prob per token from each model.

    Example:
        >>> lp = torch.tensor([[-1.0, -2.0]])
        >>> sampled_token_reverse_kl_loss(lp, torch.tensor([[-0.5, -3.0]]), lp).tolist()
        [[-0.5, 1.0]]

    Note:
        Unbiased only when the tokens were sampled from the raw student distribution
        (temperature 1, top_p 1). No ratio clipping (PPO) is applied: with one optimiser
        step per rollout batch the ratio stays 1.

    Returns:
        The per-token surrogate loss, shape (B, T), unmasked.
    """
    old_B_T = old_student_logprobs_B_T.detach().float()
    advantage_B_T = (teacher_logprobs_B_T.detach().float() - old_B_T).detach()
    ratio_B_T = torch.exp(student_logprobs_B_T.float() - old_B_T)
    return -(advantage_B_T * ratio_B_T)


# --------------------------------------------------------------------------------------
# Dispatch: the one place that maps a loss name to its teacher side and student side

_T = torch.Tensor


class DistillLoss(NamedTuple):
    """``teacher_side(teacher_logits, targets)`` keeps what the loss needs (run it without
    grad); ``per_token(student_logits, kept, targets)`` is the (B, T) loss and extras."""

    teacher_side: Callable[[_T, _T], tuple[_T, ...]]
    per_token: Callable[[_T, tuple[_T, ...], _T], tuple[_T, dict[str, _T]]]


def make_loss(
    name: str, *, alpha: float, top_k: int, tail_bucket: bool, chunk_size: int | None
) -> DistillLoss:
    """The two sides of loss ``name`` (``TrainConfig.loss``); unknown: `OpsaConfigError`."""

    def topk(s: _T, kept: tuple[_T, ...], _: _T) -> tuple[_T, dict[str, _T]]:
        loss = topk_kl_loss(s, *kept, alpha=alpha, tail_bucket=tail_bucket)
        with torch.no_grad():  # the forward and reverse parts alone, for the logs
            fwd = topk_kl_loss(s.detach(), *kept, alpha=1.0, tail_bucket=tail_bucket)
            rev = topk_kl_loss(s.detach(), *kept, alpha=0.0, tail_bucket=tail_bucket)
        return loss, {"kl_fwd": fwd, "kl_rev": rev}

    def sampled(s: _T, kept: tuple[_T, ...], targets: _T) -> tuple[_T, dict[str, _T]]:
        lp = token_logprobs(s, targets)  # on-policy: the "old" policy is this one, ratio 1
        return sampled_token_reverse_kl_loss(lp, kept[0], lp.detach()), {}

    def full(s: _T, kept: tuple[_T, ...], _: _T) -> tuple[_T, dict[str, _T]]:
        return full_vocab_kl_loss(s, kept[0], alpha=alpha, chunk_size=chunk_size), {}

    if name in ("mixed_topk", "forward_topk", "reverse_topk"):
        return DistillLoss(lambda t, _: teacher_topk(t, top_k), topk)
    elif name == "mixed_full":
        return DistillLoss(lambda t, _: (t,), full)
    elif name == "sampled_token":
        return DistillLoss(lambda t, targets: (token_logprobs(t, targets),), sampled)
    else:
        raise OpsaConfigError(f"`loss` must be one of the known losses, got {name!r}")
