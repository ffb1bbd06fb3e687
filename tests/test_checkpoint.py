"""Tests for opsa_train.checkpoint (atomic, pickle-free checkpoints and their index)
and the crash-safe JSONL/CSV logs of opsa_train.metrics_log it relies on."""

from __future__ import annotations

import csv
import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from opsa_train import checkpoint as ckpt
from opsa_train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from opsa_train.errors import CheckpointError, OpsaConfigError
from opsa_train.metrics_log import MetricsLogger, append_jsonl, read_jsonl, read_metrics


class TinyLM(torch.nn.Module):
    """Embedding -> dropout -> linear -> head tied to the embedding."""

    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.drop = torch.nn.Dropout(0.2)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as in many HF models

    def forward(self, ids_B_T: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.drop(self.embed(ids_B_T)))))


def _build(seed: int):
    torch.manual_seed(seed)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + s))
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler) -> float:
    # Uses every RNG a trainer might: torch (data, dropout), Python and NumPy.
    ids_B_T = torch.randint(0, 11, (4, 5))
    shift = random.randint(0, 3) + int(np.random.randint(0, 3))
    logits_B_T_V = model(ids_B_T)
    loss = torch.nn.functional.cross_entropy(
        logits_B_T_V.reshape(-1, 11), ((ids_B_T + shift) % 11).reshape(-1)
    )
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss.item()


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def test_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path):
    model, optimizer, scheduler = _build(0)
    _seed_all(1)
    for _ in range(2):
        _train_step(model, optimizer, scheduler)
    path = save_checkpoint(
        tmp_path,
        step=2,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        data_state={"epoch": 0, "offset": 8, "order": [3, 1, 2]},
    )
    uninterrupted = [_train_step(model, optimizer, scheduler) for _ in range(3)]
    params_after = {k: v.clone() for k, v in model.state_dict().items()}

    # A fresh process: other weights, other RNG state, fresh optimizer and scheduler.
    model2, optimizer2, scheduler2 = _build(123)
    _seed_all(999)
    info = latest_checkpoint(tmp_path)
    assert info is not None and info.step == 2 and info.path == path
    loaded = load_checkpoint(info.path, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    assert loaded.step == 2
    assert loaded.data_state == {"epoch": 0, "offset": 8, "order": [3, 1, 2]}
    assert model2.head.weight is model2.embed.weight  # still tied
    assert scheduler2.last_epoch == 2
    assert optimizer2.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]
    assert isinstance(optimizer2.param_groups[0]["betas"], tuple)

    resumed = [_train_step(model2, optimizer2, scheduler2) for _ in range(3)]
    assert resumed == uninterrupted
    for key, value in model2.state_dict().items():
        assert torch.equal(value, params_after[key]), key


def test_nothing_is_pickled(tmp_path, monkeypatch):
    def _forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for module, name in [
        (torch, "save"),
        (torch, "load"),
        (pickle, "dump"),
        (pickle, "dumps"),
        (pickle, "load"),
        (pickle, "loads"),
    ]:
        monkeypatch.setattr(module, name, _forbidden)
    model, optimizer, scheduler = _build(0)
    _train_step(model, optimizer, scheduler)
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, scheduler=scheduler)
    load_checkpoint(tmp_path / "checkpoints" / "step-1", model=model, optimizer=optimizer)
    suffixes = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".jsonl"}, suffixes
    assert not suffixes & {".pt", ".bin", ".pkl", ".pth"}


def test_checkpoint_folder_layout(tmp_path):
    model, optimizer, scheduler = _build(0)
    _train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, scheduler=scheduler)
    assert path == tmp_path / "checkpoints" / "step-1"
    assert sorted(p.name for p in path.iterdir()) == [
        "complete.json",
        "data.json",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng.json",
        "rng.safetensors",
        "scheduler.json",
    ]
    marker = json.loads((path / "complete.json").read_text())
    assert marker["step"] == 1 and marker["format"] == 1
    assert read_jsonl(tmp_path / "checkpoints.jsonl")[0]["path"] == "checkpoints/step-1"


def test_crash_mid_write_leaves_no_checkpoint_that_latest_returns(tmp_path, monkeypatch):
    model, optimizer, scheduler = _build(0)
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, scheduler=scheduler)

    def _boom(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_json", _boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer, scheduler=scheduler)
    assert latest_checkpoint(tmp_path).step == 1
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-1"]


def test_hard_kill_mid_write_leaves_only_an_ignored_temp_folder(tmp_path, monkeypatch):
    model, optimizer, _ = _build(0)
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    real_write_json = ckpt._write_json

    def _killed_at_marker(path, obj):
        if path.name == "complete.json":
            raise KeyboardInterrupt  # a kill: the cleanup below is also disabled
        real_write_json(path, obj)

    monkeypatch.setattr(ckpt, "_write_json", _killed_at_marker)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer)
    monkeypatch.undo()
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert any(name.startswith("step-2.tmp-") for name in leftovers)
    assert latest_checkpoint(tmp_path).step == 1
    removed = prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in removed] == [n for n in leftovers if n.startswith("step-2.tmp-")]


def test_indexed_folder_without_marker_is_skipped(tmp_path):
    model, optimizer, _ = _build(0)
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    path2 = save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer)
    (path2 / "complete.json").unlink()
    assert latest_checkpoint(tmp_path).step == 1
    with pytest.raises(CheckpointError, match=r"must hold complete\.json"):
        load_checkpoint(path2, model=model)
    save_checkpoint(tmp_path, step=3, model=model, optimizer=optimizer)
    shutil.rmtree(tmp_path / "checkpoints" / "step-3")
    assert latest_checkpoint(tmp_path).step == 1


def test_torn_last_index_line_is_ignored(tmp_path):
    model, optimizer, _ = _build(0)
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer)
    index = tmp_path / "checkpoints.jsonl"
    with open(index, "a") as f:
        f.write('{"step": 3, "path": "checkpoi')  # killed mid-append
    assert latest_checkpoint(tmp_path).step == 2
    # The next append cuts the torn tail instead of gluing onto it.
    save_checkpoint(tmp_path, step=4, model=model, optimizer=optimizer)
    assert [r["step"] for r in read_jsonl(index)] == [1, 2, 4]
    assert latest_checkpoint(tmp_path).step == 4


def test_latest_checkpoint_of_an_empty_run_is_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_resaving_a_step_replaces_it(tmp_path):
    model, optimizer, _ = _build(0)
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, data_state={"v": 1})
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer, data_state={"v": 2})
    info = latest_checkpoint(tmp_path)
    assert load_checkpoint(info.path, model=model).data_state == {"v": 2}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-1"]


def test_prune_keeps_the_most_recent(tmp_path):
    model, optimizer, _ = _build(0)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step=step, model=model, optimizer=optimizer)
    removed = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step-1", "step-2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3", "step-4"]
    assert latest_checkpoint(tmp_path).step == 4
    with pytest.raises(OpsaConfigError, match="`keep` must be an integer >= 1, got 0"):
        prune_checkpoints(tmp_path, keep=0)


def test_truncated_file_is_detected(tmp_path):
    model, optimizer, _ = _build(0)
    path = save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match=r"'model\.safetensors' .* must be"):
        load_checkpoint(path, model=model)


def test_unknown_format_is_rejected(tmp_path):
    model, _, _ = _build(0)
    path = save_checkpoint(tmp_path, step=1, model=model)
    marker = json.loads((path / "complete.json").read_text())
    (path / "complete.json").write_text(json.dumps({**marker, "format": 99}))
    with pytest.raises(CheckpointError, match="checkpoint format must be 1, got 99"):
        load_checkpoint(path, model=model)


def test_non_json_state_is_refused_not_pickled(tmp_path):
    model, _, _ = _build(0)
    with pytest.raises(CheckpointError, match="checkpoints store no pickled objects"):
        save_checkpoint(tmp_path, step=1, model=model, data_state={"sampler": object()})
    assert latest_checkpoint(tmp_path) is None
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_rng_state_round_trips():
    _seed_all(5)
    state = capture_rng_state()
    want = (random.random(), float(np.random.rand()), torch.rand(1).item())
    _seed_all(6)
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == want


# --------------------------------------------------------------------------------------
# crash-safe logs (opsa_train.metrics_log)


def test_jsonl_reader_ignores_torn_last_line_and_skips_bad_middle_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n{"a": 3')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, {"a": 4, "nan": float("nan"), "t": torch.tensor(0.5)})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 4, "nan": None, "t": 0.5}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_metrics_logger_writes_jsonl_and_csv_with_growing_columns(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"train/loss": 1.0})
        log.log(2, {"train/loss": 0.5, "train/kl_fwd": 0.1})
        log.log(3, {"train/loss": 0.25})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "train/loss", "train/kl_fwd"]
    assert [r["train/kl_fwd"] for r in rows] == ["", "0.1", ""]


def test_metrics_logger_resumes_after_a_torn_line(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"train/loss": 1.0})
        log.log(2, {"train/loss": 0.9})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/lo')
    with MetricsLogger(tmp_path) as log:  # resumed from step 1's checkpoint
        log.log(2, {"train/loss": 0.8})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 2]
    last = read_metrics(tmp_path, last_per_step=True)
    assert [(r["step"], r["train/loss"]) for r in last] == [(1, 1.0), (2, 0.8)]
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_missing_wandb_raises_import_error_with_pip_command(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def _no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", _no_wandb)
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger(tmp_path, wandb=True)
