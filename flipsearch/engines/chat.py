"""Render chat conversations to prompt token ids with the model's own chat template.

Both engines and the teacher-forcing scorer tokenize through here, so the same
conversation always becomes the same token ids: vLLM receives ids, not text. A system
message on a template without a system role is folded into the first user turn
(:func:`flipsearch.engines.template_caps.fit_to_template`, probed once per tokenizer).

Reasoning templates (Qwen3) take an ``enable_thinking`` switch. It is set once on the
tokenizer (:func:`set_enable_thinking`: engines do it from ``EngineConfig.enable_thinking``,
the trainer from its config) and every render of that tokenizer passes it, so rollouts,
teacher scoring and generation never disagree on it. None (the default) passes nothing:
the template's own default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flipsearch.engines.template_caps import fit_to_template
from flipsearch.errors import ConfigError
from flipsearch.think import THINK_CLOSE, THINK_OPEN, prompt_opens_trace
from flipsearch.types import Conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


_ENABLE_THINKING = "flipsearch_enable_thinking"


def set_enable_thinking(tokenizer: PreTrainedTokenizerBase, enable_thinking: bool | None) -> None:
    """Render every prompt of ``tokenizer`` with ``enable_thinking`` (None: template default).

    Raises:
        ConfigError: ``enable_thinking`` is not a bool or None.
    """
    if enable_thinking is not None and not isinstance(enable_thinking, bool):
        raise ConfigError(f"`enable_thinking` must be true, false or null, got {enable_thinking!r}")
    setattr(tokenizer, _ENABLE_THINKING, enable_thinking)


def enable_thinking_of(tokenizer: PreTrainedTokenizerBase) -> bool | None:
    """The ``enable_thinking`` value renders of ``tokenizer`` pass (None: not passed)."""
    value = getattr(tokenizer, _ENABLE_THINKING, None)
    return value if isinstance(value, bool) else None


def rendered_model_key(model_key: str, tokenizer: PreTrainedTokenizerBase | None) -> str:
    """The generation cache's model identity of prompts rendered by ``tokenizer``:
    ``model_key`` plus ``|enable_thinking=<v>`` when the switch is set, so answers made
    with thinking on and off never share a cache entry (unset: ``model_key`` unchanged).

    Example:
        >>> rendered_model_key("m:abc", None)
        'm:abc'
    """
    value = None if tokenizer is None else enable_thinking_of(tokenizer)
    return thinking_model_key(model_key, value)


def thinking_model_key(model_key: str, enable_thinking: bool | None) -> str:
    """``model_key`` plus ``|enable_thinking=<v>`` when the switch is set (see
    :func:`rendered_model_key`)."""
    if enable_thinking is None:
        return model_key
    return f"{model_key}|enable_thinking={str(enable_thinking).lower()}"


def template_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, bool]:
    """Extra chat-template variables of ``tokenizer``: ``enable_thinking`` when set."""
    value = enable_thinking_of(tokenizer)
    return {} if value is None else {"enable_thinking": value}


def template_opens_trace(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template opens ``<think>`` at the end of the prompt, so responses
    start inside the trace (:func:`flipsearch.think.prompt_opens_trace`); False without a
    chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    probe: Conversation = ({"role": "user", "content": "Hi"},)
    return prompt_opens_trace(render_prompt_text(tokenizer, probe))


def template_thinks(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the model will write a ``<think>`` trace before answering: its chat template
    knows ``<think>`` and, as rendered (``enable_thinking`` included), does not close an
    empty trace at the end of the prompt (Qwen3 with ``enable_thinking=False`` does)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or THINK_OPEN not in str(template):
        return False
    probe: Conversation = ({"role": "user", "content": "Hi"},)
    return not render_prompt_text(tokenizer, probe).rstrip().endswith(THINK_CLOSE)


def render_prompt_ids(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> list[int]:
    """Token ids of ``conversation`` followed by the assistant-turn header.

    A leading system message is folded into the first user turn where the template has
    no system role (:func:`~flipsearch.engines.template_caps.fit_to_template`).

    Raises:
        ConfigError: the tokenizer has no chat template, or the conversation does not
            end with a user turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer must have a chat template, got none: "
            "flipsearch works with chat (instruct) models"
        )
    if not conversation or conversation[-1]["role"] != "user":
        roles = [m["role"] for m in conversation]
        raise ConfigError(f"a conversation must end with a user turn, got roles {roles!r}")
    conversation = fit_to_template(tokenizer, conversation)
    ids = tokenizer.apply_chat_template(
        list(conversation),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        **template_kwargs(tokenizer),
    )
    # transformers >= 5 may return a BatchEncoding-like mapping.
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def render_prompt_text(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> str:
    """The templated prompt as text (for display and logs)."""
    return tokenizer.decode(render_prompt_ids(tokenizer, conversation))


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: object | None
) -> list[int]:
    """End-of-turn ids: the tokenizer's EOS plus those of the generation config."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(e) for e in eos)
    return sorted(ids)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS token.

    Padded positions are masked wherever it is used, so borrowing EOS changes no result.

    Raises:
        ConfigError: the tokenizer has neither a pad nor an EOS token.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError(
            "the model's tokenizer must have a pad or an EOS token, got neither: "
            "set `pad_token` in its tokenizer_config.json"
        )
    return int(pad)
