"""One study, one engine and dtype: resuming on another resolved engine or dtype is refused."""

from __future__ import annotations

import json

import pytest
from test_sweep import FakeEngine, fake_config, run_fake

from flipsearch.engines import EngineConfig, choose_engine
from flipsearch.errors import ConfigError
from flipsearch.machine import MachineFacts
from flipsearch.sweep._provenance import ENGINE_FILE, check_engine_choice

AVX2 = MachineFacts("AMD EPYC 7B13", "AVX2", ("avx2",), False, 2, 2, None)
AVX512 = MachineFacts("AMD EPYC 9B14", "AVX512", ("avx512f", "avx512_bf16"), True, 4, 4, None)


def test_a_sweep_records_its_engine_choice_and_refuses_another_dtype(tmp_path):
    expected = EngineConfig().choose()
    engine = FakeEngine()
    engine.choice = expected  # as EngineConfig.build sets it
    study = run_fake(fake_config(tmp_path, trials=1), engine)
    folder = tmp_path / "results" / "fake"
    recorded = json.loads((folder / ENGINE_FILE).read_text())
    assert (recorded["engine"], recorded["dtype"]) == expected.as_tuple()
    assert recorded["machine"]["capability"] == expected.facts.capability
    # The export provenance and every trial record the decision with the machine facts.
    assert study.user_attrs["provenance"]["engine_choice"] == recorded
    assert study.trials[0].user_attrs["engine_choice"] == recorded

    run_fake(fake_config(tmp_path, trials=2), engine)  # same machine, same settings: resumes
    other = "float16" if expected.dtype != "float16" else "float32"
    config = fake_config(tmp_path, trials=3, engine=EngineConfig(dtype=other))
    engine.choice = config.engine.choose()  # what EngineConfig.build would give it
    with pytest.raises(ConfigError) as err:
        run_fake(config, engine)
    msg = str(err.value)
    assert f"resolved `dtype` must match the study's {folder / ENGINE_FILE}" in msg
    assert repr(expected.dtype) in msg and repr(other) in msg
    assert len(run_fake(fake_config(tmp_path, trials=2)).trials) == 2  # nothing was added


def test_a_sweep_building_its_engine_checks_the_config_choice(tmp_path):
    # Without a built engine, check_config resolves config.engine itself.
    from flipsearch.sweep._provenance import check_config

    config = fake_config(tmp_path, trials=1)
    check_config(config)
    recorded = json.loads((config.folder / ENGINE_FILE).read_text())
    assert (recorded["engine"], recorded["dtype"]) == config.engine.choose().as_tuple()
    other = "float16" if recorded["dtype"] != "float16" else "float32"
    with pytest.raises(ConfigError, match="resolved `dtype` must match"):
        check_config(fake_config(tmp_path, trials=1, engine=EngineConfig(dtype=other)))


def test_auto_resolving_differently_on_another_machine_is_refused(tmp_path, monkeypatch):
    # A study started with engine auto on an AVX-512 bf16 machine (vLLM, bfloat16), resumed
    # with the same config on an AVX2 machine (HF, float32): the engine differs.
    from flipsearch.engines import _choice

    monkeypatch.setattr(_choice, "_vllm_imports", lambda: True)
    config = fake_config(tmp_path, trials=1)
    check_engine_choice(config, choose_engine(facts=AVX512))
    check_engine_choice(config, choose_engine(facts=AVX512))  # same decision: fine
    with pytest.raises(ConfigError) as err:
        check_engine_choice(config, choose_engine(facts=AVX2))
    msg = str(err.value)
    assert "resolved `engine` must match" in msg
    assert "'vllm'" in msg and "'hf'" in msg
    assert "AMD EPYC 9B14 AVX512" in msg and "AMD EPYC 7B13 AVX2" in msg
    # Explicit settings matching the recorded choice resume on the AVX2 machine too.
    check_engine_choice(config, choose_engine("vllm", "bfloat16", facts=AVX2))


def test_eval_json_records_each_models_engine_choice(tmp_path):
    from test_evaluate import FakeEngine, _config, _rule_for

    from flipsearch.cache import GenerationCache
    from flipsearch.judges import make_judge
    from opsa_train.evaluate import evaluate

    choice = choose_engine("hf", "float32", facts=AVX2)

    def factory(model: str) -> FakeEngine:
        engine = FakeEngine(model, _rule_for(model.removeprefix("fake-")))
        if model == "fake-careful":
            engine.choice = choice  # type: ignore[attr-defined]  # as EngineConfig.build sets it
        return engine

    config = _config(tmp_path, reasoning_sets=(), over_refusal_sets=(), limit=2)
    evaluate(
        config,
        engine_factory=factory,
        judge=make_judge("refusal"),
        cache=GenerationCache(":memory:"),
        retention=False,
    )
    doc = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert doc["engines"]["base"] is None  # a fake without a decision
    careful = doc["engines"]["careful"]
    assert (careful["engine"], careful["dtype"]) == ("hf", "float32")
    assert careful["machine"]["cpu_model"] == "AMD EPYC 7B13"
    assert "engine hf set explicitly" in careful["reason"]
