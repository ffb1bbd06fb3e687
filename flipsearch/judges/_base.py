"""The :class:`Judge` protocol and the batch check every judge runs first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from flipsearch.errors import JudgeError
from flipsearch.types import Verdict


@runtime_checkable
class Judge(Protocol):
    """Batch in, batch out, order preserved: one :class:`~flipsearch.types.Verdict` per pair.

    ``Verdict.judge`` is ``"<name>@<version>"``; a verdict with ``outcome``/``unsafe``
    None means the judge's output could not be read (count it invalid, never safe).
    """

    name: str
    version: str

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]: ...


def judge_cache_id(judge: Judge) -> str:
    """The verdict cache key of ``judge``: ``<name>@<version>``, plus ``+refusal@<v>`` when
    it reads outcomes with the offline matcher, plus ``|<model>:<fingerprint>`` for a model
    judge, so new judge code, a new matcher or other guard weights never reuse verdicts.

    Example:
        >>> from flipsearch.judges import RefusalJudge
        >>> judge_cache_id(RefusalJudge())
        'refusal@6'
    """
    key = f"{judge.name}@{judge.version}"
    matcher = getattr(judge, "matcher_version", None)
    if matcher:
        key += f"+refusal@{matcher}"
    model = getattr(judge, "model_identity", None)
    return f"{key}|{model}" if model else key


def check_batch(prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Raise a JudgeError unless both are sequences of strings of the same length."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise JudgeError(
            "`prompts` and `responses` must be sequences of strings, got a single string: "
            "wrap it in a list"
        )
    if len(prompts) != len(responses):
        raise JudgeError(
            f"`responses` must have one item per prompt, got {len(responses)} responses "
            f"for {len(prompts)} prompts"
        )
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise JudgeError(
                f"`prompts[{i}]` and `responses[{i}]` must be strings, got "
                f"{type(p).__name__} and {type(r).__name__}"
            )
