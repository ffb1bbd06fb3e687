"""choose_engine: each branch of the engine/dtype defaults on given machine facts; vLLM logging."""

from __future__ import annotations

import logging

import pytest

from flipsearch.engines import EngineConfig, _choice, choose_engine, engine_choice_record
from flipsearch.engines._vllm import _THREADS_LOGGER, quiet_vllm_logging
from flipsearch.errors import ConfigError
from flipsearch.machine import MachineFacts


def facts(capability: str, bf16: bool = False, cuda: str | None = None) -> MachineFacts:
    flags = ("avx2", "avx512f", "avx512_bf16") if bf16 else ("avx2",)
    return MachineFacts("Test CPU", capability, flags, bf16, 4, 4, cuda)


@pytest.fixture
def vllm_imports(monkeypatch):
    """Set whether vllm "imports"; records whether the check ran at all."""
    calls: list[bool] = []

    def set_to(value: bool) -> list[bool]:
        def fake() -> bool:
            calls.append(value)
            return value

        monkeypatch.setattr(_choice, "_vllm_imports", fake)
        return calls

    return set_to


@pytest.mark.parametrize(
    ("machine", "has_vllm", "expected"),
    [
        (facts("AVX2", cuda="H100"), True, ("vllm", "bfloat16")),
        (facts("AVX2", cuda="H100"), False, ("hf", "bfloat16")),
        (facts("AVX512", bf16=True), True, ("vllm", "bfloat16")),
        (facts("AVX512", bf16=False), True, ("vllm", "float32")),
        (facts("AVX512", bf16=True), False, ("hf", "bfloat16")),
        (facts("AMX", bf16=True), True, ("vllm", "bfloat16")),
        (facts("AVX2"), True, ("hf", "float32")),
        (facts("DEFAULT"), True, ("hf", "float32")),
    ],
    ids=[
        "cuda+vllm",
        "cuda-no-vllm",
        "avx512-bf16+vllm",
        "avx512-no-bf16+vllm",
        "avx512-bf16-no-vllm",
        "amx+vllm",
        "avx2",
        "default",
    ],
)
def test_auto_follows_the_machine(machine, has_vllm, expected, vllm_imports):
    vllm_imports(has_vllm)
    choice = choose_engine("auto", "auto", device="auto", facts=machine)
    assert choice.as_tuple() == expected
    assert choice.facts is machine
    assert choice.reason.startswith("auto:")


def test_avx2_cpu_does_not_even_import_vllm(vllm_imports):
    calls = vllm_imports(True)
    assert choose_engine(facts=facts("AVX2")).engine == "hf"
    assert calls == []  # vllm's import costs seconds: not paid where it would not be used


@pytest.mark.parametrize(
    ("engine", "dtype", "machine", "expected"),
    [
        ("vllm", "auto", facts("AVX2"), ("vllm", "float32")),
        ("vllm", "bfloat16", facts("AVX2"), ("vllm", "bfloat16")),
        ("hf", "auto", facts("AVX512", bf16=True), ("hf", "bfloat16")),
        ("hf", "float32", facts("AVX512", bf16=True, cuda="H100"), ("hf", "float32")),
        ("auto", "float16", facts("AVX2"), ("hf", "float16")),
    ],
)
def test_explicit_settings_always_win(engine, dtype, machine, expected, vllm_imports):
    calls = vllm_imports(True)
    choice = choose_engine(engine, dtype, facts=machine)
    assert choice.as_tuple() == expected
    if engine != "auto":
        assert calls == [] and f"engine {engine} set explicitly" in choice.reason
    if dtype != "auto":
        assert f"dtype {dtype} set explicitly" in choice.reason


def test_device_cpu_on_a_cuda_machine_decides_as_the_cpu(vllm_imports):
    vllm_imports(True)
    machine = facts("AVX2", cuda="H100")
    assert choose_engine(device="cpu", facts=machine).as_tuple() == ("hf", "float32")
    assert choose_engine(device="cuda", facts=facts("AVX2")).as_tuple() == ("vllm", "bfloat16")


@pytest.mark.parametrize(("engine", "dtype"), [("tgi", "auto"), ("hf", "int8")])
def test_unknown_values_are_rejected(engine, dtype):
    with pytest.raises(ConfigError, match=r"must be one of"):
        choose_engine(engine, dtype, facts=facts("AVX2"))


def test_decision_is_logged_once_with_the_machine(caplog, monkeypatch, vllm_imports):
    vllm_imports(True)
    monkeypatch.setattr(_choice, "_logged", set())
    with caplog.at_level(logging.INFO, logger="flipsearch.engines._choice"):
        for _ in range(3):
            choose_engine(facts=facts("AVX512", bf16=True))
    (record,) = caplog.records
    line = record.getMessage()
    for part in ("engine vllm", "dtype bfloat16", "AVX512", "native bf16", "4 threads", "Test CPU"):
        assert part in line, line


def test_choice_is_recorded_with_machine_facts(monkeypatch):
    monkeypatch.setattr(_choice, "machine_facts", lambda: facts("AVX2"))
    config = EngineConfig(engine="hf", device="cpu")
    choice = config.choose()
    record = choice.to_dict()
    assert record["engine"] == "hf" and record["dtype"] == "float32"
    assert record["machine"]["capability"] == "AVX2"  # type: ignore[index]

    class Built:
        pass

    built = Built()
    assert engine_choice_record(built) is None
    built.choice = choice  # type: ignore[attr-defined]
    assert engine_choice_record(built) == record


def test_quiet_vllm_logging_respects_the_user_and_lets_the_thread_warning_once(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    quiet_vllm_logging()
    import os

    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    quiet_vllm_logging(verbose=False)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"  # the user's setting wins
    monkeypatch.delenv("VLLM_LOGGING_LEVEL")
    quiet_vllm_logging(verbose=True)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"

    worker = logging.getLogger(_THREADS_LOGGER)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    worker.addHandler(handler)
    try:
        for f in worker.filters:  # a fresh filter state for this test
            f.seen = False  # type: ignore[attr-defined]
        msg = "CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding"
        for _ in range(4):
            worker.warning(msg)
        worker.warning("another warning")
    finally:
        worker.removeHandler(handler)
    assert seen == [msg, "another warning"]


@pytest.mark.parametrize(("argv", "level"), [(["spaces"], "WARNING"), (["-v", "spaces"], "INFO")])
def test_cli_quiets_vllm_unless_verbose(argv, level, monkeypatch, capsys):
    import os

    from flipsearch.cli import main

    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    assert main(argv) == 0
    assert os.environ["VLLM_LOGGING_LEVEL"] == level
