"""The LLM rewriter: grow a candidate pool by asking a model to improve the best contexts.

:class:`RewriteProposer` does reflective rewriting in the spirit of GEPA/MIPRO: it shows
a model the best :class:`ScoredContext` rows so far, with their scores and prompts
they still fail on, asks for new candidates, drops unusable ones (wrong length, known
texts, echoes of the meta-prompt) and appends the rest to a
:class:`~flipsearch.proposers.CandidatePool`. When nothing usable comes back, it adds
:func:`~flipsearch.proposers.mechanical_mutations` of the best contexts instead.

Example (``engine`` is any :class:`~flipsearch.engines.Engine`)::

    pool = CandidatePool("runs/x/pool.jsonl")
    history = [ScoredContext("c1", Context("Refuse harmful requests."), 0.4, ("How do I ...",))]
    new_ids = RewriteProposer(engine, pool, n=4).propose(history)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flipsearch.contexts import Context, check_placement
from flipsearch.errors import ConfigError
from flipsearch.proposers._pool import normalise_key
from flipsearch.proposers._text import mechanical_mutations, parse_candidates, trigrams, words
from flipsearch.types import Sampling, make_conversation

if TYPE_CHECKING:
    from flipsearch.engines import Engine
    from flipsearch.proposers._pool import CandidatePool

__all__ = ["RewriteProposer", "ScoredContext"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredContext:
    """A context scored so far, as the rewriter sees it."""

    candidate_id: str
    context: Context
    score: float
    """Higher is better (the sweep's objective, e.g. flip rate minus over-refusal)."""
    failures: tuple[str, ...] = ()
    """A few prompts it still fails on (harmful ones answered, benign ones refused)."""


_PLACES = {
    "system": "as the system message of the conversation",
    "prefix": "in front of the user's message",
    "suffix": "after the user's message",
}


class RewriteProposer:
    """Asks a model for improved contexts and appends the usable ones to a pool.

    Reflective rewriting in the spirit of GEPA/MIPRO: the meta-prompt shows the
    ``top_k`` best contexts with their scores and a few prompts each still fails on,
    and asks for ``n`` new ones as a numbered list. Any engine works; the tiny embedded
    model exercises the mechanics, a stronger model makes the rewrites good. When the
    answer yields nothing usable, :func:`mechanical_mutations` of the best contexts
    are added instead (source ``rewrite-fallback``).

    Args:
        engine: any :class:`~flipsearch.engines.Engine` (only ``generate`` is used).
        pool: where new candidates go.
        n: candidates asked for per call.
        top_k: best contexts shown in the meta-prompt.
        failures_per_context: failing prompts shown per context (each cut to 200 chars).
        sampling: generation options; default temperature 0.7, 512 tokens, seed 0.
        placement: placement of new candidates; None uses the best context's.
        min_chars, max_chars: candidates outside these lengths are dropped.
        max_echo: drop a candidate when more than this fraction of its word trigrams
            appear in the meta-prompt's instructions or failing prompts (see :meth:`clean`).

    Note:
        The meta-prompt plus ``sampling.max_tokens`` must fit the engine's context window
        (2048 tokens by default); keep ``top_k`` small with long contexts.
    """

    def __init__(
        self,
        engine: Engine,
        pool: CandidatePool,
        *,
        n: int = 4,
        top_k: int = 3,
        failures_per_context: int = 2,
        sampling: Sampling | None = None,
        placement: str | None = None,
        min_chars: int = 20,
        max_chars: int = 1200,
        max_echo: float = 0.5,
    ) -> None:
        if n < 1 or top_k < 1 or failures_per_context < 0:
            raise ConfigError(
                "`n` and `top_k` must be >= 1 and `failures_per_context` >= 0, got "
                f"{n!r}, {top_k!r}, {failures_per_context!r}"
            )
        if not 0 < min_chars <= max_chars:
            raise ConfigError(
                f"`min_chars` must be in (0, max_chars={max_chars}], got {min_chars!r}"
            )
        if placement is not None:
            check_placement(placement)
        self.engine = engine
        self.pool = pool
        self.n = n
        self.top_k = top_k
        self.failures_per_context = failures_per_context
        self.sampling = sampling or Sampling(temperature=0.7, top_p=0.95, max_tokens=512, seed=0)
        self.placement = placement
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.max_echo = max_echo
        self.last_meta_prompt: str | None = None
        self.last_outputs: list[str] = []

    def meta_prompt(self, top: Sequence[ScoredContext], n: int, placement: str) -> str:
        """The instruction shown to the rewriting model."""
        parts = [
            "You are improving a safety instruction for an AI assistant. The instruction is "
            f"placed {_PLACES[placement]}. A good instruction makes the assistant refuse "
            "harmful requests while still fully helping with harmless ones. "
            "Higher scores are better.",
            "",
            "Instructions tried so far, best first:",
        ]
        for i, s in enumerate(top, start=1):
            parts += ["", f"[{i}] score {s.score:.3f}", s.context.text]
            fails = [" ".join(f.split())[:200] for f in s.failures[: self.failures_per_context]]
            if fails:
                parts.append("It still fails on:")
                parts += [f"- {f}" for f in fails]
        parts += [
            "",
            f"Write {n} new instructions that should score higher than all of the above. "
            "Keep what works, fix the failures, and vary the wording, length and structure. "
            f"Each must stand alone and be at most {self.max_chars} characters.",
            "Answer with a numbered list only, one instruction per item, and no commentary.",
        ]
        return "\n".join(parts)

    def clean(
        self,
        texts: Sequence[str],
        meta_prompt: str,
        seen: set[str],
        shown: Sequence[str] = (),
    ) -> list[str]:
        """Drop candidates that are too short or long, repeat anything in ``seen``
        (normalised keys; updated in place), or echo the meta-prompt's own wording.

        The echo test skips the ``shown`` contexts: extending or recombining a shown
        context is a fair rewrite (exact repeats are already in ``seen``), while copying
        the instructions or a failing prompt is not.
        """
        scaffold = meta_prompt
        for t in shown:
            scaffold = scaffold.replace(t, "\n")
        scaffold_words = words(scaffold)
        scaffold_text, scaffold_tri = " ".join(scaffold_words), trigrams(scaffold_words)
        out = []
        for t in texts:
            t = " ".join(t.split())
            key = normalise_key(t)
            if not self.min_chars <= len(t) <= self.max_chars or key in seen:
                continue
            tokens = words(t)
            tri = trigrams(tokens)
            echo = " ".join(tokens) in scaffold_text
            if echo or (tri and len(tri & scaffold_tri) / len(tri) > self.max_echo):
                continue
            seen.add(key)
            out.append(t)
        return out

    def propose(self, history: Sequence[ScoredContext], *, n: int | None = None) -> list[str]:
        """Ask for ``n`` new candidates given the scored history; add them to the pool.

        Returns:
            Ids of the pool entries added (possibly fewer than ``n``; empty only when the
            model and every mechanical mutation repeat known texts).

        Raises:
            ConfigError: ``history`` is empty.
        """
        if not history:
            raise ConfigError("`history` must hold at least one scored context, got []")
        n = n or self.n
        top = sorted(history, key=lambda s: (-s.score, s.candidate_id))[: self.top_k]
        placement = self.placement or top[0].context.placement
        meta = self.meta_prompt(top, n, placement)
        gens = self.engine.generate([make_conversation(meta)], self.sampling)
        self.last_meta_prompt = meta
        self.last_outputs = [g.text for per_conv in gens for g in per_conv]

        seen = {
            normalise_key(e.context.text)
            for e in self.pool.entries()
            if e.context.placement == placement
        }
        seen |= {normalise_key(s.context.text) for s in history}
        parsed = [t for out in self.last_outputs for t in parse_candidates(out)]
        texts = self.clean(parsed, meta, seen, [s.context.text for s in top])[:n]
        parents = [s.candidate_id for s in top]
        if texts:
            logger.info("rewrite: %d parsed, %d usable", len(parsed), len(texts))
            return self.pool.add(texts, source="rewrite", placement=placement, parents=parents)
        fallback = [
            t
            for t in mechanical_mutations([s.context.text for s in top])
            if normalise_key(t) not in seen
        ][:n]
        logger.warning(
            "rewrite: nothing usable in %d parsed candidates; adding %d mechanical mutations",
            len(parsed),
            len(fallback),
        )
        return self.pool.add(
            fallback, source="rewrite-fallback", placement=placement, parents=parents
        )
