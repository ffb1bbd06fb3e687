"""Teacher-forcing alignment on a tiny random Llama (shapes, masking, fast path)."""

from __future__ import annotations

import pytest
import torch
import transformers

from flipsearch.engines import teacher_forcing as tf


@pytest.fixture(scope="module")
def tiny():
    cfg = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_completion_logits_predict_each_completion_token(tiny):
    prompts, completions = [[1, 2, 3, 4, 5], [6, 7]], [[8, 9, 10], [11, 12, 13, 14]]
    batch = tf.build_completion_batch(prompts, completions, pad_id=0)
    logits_B_T_V = tf.completion_logits(tiny, batch)
    assert logits_B_T_V.shape == (2, 4, 300)
    assert batch.completion_mask_B_T.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        full = tiny(input_ids=torch.tensor([p + c])).logits[0]
        for t in range(len(c)):
            # The logits predicting completion token t sit at position len(p) - 1 + t.
            torch.testing.assert_close(logits_B_T_V[b, t], full[len(p) - 1 + t])
    assert torch.all(logits_B_T_V[0, 3] == 0)  # padded position


def test_fast_head_path_equals_the_full_forward(tiny, monkeypatch):
    batch = tf.build_completion_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    fast = tf.completion_logits(tiny, batch)
    monkeypatch.setattr(tf, "_plain_lm_head", lambda model: None)
    torch.testing.assert_close(fast, tf.completion_logits(tiny, batch))


def test_gradients_flow_through_completion_logits(tiny):
    batch = tf.build_completion_batch([[1, 2]], [[3, 4]], pad_id=0)
    tiny.requires_grad_(True)
    tf.completion_logits(tiny, batch).sum().backward()
    assert tiny.model.embed_tokens.weight.grad is not None
    tiny.zero_grad()


def test_rows_run_on_a_prefix_cache_give_the_full_pass_logits(tiny):
    prefix = [5, 6, 7, 8, 9, 10]
    prompts = [[*prefix, 11, 12], [*prefix, 13], [*prefix, 14, 15, 16, 17]]
    completions = [[20, 21, 22], [23], [24, 25]]
    want = tf.completion_logits(tiny, tf.build_completion_batch(prompts, completions, pad_id=0))
    cache = tf.encode_prefix(tiny, prefix)
    assert cache.ids == tuple(prefix) and cache.layers[0][0].shape[:3] == (1, 2, 6)
    rest = tf.build_completion_batch([p[len(prefix) :] for p in prompts], completions, pad_id=0)
    for _ in range(2):  # the shared cache is read, never extended
        got = tf.completion_logits(tiny, rest, prefix=cache)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert cache.layers[0][0].shape[2] == len(prefix)


def test_prefix_cache_is_offered_only_to_full_attention_decoders(tiny):
    from types import SimpleNamespace

    assert tf.supports_prefix_cache(tiny)
    sliding = SimpleNamespace(config=SimpleNamespace(model_type="qwen2", use_sliding_window=True))
    assert not tf.supports_prefix_cache(sliding)  # type: ignore[arg-type]
    assert not tf.supports_prefix_cache(
        SimpleNamespace(config=SimpleNamespace(model_type="gemma2"))
    )  # type: ignore[arg-type]


def test_encode_prefix_of_no_tokens_names_the_rule(tiny):
    from flipsearch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`ids` must hold at least one token id, got \[\]"):
        tf.encode_prefix(tiny, [])


@pytest.mark.parametrize(("pad", "eos", "want"), [(3, 7, 3), (None, 7, 7), (0, 7, 0)])
def test_pad_token_id_prefers_pad_then_eos(tiny, pad, eos, want):
    from types import SimpleNamespace

    from flipsearch.engines.chat import pad_token_id

    tok = SimpleNamespace(pad_token_id=pad, eos_token_id=eos)
    assert pad_token_id(tok) == want
    assert tf.TeacherForcingScorer(tiny, tok).pad_id == want


def test_pad_token_id_without_pad_or_eos_names_the_fix():
    from types import SimpleNamespace

    from flipsearch.engines.chat import pad_token_id
    from flipsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="must have a pad or an EOS token, got neither"):
        pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))
