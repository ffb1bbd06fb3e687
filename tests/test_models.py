"""The model resolver and the atomic GGUF conversion."""

from __future__ import annotations

import json
import os

import pytest

from flipsearch import models
from flipsearch.errors import ModelNotFoundError


def test_embedded_model_resolves_to_a_complete_folder(embedded_model_path):
    assert models.is_complete(embedded_model_path)
    config = json.loads((embedded_model_path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config
    assert (embedded_model_path / "chat_template.jinja").is_file() or "chat_template" in (
        embedded_model_path / "tokenizer_config.json"
    ).read_text()


def test_local_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"must hold a config\.json"):
        models.resolve_model(str(tmp_path))


def test_unknown_name_is_rejected():
    with pytest.raises(ModelNotFoundError, match="must be one of"):
        models.resolve_model("not-a-model")


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="could not be fetched from the hub"):
        models.resolve_model("someone/definitely-not-cached-model")


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIPSEARCH_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("FLIPSEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "flipsearch"


def _fake_loaders(monkeypatch, embedded_model_path):
    """Replace the slow GGUF load with a tiny random Llama; the real tokenizer stays."""
    import transformers

    real_tok = transformers.AutoTokenizer.from_pretrained

    def tiny_model(*args, **kwargs):
        cfg = transformers.LlamaConfig(
            vocab_size=49152,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
        return transformers.LlamaForCausalLM(cfg)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", tiny_model)
    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        lambda *a, **k: real_tok(str(embedded_model_path)),
    )


def test_interrupted_conversion_leaves_nothing_the_resolver_accepts(
    monkeypatch, tmp_path, embedded_model_path
):
    _fake_loaders(monkeypatch, embedded_model_path)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    target = tmp_path / "cache" / "m"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(models, "_write_complete_marker", crash)
    with pytest.raises(KeyboardInterrupt):
        models.convert_gguf(gguf, target)
    assert not target.exists()
    assert os.listdir(target.parent) == []  # the temp folder is gone too
    assert not models.is_complete(target)


def test_half_written_folder_is_not_trusted_and_gets_replaced(
    monkeypatch, tmp_path, embedded_model_path
):
    _fake_loaders(monkeypatch, embedded_model_path)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    target = tmp_path / "cache" / "m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a crash of some older, non-atomic writer
    assert not models.is_complete(target)
    models.convert_gguf(gguf, target)
    assert models.is_complete(target)
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
