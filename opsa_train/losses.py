"""Per-token distillation losses for OPSA: pure tensor math, no model, no config.

Each loss takes tensors plus keyword-only knobs and returns a per-token loss of shape
(B, T); the trainer masks and normalises it with `masked_token_mean` (the paper's
token mean). Positions are response tokens: position t holds the distribution over
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

The per-token measures `token_logprobs` and `per_token_kl` (no knobs, no reduction) serve
the trainer, the baselines, the evaluation's retention score and the KL analysis alike.

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

import torch
import torch.nn.functional as F

from opsa_train.errors import ConfigError

# Teacher log-probs of -inf (banned or padded vocabulary ids) are raised to this floor:
# exp() of it is still exactly 0 in float32, but 0 * (-inf) no longer makes NaN.
_LOG_FLOOR = -1e4
# The top-k log-mass is clamped to <= -_TAIL_EPS, so the tail bucket keeps >= ~1e-7 of
# mass: float32 round-off can make the top-k mass reach or pass 1, and log(0) = -inf.
_TAIL_EPS = 1e-7


def _check_alpha(alpha: float) -> None:
    if not (0.0 <= alpha <= 1.0):
        raise ConfigError(
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
        ConfigError: ``k`` is not in [1, vocabulary size].
    """
    vocab = teacher_logits_B_T_V.shape[-1]
    if not (isinstance(k, int) and 1 <= k <= vocab):
        raise ConfigError(f"`top_k` must be an integer in [1, {vocab}] (the vocabulary), got {k!r}")
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
        ConfigError: ``alpha`` is outside [0, 1].
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
        ConfigError: ``alpha`` is outside [0, 1] or ``chunk_size`` < 1.
        ValueError: the two logits tensors differ in shape.
    """
    _check_alpha(alpha)
    if student_logits_B_T_V.shape != teacher_logits_B_T_V.shape:
        raise ValueError(
            "student and teacher logits must have the same shape, got "
            f"{tuple(student_logits_B_T_V.shape)} and {tuple(teacher_logits_B_T_V.shape)}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"`chunk_size` must be an integer >= 1 or None, got {chunk_size!r}")
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
# Per-token measures (no reduction): log-probs at targets, full-vocabulary KL pair


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
    fwd_B_T = _mixed_kl(lq_B_T_V, lp_B_T_V, alpha=1.0)  # "teacher" p: forward = KL(p || q)
    rev_B_T = _mixed_kl(lq_B_T_V, lp_B_T_V, alpha=0.0)
    return fwd_B_T.clamp(min=0.0), rev_B_T.clamp(min=0.0)


# --------------------------------------------------------------------------------------
# Reductions and metrics


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
    if first_n < 1:
        raise ConfigError(f"`first_n` must be >= 1, got {first_n!r}")
    keep_B_T = mask_B_T.bool()
    rank_B_T = keep_B_T.long().cumsum(dim=1)  # 1-based position within the response
    kl_B_T = per_token_kl_B_T.detach().float()

    def _mean(select_B_T: torch.Tensor) -> float:
        return kl_B_T[select_B_T].mean().item() if bool(select_B_T.any()) else math.nan

    return _mean(keep_B_T & (rank_B_T <= first_n)), _mean(keep_B_T & (rank_B_T > first_n))
