"""`opsa-train run` on two CPU processes (``accelerate launch``, gloo DDP), tiny model.

- two processes split the global batch and train it as one process does: the same
  per-step loss, gradient norm, token count and rollout figures, and the same weights
  (float tolerance: the gradient is reduced in another order);
- only the main process writes: each step once in ``metrics.jsonl`` and the checkpoint
  index, one ``final/``, which loads in a single process;
- a 2-process run stopped at a step boundary (a copy of a finished one, rewound to its
  step-1 checkpoint) and resumed on 2 processes continues exactly: losses, gradient
  norms, checkpoints and final weights bit for bit;
- in process, with a fake accelerator: the batch split, per-process rollout seeds, the
  guards on batch size and on a launcher that started processes accelerate cannot see.

Rollouts here use temperature 1e-6 (argmax up to exact ties): two processes draw their
samples from other seeds than one process does (`opsa_train.rollout.rollout_seed`), so
only near-greedy rollouts make the two runs' global batches the same responses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flipsearch.contexts import Context
from flipsearch.export import ExportFile, write_export
from opsa_train import loop as loop_mod
from opsa_train.checkpoint import INDEX_FILE
from opsa_train.cli import main as cli_main
from opsa_train.config import load_train_config
from opsa_train.errors import OpsaConfigError
from opsa_train.metrics_log import read_jsonl, read_metrics
from opsa_train.rollout import rollout_seed
from opsa_train.trainer import FINAL_MARKER, Trainer

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
LOSS_RTOL = 1e-5
"""Relative tolerance on the loss and gradient norm, 2 processes vs 1 (measured: 4e-8)."""
UPDATE_RTOL = 1e-3
"""Norm of the difference of the two runs' weight updates over 3 steps, relative to the
update's norm. Measured on an AVX2 EPYC: 9.8e-5, and 1.1e-4 with the two processes on
other kernels (``ATEN_CPU_CAPABILITY=default``). The largest single element is no
bound: there it differed by 1.3e-4 after a 3e-3 move, as on the AVX-512 CI machine."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _args(tiny_model: Path, context: Path, steps: int) -> list[str]:
    # 4 harmful + 4 benign prompts, a global batch of 4 (2 per process), one prompt per
    # micro-batch (2 per process: the no_sync path), 2 rollouts of 8 tokens each.
    values = {
        "max_prompts": 4,
        "benign_share": 0.5,
        "batch_size": 4,
        "grad_accumulation": 4,
        "n_rollouts": 2,
        "max_new_tokens": 8,
        "temperature": 1e-6,
        "lr": 1e-3,
        "top_k": 8,
        "checkpoint_every": 1,
        "keep_checkpoints": "none",
        "seed": 0,
        "dtype": "float32",
        "export_model_mismatch": "warn",
    }
    return [
        "--context",
        str(context),
        "--model",
        str(tiny_model),
        "--steps",
        str(steps),
        *(f"{k}={v}" for k, v in values.items()),
    ]


def launch_two(run_args: list[str]) -> subprocess.CompletedProcess[str]:
    """``opsa-train run`` under ``accelerate launch`` on 2 CPU processes (gloo DDP).

    ``--cpu`` alone starts one process; ``--multi_gpu`` starts two, and
    ``ACCELERATE_USE_CPU`` makes accelerate join them on CPU (else each trains alone).
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
    }
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += ["-m", "opsa_train.cli", "run", *run_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def context(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ctx") / "best.json"
    write_export(
        path,
        ExportFile(Context("Refuse harmful requests.", "system"), provenance={"model": "x"}),
    )
    return path


@pytest.fixture(scope="module")
def two_process_run(tiny_model, context, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "two"
    launch_two(["--out", str(out), *_args(tiny_model, context, STEPS)])
    return out


def _metrics(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir, last_per_step=True)}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_two_processes_train_the_global_batch_as_one_process_does(
    two_process_run, tiny_model, context, tmp_path
):
    one = tmp_path / "one"
    assert cli_main(["run", "--out", str(one), *_args(tiny_model, context, STEPS)]) == 0
    m1, m2 = _metrics(one), _metrics(two_process_run)
    assert sorted(m2) == sorted(m1) == list(range(1, STEPS + 1))
    for step in m1:
        a, b = m1[step], m2[step]
        # The global batch: 4 prompts x 2 rollouts x 8 tokens; one process of two alone
        # would count 32 tokens, both processes on the whole batch 128.
        assert a["train/tokens"] == b["train/tokens"] == 64
        for key in ("train/loss", "train/kl", "train/grad_norm", "train/kl_first16"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL), (step, key)
        for key in ("rollout/length_mean", "rollout/refusal_harmful", "train/pad_frac"):
            assert b[key] == a[key], (step, key)
    assert m1[1]["train/loss"] > 1e-3  # a loss that can differ

    w1, w2 = _weights(one / "final"), _weights(two_process_run / "final")
    w0 = _weights(tiny_model)
    assert w1.keys() == w2.keys() and set(w0) <= set(w1)
    # The whole update, not its largest element: AdamW divides each gradient by its own
    # running scale, so a coordinate whose gradient is ~eps (a sum that nearly cancels)
    # can take a step of up to lr from a rounding difference in the reduction order.
    update_one = torch.cat([(w1[k] - w0[k]).flatten() for k in w0])
    update_two = torch.cat([(w2[k] - w0[k]).flatten() for k in w0])
    gap = float((update_one - update_two).norm() / update_one.norm())
    assert float(update_one.norm()) > 1e-2, "the steps must move the weights"
    assert gap < UPDATE_RTOL, gap


def test_only_the_main_process_writes(two_process_run):
    out = two_process_run
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(out / INDEX_FILE)] == [1, 2, 3]
    assert json.loads((out / "final" / FINAL_MARKER).read_text())["step"] == STEPS
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    # final/ holds whole weights that load in a single process.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    final = _weights(out / "final")
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), final[name]), name


def _stopped_at(run: Path, step: int, dst: Path) -> Path:
    # A copy of `run` as a run stopped after `step` leaves it: its checkpoints up to
    # `step` (byte for byte what that run wrote), their index and metrics rows, no final/.
    shutil.copytree(run, dst)
    shutil.rmtree(dst / "final")
    for later in range(step + 1, STEPS + 1):
        shutil.rmtree(dst / "checkpoints" / f"step-{later}")
    for name in (INDEX_FILE, "metrics.jsonl"):
        rows = [r for r in read_jsonl(dst / name) if r["step"] <= step]
        (dst / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (dst / "metrics.csv").unlink()
    return dst


def test_a_resumed_two_process_run_continues_exactly(two_process_run, tmp_path):
    out = _stopped_at(two_process_run, 1, tmp_path / "resumed")
    proc = launch_two(["--out", str(out), "--resume"])
    assert '"resumed_from": 1' in proc.stdout, proc.stdout

    full, resumed = _metrics(two_process_run), _metrics(out)
    assert sorted(resumed) == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(out / INDEX_FILE)] == [1, 2, 3]
    for step in (2, 3):  # trained again after the resume: the same figures, bit for bit
        for key in ("train/loss", "train/grad_norm", "train/kl", "rollout/length_mean"):
            assert resumed[step][key] == full[step][key], (step, key)
    for step in (2, 3):
        again = _weights(out / "checkpoints" / f"step-{step}")
        first = _weights(two_process_run / "checkpoints" / f"step-{step}")
        assert again.keys() == first.keys()
        assert all(torch.equal(again[k], first[k]) for k in first), step
    assert (out / "final" / "model.safetensors").read_bytes() == (
        two_process_run / "final" / "model.safetensors"
    ).read_bytes()


# --------------------------------------------------------------------------------------
# In process, with a fake accelerator (fast)


class _FakeAccelerator:
    """Process ``rank`` of ``world`` without communication: `reduce` adds nothing."""

    def __init__(self, rank: int, world: int) -> None:
        self.is_main_process = rank == 0
        self.process_index = rank
        self.num_processes = world
        self.device = torch.device("cpu")

    def prepare(self, *objs):
        return objs

    def unwrap_model(self, model):
        return model

    def reduce(self, tensor, reduction):
        return tensor

    def wait_for_everyone(self):
        pass


def _tiny_config(tiny_model: Path, context: Path, out: Path, **extra: object):
    values = {
        "model": str(tiny_model),
        "context_file": str(context),
        "out_dir": str(out),
        "engine": "hf",
        "max_prompts": 4,
        "benign_share": 0.5,
        "batch_size": 4,
        "max_new_tokens": 4,
        "dtype": "float32",
        "export_model_mismatch": "warn",
        **extra,
    }
    return load_train_config(None, values)


def test_processes_split_each_global_batch_and_sample_with_their_own_seeds(
    tiny_model, context, tmp_path, monkeypatch
):
    batches: dict[int, list[list[str]]] = {}
    seeds: dict[int, int | None] = {}
    for rank in (0, 1):
        monkeypatch.setattr(loop_mod, "_make_accelerator", lambda c, r=rank: _FakeAccelerator(r, 2))
        trainer = Trainer(_tiny_config(tiny_model, context, tmp_path / f"r{rank}"), resume=False)
        batches[rank] = [[r.id for r in trainer.next_local_batch()] for _ in range(3)]
        seeds[rank] = trainer.sampling(5).seed
        trainer.close()
    monkeypatch.setattr(loop_mod, "_make_accelerator", lambda c: None)
    single = Trainer(_tiny_config(tiny_model, context, tmp_path / "single"), resume=False)
    whole = [[r.id for r in single.next_local_batch()] for _ in range(3)]
    for step in range(3):
        assert len(batches[0][step]) == len(batches[1][step]) == 2
        # Round-robin: the two shares interleave back into the one-process batch.
        merged = [x for pair in zip(batches[0][step], batches[1][step], strict=True) for x in pair]
        assert merged == whole[step]
    assert seeds[0] == single.sampling(5).seed == rollout_seed(single.config.seed, 5)
    assert seeds[1] != seeds[0]


def test_batch_size_must_divide_among_processes_the_launch_must_be_seen_and_no_fsdp(
    tiny_model, context, tmp_path, monkeypatch
):
    monkeypatch.setattr(loop_mod, "_make_accelerator", lambda c: _FakeAccelerator(0, 3))
    with pytest.raises(OpsaConfigError, match=r"`batch_size` must be a multiple of the 3"):
        Trainer(_tiny_config(tiny_model, context, tmp_path / "a"), resume=False)
    # Two processes started (WORLD_SIZE=2) that accelerate joins as one each.
    monkeypatch.setattr(loop_mod, "_make_accelerator", lambda c: _FakeAccelerator(0, 1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(OpsaConfigError, match="WORLD_SIZE=2 processes but accelerate sees 1"):
        Trainer(_tiny_config(tiny_model, context, tmp_path / "b"), resume=False)
    # FSDP: refused before anything is written (its checkpoints would hold shards).
    monkeypatch.delenv("WORLD_SIZE")
    fsdp = _FakeAccelerator(0, 2)
    fsdp.distributed_type = "FSDP"  # accelerate's DistributedType.FSDP is this str
    monkeypatch.setattr(loop_mod, "_make_accelerator", lambda c: fsdp)
    with pytest.raises(OpsaConfigError, match="with FSDP is not supported"):
        Trainer(_tiny_config(tiny_model, context, tmp_path / "c"), resume=False)
    for name in ("a", "b", "c"):
        assert not (tmp_path / name).exists()


# --------------------------------------------------------------------------------------
# vLLM rollouts: the weight sync after each step, with a fake engine


class _FakeVLLMEngine:
    """What `VLLMRollouts` uses of a vLLM engine, on an HF model of its own (the initial
    weights, as a fresh vLLM engine holds); `load_weights` records every sync."""

    def __init__(self, model_path: Path) -> None:
        from flipsearch.engines import EngineConfig
        from flipsearch.engines._hf import HFEngine

        config = EngineConfig(model=str(model_path), engine="hf", dtype="float32", device="cpu")
        self.inner = HFEngine(config, str(model_path))
        self.tokenizer = self.inner.tokenizer
        self.syncs: list[dict[str, torch.Tensor]] = []

    def generate_ids(self, prompts, sampling):
        return self.inner.generate_ids(prompts, sampling)

    def load_weights(self, named_tensors) -> None:
        weights = {name: tensor.clone() for name, tensor in named_tensors}
        self.syncs.append(weights)
        missing, unexpected = self.inner.model.load_state_dict(weights, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)

    def close(self) -> None:
        pass


def _checkpoint_params(model_dir: Path, folder: Path) -> dict[str, torch.Tensor]:
    # A checkpoint's weights by parameter name (it stores tied weights once, under either name).
    from transformers import AutoModelForCausalLM

    from opsa_train.checkpoint import load_checkpoint

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    load_checkpoint(folder, model=model, restore_rng=False)
    return {name: param.detach() for name, param in model.named_parameters()}


def _engine_matches(engine: _FakeVLLMEngine, weights: dict[str, torch.Tensor]) -> bool:
    state = engine.inner.model.state_dict()
    return all(torch.equal(state[name], weights[name]) for name in weights if name in state)


def test_vllm_sampler_gets_the_trained_weights_after_every_step_and_on_resume(
    tiny_model, context, tmp_path, monkeypatch
):
    from flipsearch.engines import EngineConfig

    engines: list[_FakeVLLMEngine] = []

    def build(config: EngineConfig) -> _FakeVLLMEngine:
        engines.append(_FakeVLLMEngine(Path(config.model)))
        return engines[-1]

    monkeypatch.setattr(EngineConfig, "build", build)
    monkeypatch.setattr(loop_mod, "_make_accelerator", lambda c: None)
    out = tmp_path / "run"
    values = {"engine": "vllm", "steps": 2, "checkpoint_every": 1, "sync_check_every": 0}
    Trainer(_tiny_config(tiny_model, context, out, **values), resume=False).run()
    (engine,) = engines
    names = {n for n, _ in engine.inner.model.named_parameters()}
    assert len(engine.syncs) == 2  # one per optimiser step, none before the first
    initial = _weights(tiny_model)
    for step, synced in enumerate(engine.syncs, start=1):
        assert set(synced) == names  # every trained tensor (tied ones once)
        trained = _checkpoint_params(tiny_model, out / "checkpoints" / f"step-{step}")
        assert all(torch.equal(synced[k], trained[k]) for k in synced), step
        assert not all(torch.equal(synced[k], initial[k]) for k in synced)  # it moved
    assert _engine_matches(engine, _weights(out / "final"))

    # Resumed: the new engine starts from the initial weights and gets step 2's first.
    values["steps"] = 3
    Trainer(_tiny_config(tiny_model, context, out, **values), resume=True).run()
    resumed = engines[1]
    assert len(resumed.syncs) == 2
    step2 = _checkpoint_params(tiny_model, out / "checkpoints" / "step-2")
    assert all(torch.equal(resumed.syncs[0][k], step2[k]) for k in resumed.syncs[0])
    assert _engine_matches(resumed, _weights(out / "final"))
