"""Render chat conversations to prompt token ids with the model's own chat template.

Both engines and the teacher-forcing scorer tokenize through here, so the same
conversation always becomes the same token ids: vLLM receives ids, not text. A system
message on a template without a system role is folded into the first user turn
(:func:`flipsearch.engines.template_caps.fit_to_template`, probed once per tokenizer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flipsearch.engines.template_caps import fit_to_template
from flipsearch.errors import ConfigError
from flipsearch.types import Conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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
        list(conversation), add_generation_prompt=True, tokenize=True, return_dict=False
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
