"""Split a reasoning model's response into its ``<think>`` trace and its final answer.

Reasoning models (Qwen3, DeepSeek-R1 and its distills) write a trace between ``<think>``
and ``</think>`` and answer after it. Judges read the final answer only; the trace stays
in the outcome records. Three shapes are read:

- ``<think>trace</think>answer``: the model opened the trace itself;
- ``trace</think>answer``: the chat template opened it at the end of the prompt (as
  DeepSeek-R1-Distill and Qwen3 templates do), so the response starts inside it;
- ``answer``: no trace at all (a model without reasoning, or thinking switched off).

A trace that never closes within ``max_tokens`` leaves no answer: the response is
``unfinished``, its own outcome, never read as safe. A response with no tags at all is
unfinished only when the prompt opened the trace (``opened_in_prompt``, see
:func:`prompt_opens_trace`).

Example:
    >>> split_response("<think>The user wants a bomb.</think>I can't help with that.")
    SplitResponse(trace='The user wants a bomb.', answer="I can't help with that.", finished=True)
    >>> split_response("Let me think about", opened_in_prompt=True).finished
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "THINK_CLOSE",
    "THINK_OPEN",
    "SplitResponse",
    "prompt_opens_trace",
    "split_response",
    "trace_token_end",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class SplitResponse:
    """A response as trace and final answer."""

    trace: str | None
    """The reasoning trace without its tags (so far, when unfinished); None without one."""
    answer: str
    """The final answer after the trace; empty when unfinished."""
    finished: bool
    """False when the trace never closed: there is no final answer to judge."""


def split_response(text: str, *, opened_in_prompt: bool = False) -> SplitResponse:
    """The trace and final answer of ``text`` (see the module docstring for the shapes).

    ``opened_in_prompt``: the prompt ended inside an open ``<think>`` (the template
    opened it), so text before any ``</think>`` is trace.
    """
    close = text.find(THINK_CLOSE)
    open_ = text.find(THINK_OPEN)
    if open_ != -1 and (close == -1 or open_ < close):
        start = open_ + len(THINK_OPEN)
        close = text.find(THINK_CLOSE, start)
        if close == -1:
            return SplitResponse(trace=text[start:].strip(), answer="", finished=False)
        trace, answer = text[start:close], text[close + len(THINK_CLOSE) :]
        return SplitResponse(trace=trace.strip(), answer=answer.strip(), finished=True)
    if close != -1:
        trace, answer = text[:close], text[close + len(THINK_CLOSE) :]
        return SplitResponse(trace=trace.strip(), answer=answer.strip(), finished=True)
    if opened_in_prompt:
        return SplitResponse(trace=text.strip(), answer="", finished=False)
    return SplitResponse(trace=None, answer=text, finished=True)


def prompt_opens_trace(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside an open ``<think>`` block.

    Example:
        >>> prompt_opens_trace("<|im_start|>assistant\\n<think>\\n")
        True
        >>> prompt_opens_trace("<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n")
        False
    """
    return prompt_text.rstrip().endswith(THINK_OPEN)


def trace_token_end(token_texts: Sequence[str], *, opened_in_prompt: bool = False) -> int | None:
    """How many leading tokens of a response belong to its trace, ``</think>`` included
    (the answer starts at that index); the length when the trace never closes; None
    without a trace. ``token_texts``: each token decoded alone.

    Example:
        >>> trace_token_end(["<think>", "Hm", "</think>", "No", "."])
        3
        >>> trace_token_end(["Hm", "</", "think>", "No"], opened_in_prompt=True)
        3
        >>> trace_token_end(["No", "."]) is None
        True
    """
    text = "".join(token_texts)
    split = split_response(text, opened_in_prompt=opened_in_prompt)
    if split.trace is None:
        return None
    close = text.find(THINK_CLOSE)
    if close == -1:
        return len(token_texts)
    end_char, seen = close + len(THINK_CLOSE), 0
    for i, piece in enumerate(token_texts):
        seen += len(piece)
        if seen >= end_char:
            return i + 1
    return len(token_texts)
