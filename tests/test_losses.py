"""Tests for opsa_train.losses: hand-computed values on 2-3 token cases, equality,
alpha endpoints, masking, the top-k tail bucket, all-masked batches, gradient flow,
and chunked == unchunked.

Hand values use plain ``math`` on explicit probabilities, never the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from opsa_train.errors import OpsaConfigError
from opsa_train.losses import (
    full_vocab_kl_loss,
    kl_by_position,
    masked_token_mean,
    per_token_kl,
    sampled_token_reverse_kl_loss,
    teacher_topk,
    token_logprobs,
    topk_kl_loss,
)


def _softmax(logits: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in logits)
    return [math.exp(x) / z for x in logits]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


# Two positions, vocabulary 3. Position 0: uniform student vs a peaked teacher;
# position 1: a skewed student vs a teacher with its top token elsewhere.
STUDENT = [[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]
TEACHER = [[2.0, 0.0, -1.0], [0.0, 2.0, 1.0]]


def _tensors() -> tuple[torch.Tensor, torch.Tensor]:
    student_B_T_V = torch.tensor([STUDENT], requires_grad=True)
    return student_B_T_V, torch.tensor([TEACHER])


# --------------------------------------------------------------------------------------
# top-k


def test_topk_renormalised_matches_hand_value_for_each_alpha():
    student_B_T_V, teacher_B_T_V = _tensors()
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=2)
    assert ids_B_T_K.tolist() == [[[0, 1], [1, 2]]]
    # position 0: ids (0, 1); position 1: ids (1, 2); both renormalised over the two ids
    expected = []
    for s_logits, t_logits, ids in (
        (STUDENT[0], TEACHER[0], (0, 1)),
        (STUDENT[1], TEACHER[1], (1, 2)),
    ):
        p_t = _softmax([t_logits[i] for i in ids])
        p_s = _softmax([s_logits[i] for i in ids])
        expected.append((_kl(p_t, p_s), _kl(p_s, p_t)))
    # position 0 written out: teacher (e^2, 1)/(e^2 + 1) = (0.8808, 0.1192), student (0.5, 0.5)
    assert expected[0][0] == pytest.approx(
        0.8808 * math.log(0.8808 / 0.5) + 0.1192 * math.log(0.1192 / 0.5), abs=1e-3
    )
    for alpha in (1.0, 0.0, 0.5, 0.25):
        loss_B_T = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=alpha, tail_bucket=False)
        want = [alpha * fwd + (1 - alpha) * rev for fwd, rev in expected]
        assert loss_B_T.shape == (1, 2)
        assert loss_B_T[0].tolist() == pytest.approx(want, abs=1e-5)


def test_topk_tail_bucket_matches_hand_value():
    student_B_T_V, teacher_B_T_V = _tensors()
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=2)
    loss_B_T = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)
    # position 0: K + 1 = 3 outcomes (id 0, id 1, tail = id 2), unnormalised probabilities
    p_t = _softmax(TEACHER[0])
    p_s = [1 / 3, 1 / 3, 1 / 3]
    want0 = 0.5 * _kl(p_t, p_s) + 0.5 * _kl(p_s, p_t)
    # position 1: top-2 ids (1, 2) then the tail (id 0)
    t1, s1 = _softmax(TEACHER[1]), _softmax(STUDENT[1])
    p_t = [t1[1], t1[2], 1 - t1[1] - t1[2]]
    p_s = [s1[1], s1[2], 1 - s1[1] - s1[2]]
    want1 = 0.5 * _kl(p_t, p_s) + 0.5 * _kl(p_s, p_t)
    assert loss_B_T[0].tolist() == pytest.approx([want0, want1], abs=1e-5)


def test_topk_tail_bucket_of_tiny_teacher_tail_is_accurate_to_float32_cancellation():
    # 1 - sum(top-k) cancels in float32: a teacher tail of 1.3e-5 is known to ~0.5%,
    # which moves the KL by ~1e-3 here; documented in `topk_kl_loss`.
    teacher = [2.0, 0.0, -9.0]
    lp_B_T_K, ids_B_T_K = teacher_topk(torch.tensor([[teacher]]), k=2)
    loss_B_T = topk_kl_loss(torch.zeros(1, 1, 3), lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)
    p_t, p_s = _softmax(teacher), [1 / 3] * 3
    assert loss_B_T.item() == pytest.approx(0.5 * _kl(p_t, p_s) + 0.5 * _kl(p_s, p_t), rel=2e-3)


def test_topk_with_tail_over_all_but_one_id_equals_full_vocab():
    student_B_T_V = torch.randn(2, 3, 6)
    teacher_B_T_V = torch.randn(2, 3, 6)
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=5)
    topk_B_T = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.3, tail_bucket=True)
    full_B_T = full_vocab_kl_loss(student_B_T_V, teacher_B_T_V, alpha=0.3)
    torch.testing.assert_close(topk_B_T, full_B_T, atol=1e-5, rtol=1e-4)


def test_tail_bucket_penalises_mass_moved_outside_the_teacher_topk():
    teacher_B_T_V = torch.tensor([[[3.0, 2.0, -5.0, -5.0]]])
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=2)
    # Same ratio on the top-2 ids as the teacher, but most mass on id 3.
    student_B_T_V = torch.tensor([[[3.0, 2.0, -5.0, 6.0]]])
    renorm = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=False)
    tail = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)
    assert renorm.item() == pytest.approx(0.0, abs=1e-6)
    assert tail.item() > 1.0


@pytest.mark.parametrize("tail_bucket", [False, True])
def test_topk_is_zero_when_student_equals_teacher(tail_bucket):
    logits_B_T_V = torch.randn(2, 4, 11) * 3
    lp_B_T_K, ids_B_T_K = teacher_topk(logits_B_T_V, k=4)
    loss_B_T = topk_kl_loss(logits_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=tail_bucket)
    assert loss_B_T.abs().max().item() < 1e-5


def test_topk_mix_is_linear_in_alpha_between_pure_forward_and_reverse():
    student_B_T_V, teacher_B_T_V = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=4)
    fwd = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=1.0, tail_bucket=True)
    rev = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.0, tail_bucket=True)
    mix = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)
    torch.testing.assert_close(mix, 0.5 * fwd + 0.5 * rev)
    assert not torch.allclose(fwd, rev)


def test_topk_stays_finite_with_minus_inf_teacher_logprobs():
    teacher_B_T_V = torch.tensor([[[0.0, 1.0, -math.inf, -math.inf]]])
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=3)
    assert lp_B_T_K[0, 0, 2].item() == -math.inf
    student_B_T_V = torch.zeros(1, 1, 4, requires_grad=True)
    loss_B_T = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=1.0, tail_bucket=True)
    loss_B_T.sum().backward()
    assert torch.isfinite(loss_B_T).all() and torch.isfinite(student_B_T_V.grad).all()


def test_teacher_topk_returns_full_vocab_logprobs():
    logits_B_T_V = torch.randn(2, 3, 8)
    lp_B_T_K, ids_B_T_K = teacher_topk(logits_B_T_V, k=3)
    want_lp, want_ids = torch.log_softmax(logits_B_T_V, dim=-1).topk(3, dim=-1)
    torch.testing.assert_close(lp_B_T_K, want_lp)
    assert torch.equal(ids_B_T_K, want_ids)
    assert not lp_B_T_K.requires_grad


@pytest.mark.parametrize("k", [0, 9, 2.0])
def test_teacher_topk_rejects_bad_k(k):
    with pytest.raises(OpsaConfigError, match="`top_k` must be an integer in"):
        teacher_topk(torch.randn(1, 1, 8), k=k)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_losses_reject_alpha_outside_unit_interval(alpha):
    s_B_T_V = torch.randn(1, 2, 5)
    lp_B_T_K, ids_B_T_K = teacher_topk(s_B_T_V, k=2)
    with pytest.raises(OpsaConfigError, match=r"`alpha` must be in \[0, 1\]"):
        topk_kl_loss(s_B_T_V, lp_B_T_K, ids_B_T_K, alpha=alpha, tail_bucket=True)
    with pytest.raises(OpsaConfigError, match=r"`alpha` must be in \[0, 1\]"):
        full_vocab_kl_loss(s_B_T_V, s_B_T_V, alpha=alpha)


def test_topk_rejects_mismatched_shapes():
    lp_B_T_K, ids_B_T_K = teacher_topk(torch.randn(1, 3, 5), k=2)
    with pytest.raises(ValueError, match="must share"):
        topk_kl_loss(torch.randn(1, 2, 5), lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)


# --------------------------------------------------------------------------------------
# full vocabulary


def test_full_vocab_matches_hand_value():
    student_B_T_V, teacher_B_T_V = _tensors()
    loss_B_T = full_vocab_kl_loss(student_B_T_V, teacher_B_T_V, alpha=0.5)
    want = []
    for s_logits, t_logits in zip(STUDENT, TEACHER, strict=True):
        p_s, p_t = _softmax(s_logits), _softmax(t_logits)
        want.append(0.5 * _kl(p_t, p_s) + 0.5 * _kl(p_s, p_t))
    assert loss_B_T[0].tolist() == pytest.approx(want, abs=1e-5)
    pure_fwd = full_vocab_kl_loss(student_B_T_V, teacher_B_T_V, alpha=1.0)
    assert pure_fwd[0, 0].item() == pytest.approx(_kl(_softmax(TEACHER[0]), [1 / 3] * 3), abs=1e-5)
    pure_rev = full_vocab_kl_loss(student_B_T_V, teacher_B_T_V, alpha=0.0)
    assert pure_rev[0, 0].item() == pytest.approx(_kl([1 / 3] * 3, _softmax(TEACHER[0])), abs=1e-5)


def test_full_vocab_is_zero_when_student_equals_teacher():
    logits_B_T_V = torch.randn(3, 4, 7)
    assert full_vocab_kl_loss(logits_B_T_V, logits_B_T_V, alpha=0.5).abs().max() < 1e-6
    assert (
        full_vocab_kl_loss(logits_B_T_V, logits_B_T_V, alpha=0.5, chunk_size=3).abs().max() < 1e-6
    )


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 100])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_full_vocab_chunked_equals_unchunked_in_value_and_gradient(chunk_size, alpha):
    torch.manual_seed(0)
    # A non-contiguous slice, as the trainer passes logits[:, p:-1].
    base_B_T_V = torch.randn(2, 7, 13, requires_grad=True)
    teacher_B_T_V = torch.randn(2, 6, 13)
    grad_out_B_T = torch.rand(2, 6)

    ref_B_T = full_vocab_kl_loss(base_B_T_V[:, :-1], teacher_B_T_V, alpha=alpha)
    (ref_B_T * grad_out_B_T).sum().backward()
    ref_grad = base_B_T_V.grad.clone()
    base_B_T_V.grad = None

    got_B_T = full_vocab_kl_loss(
        base_B_T_V[:, :-1], teacher_B_T_V, alpha=alpha, chunk_size=chunk_size
    )
    (got_B_T * grad_out_B_T).sum().backward()
    torch.testing.assert_close(got_B_T, ref_B_T)
    torch.testing.assert_close(base_B_T_V.grad, ref_grad)
    assert base_B_T_V.grad[:, -1].abs().max() == 0

    with torch.no_grad():
        nograd_B_T = full_vocab_kl_loss(
            base_B_T_V[:, :-1], teacher_B_T_V, alpha=alpha, chunk_size=chunk_size
        )
    torch.testing.assert_close(nograd_B_T, ref_B_T)


def test_full_vocab_rejects_bad_chunk_size():
    with pytest.raises(OpsaConfigError, match="`chunk_size` must be an integer >= 1"):
        full_vocab_kl_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 3), alpha=0.5, chunk_size=0)


# --------------------------------------------------------------------------------------
# sampled token


def test_sampled_token_matches_hand_value_and_gradient():
    old_B_T = torch.tensor([[-1.0, -2.0, -0.5]])
    teacher_B_T = torch.tensor([[-0.5, -3.0, -0.5]])
    student_B_T = torch.tensor([[-1.0, -1.5, -0.5]], requires_grad=True)
    loss_B_T = sampled_token_reverse_kl_loss(student_B_T, teacher_B_T, old_B_T)
    # advantage = teacher - old = (0.5, -1.0, 0); ratio = exp(student - old) = (1, e^0.5, 1)
    assert loss_B_T[0].tolist() == pytest.approx([-0.5, 1.0 * math.exp(0.5), 0.0], abs=1e-6)
    loss_B_T.sum().backward()
    # d(-adv * ratio)/d student_lp = -adv * ratio
    assert student_B_T.grad[0].tolist() == pytest.approx([-0.5, math.exp(0.5), 0.0], abs=1e-6)


def test_sampled_token_on_policy_value_is_the_reverse_kl_estimate():
    student_B_T = torch.tensor([[-1.2, -0.3]], requires_grad=True)
    teacher_B_T = torch.tensor([[-0.2, -2.3]])
    loss_B_T = sampled_token_reverse_kl_loss(student_B_T, teacher_B_T, student_B_T.detach())
    torch.testing.assert_close(loss_B_T, (student_B_T - teacher_B_T).detach())
    loss_B_T.sum().backward()
    torch.testing.assert_close(student_B_T.grad, (student_B_T - teacher_B_T).detach())


def test_sampled_token_is_zero_when_all_agree():
    lp_B_T = torch.tensor([[-1.0, -0.1, -4.0]])
    assert sampled_token_reverse_kl_loss(lp_B_T, lp_B_T, lp_B_T).abs().max() == 0


# --------------------------------------------------------------------------------------
# masking and reductions


def test_masked_token_mean_ignores_masked_positions_even_when_infinite():
    loss_B_T = torch.tensor([[1.0, 3.0, math.nan], [5.0, math.inf, 2.0]])
    mask_B_T = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_token_mean(loss_B_T, mask_B_T).item() == pytest.approx(11.0 / 4)
    assert masked_token_mean(loss_B_T, mask_B_T.bool()).item() == pytest.approx(11.0 / 4)


def test_masked_token_mean_num_tokens_makes_micro_batches_sum_to_global_mean():
    loss_B_T = torch.tensor([[1.0, 2.0], [3.0, 4.0], [6.0, 0.0]])
    mask_B_T = torch.tensor([[1, 1], [1, 1], [1, 0]])
    whole = masked_token_mean(loss_B_T, mask_B_T)
    parts = masked_token_mean(loss_B_T[:1], mask_B_T[:1], num_tokens=5) + masked_token_mean(
        loss_B_T[1:], mask_B_T[1:], num_tokens=5
    )
    assert whole.item() == pytest.approx(16.0 / 5)
    assert parts.item() == pytest.approx(whole.item())


def test_all_masked_row_stays_finite_and_contributes_no_gradient():
    student_B_T_V = torch.randn(2, 3, 6, requires_grad=True)
    teacher_B_T_V = torch.randn(2, 3, 6)
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=3)
    loss_B_T = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)
    mask_B_T = torch.tensor([[1, 1, 0], [0, 0, 0]])
    loss = masked_token_mean(loss_B_T, mask_B_T)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student_B_T_V.grad).all()
    assert student_B_T_V.grad[1].abs().max() == 0
    assert student_B_T_V.grad[0, :2].abs().max() > 0


def test_all_masked_batch_returns_zero_and_backward_runs():
    student_B_T_V = torch.randn(2, 3, 6, requires_grad=True)
    loss_B_T = full_vocab_kl_loss(student_B_T_V, torch.randn(2, 3, 6), alpha=0.5, chunk_size=2)
    loss = masked_token_mean(loss_B_T, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and loss.requires_grad
    assert torch.equal(student_B_T_V.grad, torch.zeros_like(student_B_T_V))


@pytest.mark.parametrize("which", ["topk", "topk_renorm", "full", "full_chunked", "sampled"])
def test_gradients_flow_to_student_logits(which):
    torch.manual_seed(1)
    student_B_T_V = torch.randn(2, 3, 8, requires_grad=True)
    teacher_B_T_V = torch.randn(2, 3, 8)
    lp_B_T_K, ids_B_T_K = teacher_topk(teacher_B_T_V, k=3)
    if which == "topk":
        loss_B_T = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=True)
    elif which == "topk_renorm":
        loss_B_T = topk_kl_loss(student_B_T_V, lp_B_T_K, ids_B_T_K, alpha=0.5, tail_bucket=False)
    elif which == "full":
        loss_B_T = full_vocab_kl_loss(student_B_T_V, teacher_B_T_V, alpha=0.5)
    elif which == "full_chunked":
        loss_B_T = full_vocab_kl_loss(student_B_T_V, teacher_B_T_V, alpha=0.5, chunk_size=2)
    else:
        ids_B_T = torch.randint(0, 8, (2, 3))
        student_lp_B_T = torch.log_softmax(student_B_T_V, -1).gather(-1, ids_B_T[..., None])[..., 0]
        teacher_lp_B_T = torch.log_softmax(teacher_B_T_V, -1).gather(-1, ids_B_T[..., None])[..., 0]
        loss_B_T = sampled_token_reverse_kl_loss(
            student_lp_B_T, teacher_lp_B_T, student_lp_B_T.detach()
        )
    masked_token_mean(loss_B_T, torch.ones(2, 3)).backward()
    assert student_B_T_V.grad is not None
    assert torch.isfinite(student_B_T_V.grad).all()
    assert student_B_T_V.grad.abs().max() > 0


def test_bf16_student_logits_give_float32_loss_and_bf16_gradient():
    student_B_T_V = torch.randn(1, 4, 9, dtype=torch.bfloat16, requires_grad=True)
    teacher_B_T_V = torch.randn(1, 4, 9, dtype=torch.bfloat16)
    loss_B_T = full_vocab_kl_loss(student_B_T_V, teacher_B_T_V, alpha=0.5, chunk_size=2)
    assert loss_B_T.dtype == torch.float32
    loss_B_T.sum().backward()
    assert student_B_T_V.grad.dtype == torch.bfloat16


def test_kl_by_position_counts_from_each_rows_first_response_token():
    kl_B_T = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0], [1.0, 5.0, 7.0, 9.0, 9.0]])
    mask_B_T = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    first, rest = kl_by_position(kl_B_T, mask_B_T, first_n=2)
    assert first == pytest.approx((1.0 + 2.0 + 1.0 + 5.0) / 4)
    assert rest == pytest.approx((3.0 + 4.0 + 7.0) / 3)


def test_kl_by_position_gives_nan_for_an_empty_group():
    first, rest = kl_by_position(torch.ones(1, 3), torch.ones(1, 3), first_n=16)
    assert first == 1.0 and math.isnan(rest)


# --------------------------------------------------------------------------------------
# Per-token measures: token log-probs, the KL pair


def test_token_logprobs_matches_hand_value():
    # Position 0: logits (0, ln 3) -> probabilities (1/4, 3/4); position 1: uniform over 2.
    logits_B_T_V = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    lp_B_T = token_logprobs(logits_B_T_V, torch.tensor([[0, 1]]))
    assert lp_B_T.shape == (1, 2) and lp_B_T.dtype == torch.float32
    assert lp_B_T[0].tolist() == pytest.approx([math.log(0.25), math.log(0.5)], abs=1e-6)


def test_token_logprobs_equals_log_softmax_gather_and_passes_gradients():
    torch.manual_seed(0)
    logits_B_T_V = torch.randn(3, 5, 17, requires_grad=True)
    targets_B_T = torch.randint(0, 17, (3, 5))
    lp_B_T = token_logprobs(logits_B_T_V, targets_B_T)
    want_B_T = torch.log_softmax(logits_B_T_V, -1).gather(-1, targets_B_T[..., None])[..., 0]
    assert torch.allclose(lp_B_T, want_B_T, atol=1e-6)
    lp_B_T.sum().backward()
    assert logits_B_T_V.grad is not None and logits_B_T_V.grad.abs().max() > 0


def test_token_logprobs_of_bf16_logits_is_float32():
    logits_B_T_V = torch.randn(1, 2, 9, dtype=torch.bfloat16)
    lp_B_T = token_logprobs(logits_B_T_V, torch.tensor([[1, 2]]))
    want_B_T = token_logprobs(logits_B_T_V.float(), torch.tensor([[1, 2]]))
    assert lp_B_T.dtype == torch.float32 and torch.equal(lp_B_T, want_B_T)


def test_per_token_kl_matches_a_hand_computed_case():
    p_B_T_V = torch.tensor([[[0.0, 0.0]]])  # (1/2, 1/2)
    q_B_T_V = torch.tensor([[[0.0, math.log(3.0)]]])  # (1/4, 3/4)
    fwd_B_T, rev_B_T = per_token_kl(p_B_T_V, q_B_T_V)
    assert float(fwd_B_T) == pytest.approx(_kl([0.5, 0.5], [0.25, 0.75]), abs=1e-6)
    assert float(rev_B_T) == pytest.approx(_kl([0.25, 0.75], [0.5, 0.5]), abs=1e-6)
    # written out: KL(p || q) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    assert float(fwd_B_T) == pytest.approx(0.5 * math.log(2.0) + 0.5 * math.log(2 / 3), abs=1e-6)


def test_per_token_kl_is_zero_for_equal_and_nonnegative():
    x_B_T_V = torch.randn(2, 5, 11)
    fwd_B_T, rev_B_T = per_token_kl(x_B_T_V, x_B_T_V)
    assert float(fwd_B_T.abs().max()) < 1e-6 and float(rev_B_T.abs().max()) < 1e-6
    fwd_B_T, rev_B_T = per_token_kl(x_B_T_V, torch.randn(2, 5, 11))
    assert fwd_B_T.shape == (2, 5) and bool((fwd_B_T >= 0).all()) and bool((rev_B_T >= 0).all())


def test_per_token_kl_pair_equals_the_full_vocab_loss_at_alpha_endpoints():
    # KL(p || q) is the forward KL with p as teacher and q as student; reverse likewise.
    torch.manual_seed(1)
    p_B_T_V, q_B_T_V = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    fwd_B_T, rev_B_T = per_token_kl(p_B_T_V, q_B_T_V)
    assert torch.allclose(fwd_B_T, full_vocab_kl_loss(q_B_T_V, p_B_T_V, alpha=1.0), atol=1e-6)
    assert torch.allclose(rev_B_T, full_vocab_kl_loss(q_B_T_V, p_B_T_V, alpha=0.0), atol=1e-6)
