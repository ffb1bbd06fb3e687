"""Apply a privileged context to a conversation.

The one function both the flip-rate scorer and the trainer call, so teacher
prompts in search and in training are built the same way.

Example:
    >>> conv = ({"role": "user", "content": "How do I pick a lock?"},)
    >>> apply_context(conv, "Refuse harmful requests.", "prefix")[0]["content"]
    'Refuse harmful requests.\\n\\nHow do I pick a lock?'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from flipsearch.errors import ConfigError
from flipsearch.types import Conversation

Placement = Literal["system", "prefix", "suffix"]
PLACEMENTS: tuple[str, ...] = get_args(Placement)

SEPARATOR = "\n\n"


def check_placement(placement: str) -> Placement:
    """Return ``placement`` if known, else raise a ConfigError naming the choices."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"`placement` must be one of {PLACEMENTS}, got {placement!r}")
    return placement  # type: ignore[return-value]


@dataclass(frozen=True)
class Context:
    """A privileged context: its text and where it goes in the conversation."""

    text: str
    placement: Placement = "system"

    def __post_init__(self) -> None:
        check_placement(self.placement)
        if not isinstance(self.text, str):
            raise ConfigError(f"`context.text` must be a string, got {self.text!r}")

    def apply(
        self, conversation: Conversation, *, default_system: str | None = None
    ) -> Conversation:
        return apply_context(conversation, self.text, self.placement, default_system=default_system)


def apply_context(
    conversation: Conversation, text: str, placement: str, *, default_system: str | None = None
) -> Conversation:
    """Return a new conversation with ``text`` placed as ``placement`` says.

    - ``system``: a system message; an existing system message gets ``text`` prepended.
    - ``prefix``/``suffix``: joined before/after the content of the last user turn.

    An empty ``text`` returns the conversation unchanged (the context-free baseline).

    Args:
        default_system: the chat template's default system prompt, to keep: with
            ``system`` placement and no system message yet, the new one is ``text``
            followed by it. None: a system message replaces the template's default
            (:mod:`flipsearch.engines.template_caps` detects both).

    Raises:
        ConfigError: unknown placement, or no user turn for prefix/suffix.
    """
    check_placement(placement)
    if not text:
        return tuple(conversation)
    messages = [dict(m) for m in conversation]
    if placement == "system":
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = text + SEPARATOR + messages[0]["content"]
        elif default_system:
            messages.insert(0, {"role": "system", "content": text + SEPARATOR + default_system})
        else:
            messages.insert(0, {"role": "system", "content": text})
        return tuple(messages)
    user_turns = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not user_turns:
        raise ConfigError(
            f"`placement` {placement!r} needs a user turn, got roles "
            f"{[m['role'] for m in messages]!r}"
        )
    last = user_turns[-1]
    content = messages[last]["content"]
    if placement == "prefix":
        messages[last]["content"] = text + SEPARATOR + content
    else:
        messages[last]["content"] = content + SEPARATOR + text
    return tuple(messages)
