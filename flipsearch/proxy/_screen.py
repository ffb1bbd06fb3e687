"""Screening many contexts with the proxies: set up once, then forward passes per context."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from flipsearch.contexts import Context
from flipsearch.errors import ConfigError
from flipsearch.proxy._direction import DirectionTargets, direction_shift, fit_refusal_direction
from flipsearch.proxy._likelihood import (
    LikelihoodTargets,
    likelihood_shift,
    refusal_openings,
)
from flipsearch.space import Candidate, load_search_space

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flipsearch.flip import FlipScorer
    from flipsearch.prompts import PromptSet

DESIGNS: tuple[str, ...] = ("likelihood", "direction")
DIRECTION_HARMFUL = "harmful_core:train"
"""Default harmful prompts the refusal direction is fitted on (a train split)."""
DIRECTION_HARMLESS = "benign:train"
"""Default harmless prompts the refusal direction is fitted on (a train split)."""
ANSWER_TOKENS = 1
"""Default answer tokens the likelihood proxy reads: the first, where flips show."""
MAX_PROMPTS = 8
"""Default prompts each context is scored on (the first base-unsafe ones)."""


def hf_model_of(engine: object) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The transformers model and tokenizer behind ``engine``: its own for the HF engine,
    else the same folder loaded in float32 (the proxies need forward passes)."""
    if getattr(engine, "name", None) == "hf":
        return engine.model, engine.tokenizer  # type: ignore[attr-defined]
    from flipsearch.engines._hf import load_hf_model

    config = getattr(engine, "config", None)
    return load_hf_model(
        str(engine.model_path),  # type: ignore[attr-defined]
        "float32",
        bool(getattr(config, "trust_remote_code", False)),
    )


@dataclass(frozen=True)
class ProxySetup:
    """Everything the proxies score each context against, and what building it cost."""

    likelihood: LikelihoodTargets | None
    direction: DirectionTargets | None
    generations: int
    """New generations made to build it (0 with a warm cache): context-free answers to the
    harmful prompts and the reference contexts' answers that give the refusal openings."""
    new_tokens: int
    seconds: float


def prepare_proxies(
    scorer: FlipScorer,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: PromptSet,
    *,
    designs: Sequence[str] = DESIGNS,
    opening_contexts: Sequence[Context] | None = None,
    direction_harmful: Sequence[str] | None = None,
    direction_harmless: Sequence[str] | None = None,
    direction_layers: Sequence[int] | None = None,
    answer_tokens: int = ANSWER_TOKENS,
    max_prompts: int | None = MAX_PROMPTS,
    opening_tokens: int = 8,
    openings: int = 4,
    micro_batch: int = 32,
) -> ProxySetup:
    """Build the targets of ``designs`` on ``harmful``.

    ``likelihood`` reads (or makes, through ``scorer`` and its cache) the context-free
    answers to ``harmful`` and keeps the first ``max_prompts`` prompts whose answer is
    unsafe (None: all), each answer cut to ``answer_tokens``; the answers to those prompts
    with each of ``opening_contexts`` (default: the built-in ``baselines`` space) and the
    context-free refusals give the refusal openings. ``direction`` scores the first
    ``max_prompts`` harmful prompts; it is fitted on ``direction_harmful`` vs
    ``direction_harmless`` (default :data:`DIRECTION_HARMFUL` vs
    :data:`DIRECTION_HARMLESS`; use train splits, never the prompts it scores), at the
    best separating layer of ``direction_layers`` (default: every block but the last).

    The defaults (the first answer token, 8 prompts) are the cheapest setting measured
    to rank contexts as well as the full one (``results/benchmarks/proxy.md``).

    Raises:
        ConfigError: an unknown design, or ``max_prompts`` < 1.
    """
    unknown = [d for d in designs if d not in DESIGNS]
    if unknown or not designs:
        raise ConfigError(f"`designs` must be a non-empty subset of {DESIGNS}, got {designs!r}")
    if max_prompts is not None and max_prompts < 1:
        raise ConfigError(f"`max_prompts` must be None or >= 1, got {max_prompts}")
    start = time.perf_counter()
    before_gen, before_tok = scorer.generations, scorer.new_tokens
    template = scorer.template
    default_system = (
        template.kept_default(scorer.settings.keep_default_system) if template else None
    )
    rows = list(harmful.harmful())
    likelihood = direction = None
    if "likelihood" in designs:
        base = scorer.outcomes(Context(""), rows)
        kept = [(r, o) for r, o in zip(rows, base, strict=True) if o.base_unsafe[0]]
        kept = kept[:max_prompts]
        unsafe = [(r.prompt, o.base_text) for r, o in kept]
        refusals = [o.base_text for o in base if o.base_refusal[0]]
        if opening_contexts is None:
            opening_contexts = [c.context for c in load_search_space("baselines").enumerate()]
        kept_rows = [r for r, _ in kept]
        for context in opening_contexts if kept_rows else ():
            outcomes = scorer.outcomes(context, kept_rows)
            refusals += [o.ctx_text for o in outcomes if o.ctx_refusal[0]]
        likelihood = LikelihoodTargets.build(
            model,
            tokenizer,
            unsafe,
            refusal_openings(tokenizer, refusals, tokens=opening_tokens, keep=openings),
            answer_tokens=answer_tokens,
            default_system=default_system,
            micro_batch=micro_batch,
        )
    if "direction" in designs:
        from flipsearch.prompts import load_prompt_set

        if direction_harmful is None:
            direction_harmful = [r.prompt for r in load_prompt_set(DIRECTION_HARMFUL).harmful()]
        if direction_harmless is None:
            direction_harmless = [r.prompt for r in load_prompt_set(DIRECTION_HARMLESS).benign()]
        fitted = fit_refusal_direction(
            model,
            tokenizer,
            direction_harmful,
            direction_harmless,
            layers=direction_layers,
            micro_batch=micro_batch,
        )
        direction = DirectionTargets.build(
            model,
            tokenizer,
            fitted,
            [r.prompt for r in rows[:max_prompts]],
            default_system=default_system,
            micro_batch=micro_batch,
        )
    return ProxySetup(
        likelihood=likelihood,
        direction=direction,
        generations=scorer.generations - before_gen,
        new_tokens=scorer.new_tokens - before_tok,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class ProxyRow:
    """One context's proxy scores (None for a design not run) and their cost."""

    candidate_id: str
    placement: str
    text: str
    likelihood: float | None
    refusal_shift: float | None
    unsafe_drop: float | None
    direction: float | None
    forward_tokens: float
    """Whole-model token equivalents run (see :class:`~flipsearch.proxy.ForwardCount`)."""
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score_candidates(
    setup: ProxySetup,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Iterable[Candidate],
    *,
    micro_batch: int = 32,
) -> Iterable[ProxyRow]:
    """Yield each candidate's :class:`ProxyRow`, in order (lazily, for progress bars)."""
    for cand in candidates:
        start = time.perf_counter()
        tokens = 0.0
        lk = dr = None
        if setup.likelihood is not None:
            lk = likelihood_shift(
                model, tokenizer, cand.context, setup.likelihood, micro_batch=micro_batch
            )
            tokens += lk.forward_tokens
        if setup.direction is not None:
            dr = direction_shift(
                model, tokenizer, cand.context, setup.direction, micro_batch=micro_batch
            )
            tokens += dr.forward_tokens
        yield ProxyRow(
            candidate_id=cand.id,
            placement=cand.context.placement,
            text=cand.context.text,
            likelihood=lk.score if lk else None,
            refusal_shift=lk.refusal_shift if lk else None,
            unsafe_drop=lk.unsafe_drop if lk else None,
            direction=dr.score if dr else None,
            forward_tokens=tokens,
            seconds=time.perf_counter() - start,
        )


def top_candidates(rows: Sequence[ProxyRow], n: int, *, by: str) -> list[str]:
    """Candidate ids of the ``n`` highest-scoring rows by design ``by`` (ties: first seen).

    Raises:
        ConfigError: ``n`` < 1, or ``by`` is not a design the rows were scored with.
    """
    if n < 1:
        raise ConfigError(f"`prescreen` must be >= 1, got {n}")
    if by not in DESIGNS or any(getattr(r, by) is None for r in rows):
        raise ConfigError(f"`by` must be a design every row was scored with, got {by!r}")
    order = sorted(range(len(rows)), key=lambda i: -float(getattr(rows[i], by)))
    return [rows[i].candidate_id for i in order[:n]]
