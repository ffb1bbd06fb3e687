"""What a chat template does with system messages, probed once per tokenizer.

Templates differ in two ways that matter for ``system`` placement
(:func:`flipsearch.contexts.apply_context`):

- **No system role** (Gemma 1/2, older Mistral templates): the template raises on a
  system message (``raise_exception('System role not supported')``) or drops it silently.
  :func:`render_prompt_ids <flipsearch.engines.chat.render_prompt_ids>` then folds the
  system message into the first user turn as a prefix (the separator of ``prefix``
  placement), with one warning per tokenizer (:func:`fit_to_template`).
- **A default system prompt** rendered when the conversation has none (the embedded
  SmolLM2's: "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
  Qwen2.5's): a system-placed context replaces it, as any given system message does.
  ``keep_default_system`` (:class:`flipsearch.flip.ScoreSettings`) keeps it, with the
  context prepended (``apply_context(..., default_system=...)``).

:func:`template_caps` renders two probe conversations the first time it sees a tokenizer
(and again only if its ``chat_template`` changes), so a template that raises on system
messages raises once, at start-up, never per prompt. Results record the outcome
(:meth:`TemplateCaps.record`: ``system_placement`` and the default's first 80 characters).

Example:
    >>> caps = template_caps(tokenizer)  # doctest: +SKIP
    >>> caps.system_role, caps.default_system[:19]  # doctest: +SKIP
    (True, 'You are a helpful A')
    >>> caps.system_placement()  # doctest: +SKIP
    'replaces_default'
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from flipsearch.contexts import SEPARATOR
from flipsearch.errors import ConfigError
from flipsearch.types import Conversation, Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["SystemPlacement", "TemplateCaps", "fit_to_template", "fold_system", "template_caps"]

logger = logging.getLogger(__name__)

SystemPlacement = Literal["native", "folded_into_user", "replaces_default", "keeps_default"]

RECORD_CHARS = 80
"""Characters of a default system prompt that results record."""

# Strings no real template contains, to find where each message lands in the rendering.
_PROBE_SYSTEM = "flipsearch-probe-system-8c1d"
_PROBE_USER = "flipsearch-probe-user-8c1d"


@dataclass(frozen=True)
class TemplateCaps:
    """A chat template's handling of system messages (:func:`template_caps`)."""

    system_role: bool
    """A system message renders: no exception, and its text is in the output."""
    default_system: str | None = None
    """The system prompt the template renders when the conversation has none, if any."""

    def system_placement(self, *, keep_default_system: bool = False) -> SystemPlacement:
        """What ``system`` placement does with this template.

        ``native``: a system message; ``folded_into_user``: a prefix of the first user
        turn (no system role); ``replaces_default``/``keeps_default``: a system message
        instead of / before the template's default system prompt.
        """
        if not self.system_role:
            return "folded_into_user"
        if self.default_system is None:
            return "native"
        return "keeps_default" if keep_default_system else "replaces_default"

    def kept_default(self, keep_default_system: bool) -> str | None:
        """The default system prompt to keep after a ``system``-placed context: the
        template's, when asked and it has one (else None, logged when asked)."""
        if keep_default_system and self.default_system is None:
            logger.warning(
                "`keep_default_system` is ignored: the chat template has no default system prompt"
            )
        return self.default_system if keep_default_system else None

    def record(self, *, keep_default_system: bool = False) -> dict[str, object]:
        """The fields results record: ``system_placement`` and ``default_system`` (its
        first :data:`RECORD_CHARS` characters, or None)."""
        default = self.default_system
        return {
            "system_placement": self.system_placement(keep_default_system=keep_default_system),
            "default_system": None if default is None else default[:RECORD_CHARS],
        }


def template_caps(tokenizer: PreTrainedTokenizerBase) -> TemplateCaps:
    """Probe ``tokenizer``'s chat template; cached per tokenizer and template text.

    Raises:
        ConfigError: the tokenizer has no chat template, or it fails on a lone user turn.
    """
    return _probe(tokenizer).caps


def fold_system(conversation: Conversation) -> Conversation:
    """``conversation`` with a leading system message moved into the first user turn, as
    a prefix joined by the ``prefix`` placement's separator.

    >>> fold_system(({"role": "system", "content": "Be safe."},
    ...              {"role": "user", "content": "Hi"}))
    ({'role': 'user', 'content': 'Be safe.\\n\\nHi'},)

    Raises:
        ConfigError: a system message with no user turn after it.
    """
    if not conversation or conversation[0]["role"] != "system":
        return tuple(conversation)
    system, rest = conversation[0], [dict(m) for m in conversation[1:]]
    users = [i for i, m in enumerate(rest) if m["role"] == "user"]
    if not users:
        roles = [m["role"] for m in conversation]
        raise ConfigError(f"a system message must be followed by a user turn, got {roles!r}")
    first = users[0]
    rest[first]["content"] = system["content"] + SEPARATOR + rest[first]["content"]
    return tuple(rest)


def fit_to_template(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> Conversation:
    """``conversation`` as ``tokenizer``'s template can render it: unchanged, or with its
    system message folded into the first user turn (:func:`fold_system`) where the
    template has no system role. The fold is logged once per tokenizer, not per prompt.
    """
    entry = _probe(tokenizer)
    if entry.caps.system_role or not conversation or conversation[0]["role"] != "system":
        return conversation
    if not entry.warned:
        entry.warned = True
        logger.warning(
            "the model's chat template has no system role: system messages (and `system` "
            "placement) are folded into the first user turn as a prefix; results record "
            "system_placement='folded_into_user'"
        )
    return fold_system(conversation)


# ------------------------------------------------------------------------- probing


@dataclass
class _Probe:
    template: str
    caps: TemplateCaps
    warned: bool = False


# Weak keys: the cache lives as long as the tokenizer does, and a new tokenizer (or a
# changed ``chat_template``) is probed afresh.
_PROBES: weakref.WeakKeyDictionary[object, _Probe] = weakref.WeakKeyDictionary()


def _probe(tokenizer: PreTrainedTokenizerBase) -> _Probe:
    template = str(getattr(tokenizer, "chat_template", None) or "")
    if not template:
        raise ConfigError(
            "the model's tokenizer must have a chat template, got none: "
            "flipsearch works with chat (instruct) models"
        )
    entry = _PROBES.get(tokenizer)
    if entry is None or entry.template != template:
        entry = _Probe(template, _detect(tokenizer))
        _PROBES[tokenizer] = entry
    return entry


def _detect(tokenizer: PreTrainedTokenizerBase) -> TemplateCaps:
    user: Message = {"role": "user", "content": _PROBE_USER}
    try:
        bare = _render(tokenizer, [user])
    except Exception as e:  # a template may raise anything (jinja TemplateError mostly)
        raise ConfigError(
            f"the model's chat template must render a lone user turn, got {type(e).__name__}: {e}"
        ) from e
    try:
        with_system = _render(tokenizer, [{"role": "system", "content": _PROBE_SYSTEM}, user])
    except Exception:  # e.g. raise_exception('System role not supported')
        return TemplateCaps(system_role=False)
    if _PROBE_SYSTEM not in with_system:  # dropped silently
        return TemplateCaps(system_role=False)
    return TemplateCaps(system_role=True, default_system=_default_system(bare, with_system))


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> str:
    from flipsearch.engines.chat import template_kwargs

    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs(tokenizer)
    )
    if not isinstance(text, str):
        raise ConfigError(f"the chat template must render text, got {type(text).__name__}")
    return text


def _default_system(bare: str, with_system: str) -> str | None:
    # The text before the user turn, without and with the probe system message. With the
    # probe removed, the second is the template's system header around empty content;
    # what the first holds between that header's ends is the default system prompt.
    # Templates that always render a system header (Llama 3.1's date lines) give "".
    bare_head = bare.split(_PROBE_USER, 1)[0]
    before, _, after = with_system.split(_PROBE_USER, 1)[0].partition(_PROBE_SYSTEM)
    empty = before + after
    start = min(_common_prefix(bare_head, empty), len(before))
    end = min(_common_prefix(bare_head[::-1], empty[::-1]), len(after), len(bare_head) - start)
    default = bare_head[start : len(bare_head) - end].strip()
    return default or None


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
