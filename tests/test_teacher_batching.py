"""The teacher/student batching levers on a tiny random-weight model (seconds).

- ``sort_by_length``: length-sorted micro-batches pad less (``train/pad_frac``) and give
  the same loss and gradients as arrival order;
- ``reuse_teacher_prefix``: the teacher's completion log-probs computed on the shared
  prefix's KV cache equal those of the full pass, with rows of another context and rows
  that share no prefix in the same micro-batch;
- the pure helpers of `opsa_train.batching`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flipsearch.contexts import Context
from flipsearch.engines.chat import render_prompt_ids
from flipsearch.engines.teacher_forcing import build_completion_batch
from flipsearch.export import ExportFile, write_export
from opsa_train.batching import common_prefix, length_order, pad_counts, split_prefix
from opsa_train.config import TrainConfig
from opsa_train.data import student_conversation
from opsa_train.rollout import Rollout
from opsa_train.trainer import Trainer, _batch_counts, _batch_rates

REFUSE = "You are a safe assistant. Refuse harmful requests politely."
HELP = "Answer helpfully and in full."
# Arrival order pairs a short with a long completion in each micro-batch of 2.
COMPLETION_LENS = (3, 40, 5, 36)


# --------------------------------------------------------------------------------------
# Pure helpers


def test_length_order_puts_the_longest_first_and_keeps_ties_in_order():
    assert length_order([3, 9, 5, 9]) == [1, 3, 2, 0]
    assert length_order([]) == []


def test_common_prefix_stops_at_the_first_difference_or_the_shortest_row():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == (1, 2)
    assert common_prefix([[1, 2, 3], [1, 2]]) == (1, 2)
    assert common_prefix([[7], [8]]) == ()
    assert common_prefix([]) == ()


def test_split_prefix_takes_the_longest_match_and_needs_a_token_after_it():
    prefixes = {"header": (1, 2), "context": (1, 2, 3)}
    prompts = [[1, 2, 3, 4], [1, 2, 9], [1, 2, 3], [5, 6], [1, 2]]
    # [1, 2, 3] has no token after "context", so it falls back to "header".
    assert split_prefix(prompts, prefixes) == [
        ("context", [0]),
        ("header", [1, 2]),
        (None, [3, 4]),
    ]


def test_pad_counts_counts_the_padded_input_positions():
    batch = build_completion_batch([[1, 2, 3], [4]], [[5], [6, 7]], pad_id=0)  # widths 4, 3
    assert pad_counts([batch]) == (1, 8)
    assert pad_counts([batch, batch]) == (2, 16)
    assert pad_counts([]) == (0, 0)


# --------------------------------------------------------------------------------------
# Trainer: one tiny model, the levers on and off


@pytest.fixture(scope="module")
def context_file(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctx") / "best.json"
    export = ExportFile(Context(REFUSE, "prefix"), provenance={"model": str(tiny_model)})
    return write_export(path, export)


def _trainer(tiny_model: Path, context_file: Path, out: Path, **levers: bool) -> Trainer:
    config = TrainConfig.cpu_default(
        model=str(tiny_model),
        context_file=str(context_file),
        benign_context=HELP,
        out_dir=str(out),
        max_prompts=2,
        batch_size=4,
        grad_accumulation=2,
        max_new_tokens=8,
        top_k=8,
        steps=1,
        checkpoint_every=0,
        seed=0,
        **levers,
    )
    return Trainer(config)


@pytest.fixture(scope="module")
def trainers(tiny_model, context_file, tmp_path_factory) -> dict[str, Trainer]:
    """The same tiny model with no lever, length sorting only, prefix reuse only."""
    levers = {
        "plain": {"sort_by_length": False, "reuse_teacher_prefix": False},
        "sorted": {"sort_by_length": True, "reuse_teacher_prefix": False},
        "reuse": {"sort_by_length": False, "reuse_teacher_prefix": True},
    }
    return {
        name: _trainer(tiny_model, context_file, tmp_path_factory.mktemp(name), **kw)
        for name, kw in levers.items()
    }


@pytest.fixture(scope="module")
def rollouts(trainers) -> list[Rollout]:
    """Two harmful and two benign rollouts of mixed completion lengths, types alternating."""
    trainer = trainers["plain"]
    rows = trainer.prepared.rows
    harmful = [r for r in rows if r.type == "harmful"][:2]
    benign = [r for r in rows if r.type == "benign"][:2]
    assert len(harmful) == 2 and len(benign) == 2
    gen = torch.Generator().manual_seed(0)
    out = []
    for row, n in zip((harmful[0], benign[0], harmful[1], benign[1]), COMPLETION_LENS, strict=True):
        prompt = tuple(render_prompt_ids(trainer.tokenizer, student_conversation(row)))
        completion = tuple(torch.randint(100, 5000, (n,), generator=gen).tolist())
        out.append(Rollout(row, prompt, completion, (), "", "length"))
    return out


def _step(trainer: Trainer, rollouts: list[Rollout]) -> tuple[dict[str, float], dict]:
    # One step's metrics and gradients, without the optimiser step (weights stay put).
    micro_batches = trainer.teacher_score(rollouts)
    metrics = trainer.loss_and_backward(micro_batches)
    metrics.update(_batch_rates(_batch_counts(micro_batches)))
    grads = {n: p.grad.clone() for n, p in trainer.student.named_parameters()}
    trainer.student.zero_grad(set_to_none=True)
    return metrics, grads


def test_sorted_micro_batches_pad_less_and_give_the_same_loss_and_gradients(trainers, rollouts):
    plain, plain_grads = _step(trainers["plain"], rollouts)
    ordered, ordered_grads = _step(trainers["sorted"], rollouts)
    # Measured: 0.17 -> 0.04 padded (teacher 0.14 -> 0.04, student 0.19 -> 0.04).
    assert ordered["train/pad_frac_teacher"] < plain["train/pad_frac_teacher"] / 2
    assert ordered["train/pad_frac_student"] < plain["train/pad_frac_student"] / 2
    assert ordered["train/pad_frac"] < plain["train/pad_frac"] / 2
    assert ordered["train/tokens"] == plain["train/tokens"] == sum(COMPLETION_LENS)
    assert ordered["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-6)
    assert ordered["train/kl_first16"] == pytest.approx(plain["train/kl_first16"], rel=1e-6)
    assert ordered_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ordered_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_sorted_micro_batches_keep_each_rollout_with_its_own_rows(trainers, rollouts):
    micro_batches = trainers["sorted"].teacher_score(rollouts)
    assert [len(r.completion_ids) for mb in micro_batches for r in mb.rollouts] == [40, 36, 5, 3]
    for mb in micro_batches:
        assert list(mb.student.completion_lens) == [len(r.completion_ids) for r in mb.rollouts]
        assert list(mb.student.prompt_lens) == [len(r.prompt_ids) for r in mb.rollouts]


def _completion_logprobs(trainer: Trainer, prompts, completions) -> tuple[torch.Tensor, int]:
    # The teacher's log-prob of each completion token, (B, T), 0 at padded positions.
    logits_B_T_V, _, reused = trainer.teacher_logits(prompts, completions)
    targets_B_T = build_completion_batch(prompts, completions, trainer.pad_id).targets_B_T
    logprobs_B_T = torch.log_softmax(logits_B_T_V.float(), -1).gather(-1, targets_B_T[..., None])
    mask_B_T = build_completion_batch(prompts, completions, 0).completion_mask_B_T
    return logprobs_B_T.squeeze(-1) * mask_B_T, reused


def test_prefix_reuse_gives_the_teachers_log_probs_of_the_full_pass(trainers, rollouts):
    plain, reuse = trainers["plain"], trainers["reuse"]
    assert plain.prefix_caches == {}
    harmful, benign = reuse.prefix_caches["harmful"], reuse.prefix_caches["benign"]
    # The harmful prefix is the chat header plus the whole context, the benign one its own.
    assert REFUSE in reuse.tokenizer.decode(list(harmful.ids))
    assert HELP in reuse.tokenizer.decode(list(benign.ids))
    prompts = [
        render_prompt_ids(reuse.tokenizer, reuse.contexts.conversation(r.row)) for r in rollouts
    ]
    prompts.append([1, 2, 3, 4])  # shares no prefix: takes the full pass in the same batch
    completions = [r.completion_ids for r in rollouts] + [(7, 8, 9)]
    want, none_reused = _completion_logprobs(plain, prompts, completions)
    got, reused = _completion_logprobs(reuse, prompts, completions)
    assert none_reused == 0
    assert reused == 2 * len(harmful.ids) + 2 * len(benign.ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # measured: 2e-6
    assert want.abs().max() > 0.1  # a real comparison, not of zeros


def test_prefix_reuse_leaves_the_step_loss_unchanged_and_logs_the_tokens_reused(trainers, rollouts):
    plain, plain_grads = _step(trainers["plain"], rollouts)
    reuse, reuse_grads = _step(trainers["reuse"], rollouts)
    assert plain["train/teacher_prefix_reused"] == 0
    assert reuse["train/teacher_prefix_reused"] > 0
    assert reuse["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(reuse_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_train_step_logs_the_batching_metrics(trainers):
    # Last in the file: the step moves this trainer's weights.
    metrics = trainers["sorted"].train_step(1)
    for key in ("train/pad_frac", "train/pad_frac_teacher", "train/pad_frac_student"):
        assert 0.0 <= metrics[key] < 1.0
    assert metrics["train/teacher_prefix_reused"] == 0  # the lever is off in this trainer
