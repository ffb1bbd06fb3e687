"""Design (a), likelihood shift: how a context moves the model's own answers' likelihood.

Over the harmful prompts whose context-free answer the judge found unsafe, a context
scores well when it lowers the mean token log-probability of that unsafe answer and raises
the probability that the answer starts as the model's own refusals do (the first tokens
of refusals the judge found in its answers). Teacher forcing only: one forward pass per
prompt over context + prompt + the unsafe answer cut to its first tokens (where flips
show; by default only the first token, which ranked contexts as well as 16 on the
embedded model); the refusal term is read from the same pass, at the answer's first
position.

    score = mean over prompts of [refusal_shift + unsafe_drop]
    refusal_shift = log P(first token in R | c, x) - log P(first token in R | x)
    unsafe_drop   = log p(answer | x) - log p(answer | c, x)   (mean per token)

R: the first tokens of the refusal openings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flipsearch.contexts import Context
from flipsearch.errors import ConfigError
from flipsearch.proxy._forward import (
    AnswerScores,
    ForwardCount,
    answer_scores,
    answer_scores_grouped,
    context_prompt_ids,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class LikelihoodTargets:
    """What every context is scored against, with the context-free log-probabilities.

    Built once per prompt set by :meth:`build` (the unsafe answers come from the
    generation cache or one context-free generation pass; no per-context generation).
    """

    prompts: tuple[str, ...]
    """Harmful prompts whose context-free answer was judged unsafe."""
    answers: tuple[tuple[int, ...], ...]
    """Each prompt's context-free answer, cut to its first ``answer_tokens`` ids."""
    openings: tuple[tuple[int, ...], ...]
    """The model's own refusal openings (token ids), shared by every prompt."""
    base_answer_lp: tuple[float, ...]
    """Per prompt: mean log p(answer | prompt) without a context."""
    base_opening_lp: tuple[float, ...]
    """Per prompt: log P(first answer token is an opening's first token), no context."""
    default_system: str | None = None
    """The chat template's default system prompt kept after a system context (None:
    the context replaces it), as in generation-based scoring."""

    @classmethod
    def build(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        unsafe: Sequence[tuple[str, str]],
        openings: Sequence[Sequence[int]],
        *,
        answer_tokens: int = 1,
        default_system: str | None = None,
        micro_batch: int = 32,
    ) -> LikelihoodTargets:
        """Targets from ``(prompt, unsafe context-free answer)`` pairs and openings.

        Raises:
            ConfigError: no unsafe answers (nothing can flip), or ``answer_tokens`` < 1.
        """
        if answer_tokens < 1:
            raise ConfigError(f"`answer_tokens` must be >= 1, got {answer_tokens}")
        rows = [
            (p, tuple(tokenizer.encode(a, add_special_tokens=False)[:answer_tokens]))
            for p, a in unsafe
        ]
        rows = [(p, a) for p, a in rows if a]
        if not rows:
            raise ConfigError(
                "the likelihood proxy needs harmful prompts whose context-free answer is "
                "unsafe, got none: use a larger or harder harmful set (`--harmful`)"
            )
        targets = cls(
            prompts=tuple(p for p, _ in rows),
            answers=tuple(a for _, a in rows),
            openings=tuple(tuple(int(t) for t in o) for o in openings if o),
            base_answer_lp=(),
            base_opening_lp=(),
            default_system=default_system,
        )
        answer_lp, opening_lp = targets.logprobs(
            model, tokenizer, None, count=ForwardCount(), micro_batch=micro_batch
        )
        return cls(
            prompts=targets.prompts,
            answers=targets.answers,
            openings=targets.openings,
            base_answer_lp=tuple(answer_lp),
            base_opening_lp=tuple(opening_lp),
            default_system=default_system,
        )

    def logprobs(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        context: Context | None,
        *,
        count: ForwardCount,
        micro_batch: int = 32,
    ) -> tuple[list[float], list[float]]:
        """Per prompt: mean log p(answer), and log P(first token opens a refusal), each
        after ``context`` + prompt (None: no context)."""
        prompt_ids = context_prompt_ids(
            tokenizer, self.prompts, context, default_system=self.default_system
        )
        scores = answer_scores(
            model,
            prompt_ids,
            self.answers,
            [o[0] for o in self.openings],
            count=count,
            micro_batch=micro_batch,
        )
        return list(scores.mean_logprob), list(scores.first_token_mass)


@dataclass(frozen=True)
class LikelihoodScore:
    """Design (a)'s score of one context (higher: more likely to flip into refusals)."""

    score: float
    refusal_shift: float
    unsafe_drop: float
    forward_tokens: float


def likelihood_shift(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: Context,
    targets: LikelihoodTargets,
    *,
    micro_batch: int = 32,
) -> LikelihoodScore:
    """Score ``context`` against ``targets`` (see the module docstring)."""
    return likelihood_shifts(model, tokenizer, [context], [targets], micro_batch=micro_batch)[0][0]


def likelihood_shifts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[Context],
    targets: Sequence[LikelihoodTargets],
    *,
    micro_batch: int = 32,
) -> list[list[LikelihoodScore]]:
    """Per context, :func:`likelihood_shift` against each of ``targets`` (the harmful
    and the benign ones), all from one batched teacher-forced run: each context's prefix
    is encoded once for all its rows, and the contexts share micro-batches. A score's
    ``forward_tokens`` is its context's: its prefix and all its rows, every target's.

    Raises:
        ValueError: ``targets`` differ in their openings or default system prompt.
    """
    if len({(t.openings, t.default_system) for t in targets}) > 1:
        raise ValueError("targets scored in one pass must share openings and default_system")
    first = targets[0]
    groups = []
    for context in contexts:
        prompts: list[list[int]] = []
        answers: list[tuple[int, ...]] = []
        for t in targets:
            prompts += context_prompt_ids(
                tokenizer, t.prompts, context, default_system=first.default_system
            )
            answers += t.answers
        groups.append((prompts, answers))
    counts = [ForwardCount() for _ in contexts]
    per_context = answer_scores_grouped(
        model,
        groups,
        [o[0] for o in first.openings],
        counts=counts,
        micro_batch=micro_batch,
    )
    return [
        _scores_by_target(targets, scores, count.tokens)
        for scores, count in zip(per_context, counts, strict=True)
    ]


def _scores_by_target(
    targets: Sequence[LikelihoodTargets], scores: AnswerScores, tokens: float
) -> list[LikelihoodScore]:
    # One context's rows hold every target's prompts, in order: split them back.
    out, start = [], 0
    for t in targets:
        n = len(t.prompts)
        answer_lp = scores.mean_logprob[start : start + n]
        opening_lp = scores.first_token_mass[start : start + n]
        start += n
        drop = sum(b - a for a, b in zip(answer_lp, t.base_answer_lp, strict=True)) / n
        shift = (
            sum(a - b for a, b in zip(opening_lp, t.base_opening_lp, strict=True)) / n
            if t.openings
            else 0.0
        )
        out.append(
            LikelihoodScore(
                score=shift + drop, refusal_shift=shift, unsafe_drop=drop, forward_tokens=tokens
            )
        )
    return out


def refusal_openings(
    tokenizer: PreTrainedTokenizerBase,
    refusals: Sequence[str],
    *,
    tokens: int = 8,
    keep: int = 4,
) -> list[tuple[int, ...]]:
    """The ``keep`` most frequent openings (first ``tokens`` ids) of refusal answers.

    Ties keep first-seen order, so the result is deterministic for a given list.
    """
    counts: Counter[tuple[int, ...]] = Counter()
    for text in refusals:
        ids = tuple(tokenizer.encode(text.strip(), add_special_tokens=False)[:tokens])
        if ids:
            counts[ids] += 1
    return [ids for ids, _ in counts.most_common(keep)]
