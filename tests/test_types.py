"""Shared value types: sampling validation, conversations, context placement."""

from __future__ import annotations

import pytest

from flipsearch.contexts import Context, apply_context
from flipsearch.engines import EngineConfig
from flipsearch.errors import ConfigError
from flipsearch.types import Sampling, make_conversation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "`n` must be an integer >= 1"),
        ({"max_tokens": 0}, "`max_tokens` must be an integer >= 1"),
        ({"top_p": 1.5}, r"`top_p` must be in \(0, 1\], got 1.5"),
        ({"top_p": 0.0}, r"`top_p` must be in \(0, 1\]"),
        ({"temperature": -1.0}, "`temperature` must be a finite number >= 0"),
        ({"greedy": True, "n": 2}, "`n` must be 1 when `greedy` is set"),
        ({"temperature": 0.0, "n": 3}, "`temperature` must be > 0 when `n` > 1"),
    ],
)
def test_bad_sampling_settings_are_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Sampling(**kwargs)


def test_greedy_forces_temperature_zero_and_drops_the_seed():
    s = Sampling(greedy=True, temperature=0.7, seed=3)
    assert (s.temperature, s.top_p, s.seed, s.n) == (0.0, 1.0, None, 1)
    assert Sampling(temperature=0.0).greedy


def test_sampling_key_is_stable_and_distinguishes_settings():
    assert Sampling(seed=1).key() == Sampling(seed=1).key()
    assert Sampling(seed=1).key() != Sampling(seed=2).key()


def test_conversation_validation():
    assert make_conversation("hi") == ({"role": "user", "content": "hi"},)
    with pytest.raises(ConfigError, match=r"`messages\[0\].role` must be one of"):
        make_conversation([{"role": "robot", "content": "x"}])
    with pytest.raises(ConfigError, match="at least one message"):
        make_conversation([])


def test_context_placements():
    conv = make_conversation([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert apply_context(conv, "C", "system")[0]["content"] == "C\n\nS"
    assert apply_context(conv, "C", "prefix")[-1]["content"] == "C\n\nQ"
    assert apply_context(conv, "C", "suffix")[-1]["content"] == "Q\n\nC"
    assert apply_context(make_conversation("Q"), "C", "system")[0] == {
        "role": "system",
        "content": "C",
    }
    assert apply_context(conv, "", "prefix") == conv  # the context-free baseline
    assert conv[-1]["content"] == "Q"  # the input is not modified
    with pytest.raises(ConfigError, match="needs a user turn"):
        Context("C", "prefix").apply(make_conversation([{"role": "system", "content": "S"}]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"engine": "tgi"}, "`engine` must be one of"),
        ({"dtype": "int8"}, "`dtype` must be one of"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
    ],
)
def test_bad_engine_config_is_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EngineConfig(**kwargs)
