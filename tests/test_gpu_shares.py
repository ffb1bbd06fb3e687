"""One GPU for the generator and a model judge: shares planned and checked at start."""

from __future__ import annotations

import dataclasses

import pytest

from flipsearch.cli import build_parser
from flipsearch.commands._common import engine_and_judge_configs
from flipsearch.engines import EngineConfig
from flipsearch.engines.gpu_shares import (
    DEFAULT_GENERATOR_SHARE,
    DEFAULT_JUDGE_SHARE,
    judge_shares_gpu,
    plan_gpu_shares,
)
from flipsearch.errors import ConfigError
from flipsearch.judges import JudgeConfig
from flipsearch.machine import MachineFacts
from opsa_train.config import TrainConfig
from opsa_train.errors import OpsaConfigError

CPU = MachineFacts("AMD EPYC", "AVX2", ("avx2",), False, 2, 2, None)
GPU = dataclasses.replace(CPU, cuda="NVIDIA H200")


def test_shares_are_filled_when_a_vllm_judge_shares_the_gpu_and_kept_otherwise():
    assert plan_gpu_shares(None, None, shared=True) == (
        DEFAULT_GENERATOR_SHARE,
        DEFAULT_JUDGE_SHARE,
    )
    assert DEFAULT_GENERATOR_SHARE + DEFAULT_JUDGE_SHARE < 1.0
    assert plan_gpu_shares(0.6, None, shared=True) == (0.6, DEFAULT_JUDGE_SHARE)
    assert plan_gpu_shares(0.9, 0.9, shared=False) == (0.9, 0.9)  # two devices
    assert plan_gpu_shares(None, None, shared=False) == (None, None)


def test_shares_that_do_not_fit_one_gpu_stop_the_run_naming_both():
    with pytest.raises(ConfigError, match=r"0\.8 \(generator\) \+ .* 0\.3 \(model judge\) = 1\.10"):
        plan_gpu_shares(0.8, 0.3, shared=True)
    with pytest.raises(ConfigError, match=r"`judge_gpu_memory_utilization` must lie in \(0, 1\]"):
        plan_gpu_shares(0.5, 1.5, shared=False)


@pytest.mark.parametrize(
    ("facts", "judge", "generator_engine", "shared"),
    [
        (GPU, JudgeConfig("llamaguard", engine="vllm"), "vllm", True),
        (GPU, JudgeConfig("llamaguard", engine="auto"), "auto", True),  # auto: vLLM on CUDA
        (GPU, JudgeConfig("llamaguard", engine="hf"), "vllm", False),  # HF judge: no vLLM pool
        (GPU, JudgeConfig("refusal"), "vllm", False),  # offline judge: no engine
        (CPU, JudgeConfig("llamaguard", engine="vllm"), "vllm", False),  # no GPU to share
    ],
)
def test_the_judge_shares_the_gpu_only_as_a_second_vllm_engine_on_cuda(
    facts, judge, generator_engine, shared
):
    engine = EngineConfig(model="m", engine=generator_engine)
    assert judge_shares_gpu(engine, judge, facts=facts) is shared


def test_score_and_sweep_options_reach_both_configs_and_are_checked(monkeypatch):
    import flipsearch.engines.gpu_shares as shares
    import flipsearch.machine as machine

    monkeypatch.setattr(machine, "machine_facts", lambda: GPU)
    monkeypatch.setattr(shares, "judge_shares_gpu", lambda e, j: judge_shares_gpu(e, j, facts=GPU))
    parser = build_parser()
    base = ["--engine", "vllm", "--judge", "llamaguard", "--judge-engine", "vllm"]
    for command in (["score", "--context", "Refuse."], ["sweep", "--study", "s", "--trials", "2"]):
        args = parser.parse_args(command + base + ["--gpu-memory-utilization", "0.5"])
        engine, judge = engine_and_judge_configs(args)
        assert (engine.gpu_memory_utilization, judge.gpu_memory_utilization) == (0.5, 0.35)
        assert judge.engine == "vllm"
        args = parser.parse_args(
            command + base + ["--gpu-memory-utilization", "0.8", "--judge-gpu-memory-utilization",
                              "0.3"]
        )  # fmt: skip
        with pytest.raises(ConfigError, match=r"must be < 1\.0"):
            engine_and_judge_configs(args)


def test_a_sweep_config_with_shares_that_cannot_fit_fails_before_a_model_loads(
    tmp_path, monkeypatch
):
    import flipsearch.sweep._run as run
    from flipsearch.sweep import SweepConfig, run_sweep

    monkeypatch.setattr(run, "judge_shares_gpu", lambda e, j: True)
    loaded: list[str] = []
    monkeypatch.setattr(EngineConfig, "build", lambda self: loaded.append(self.model))
    config = SweepConfig(
        space="paper_axes", study="gpu", trials=1, results_dir=str(tmp_path),
        cache=str(tmp_path / "c.sqlite"), limit_harmful=2, limit_benign=2,
        engine=EngineConfig(engine="vllm", gpu_memory_utilization=0.7),
        judge=JudgeConfig("llamaguard", engine="vllm", gpu_memory_utilization=0.4),
        show_progress=False,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"0\.7 \(generator\) \+ .*0\.4 \(model judge\)"):
        run_sweep(config)
    assert loaded == []


def test_a_judge_share_does_not_change_the_study_identity():
    a = JudgeConfig("llamaguard", gpu_memory_utilization=0.3)
    b = dataclasses.replace(a, gpu_memory_utilization=0.4)
    from flipsearch.sweep import SweepConfig

    assert SweepConfig(study="x", judge=a).identity() == SweepConfig(study="x", judge=b).identity()


def test_train_config_checks_the_sampler_share():
    assert TrainConfig(gpu_memory_utilization=0.3).gpu_memory_utilization == 0.3
    with pytest.raises(OpsaConfigError, match="gpu_memory_utilization"):
        TrainConfig(gpu_memory_utilization=0.0)


def test_the_gpu_recipe_overrides_build_valid_stage_configs(tmp_path):
    # tests/test_gpu_recipe.py runs these on CUDA only; here: they parse and reach the
    # stage configs (the sampler's share, the generator's share, vLLM everywhere).
    from test_gpu_recipe import GPU_OVERRIDES

    from opsa_train.demo import DEFAULT_CONFIG
    from opsa_train.pipeline_config import (
        _eval_config,
        _sweep_config,
        _train_config,
        load_pipeline_config,
    )

    cfg = load_pipeline_config(DEFAULT_CONFIG, [*GPU_OVERRIDES, f"results_dir={tmp_path}"])
    assert _sweep_config(cfg).engine.gpu_memory_utilization == 0.3
    assert _sweep_config(cfg).engine.engine == "vllm"
    train = _train_config(cfg, "opsa")
    assert (train.engine, train.gpu_memory_utilization, train.dtype) == ("vllm", 0.2, "bfloat16")
    assert _eval_config(cfg).gpu_memory_utilization == 0.3
