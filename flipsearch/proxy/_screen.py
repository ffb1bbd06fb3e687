"""Screening many contexts with the proxies: set up once, then forward passes per context."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from flipsearch.contexts import Context
from flipsearch.errors import ConfigError
from flipsearch.proxy._direction import (
    DirectionScore,
    DirectionTargets,
    direction_shifts,
    fit_refusal_direction,
)
from flipsearch.proxy._likelihood import (
    LikelihoodScore,
    LikelihoodTargets,
    likelihood_shifts,
    refusal_openings,
)
from flipsearch.space import Candidate, load_search_space

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flipsearch.flip import FlipScorer
    from flipsearch.prompts import PromptSet

DESIGNS: tuple[str, ...] = ("likelihood", "direction")
RANKINGS: tuple[str, ...] = (*DESIGNS, "unsafe_drop", "refusal_shift", "selective")
"""What a prescreen ranks by: a design's score; one of the likelihood score's two terms,
``unsafe_drop`` (how far the context lowers the unsafe answers; prompt-specific) or
``refusal_shift`` (how far it raises the refusal openings; primes refusals anywhere); or
``selective``, the likelihood score on harmful prompts minus the same score on benign
ones (flips that do not over-refuse)."""
DIRECTION_HARMFUL = "harmful_core:train"
"""Default harmful prompts the refusal direction is fitted on (a train split)."""
DIRECTION_HARMLESS = "benign:train"
"""Default harmless prompts the refusal direction is fitted on (a train split)."""
ANSWER_TOKENS = 1
"""Default answer tokens the likelihood proxy reads: the first, where flips show."""
MAX_PROMPTS = 8
"""Default prompts each context is scored on (the first base-unsafe ones)."""
CONTEXTS_PER_PASS = 8
"""Default contexts whose likelihood rows are batched together (:func:`score_candidates`)."""


def design_of(ranking: str) -> str:
    """The design a ranking of :data:`RANKINGS` needs scored: ``direction`` for itself,
    else ``likelihood``."""
    return "direction" if ranking == "direction" else "likelihood"


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
    benign_likelihood: LikelihoodTargets | None
    """The likelihood targets on benign prompts and their helpful context-free answers
    (None: no benign prompts given): how far a context pushes them towards refusal."""
    generations: int
    """New generations made to build it (0 with a warm cache): context-free answers to the
    harmful (and benign) prompts and the reference contexts' answers that give the refusal
    openings."""
    new_tokens: int
    seconds: float


def prepare_proxies(
    scorer: FlipScorer,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: PromptSet,
    *,
    benign: PromptSet | None = None,
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

    With ``benign`` (and ``likelihood``), the same likelihood score is also built on the
    first ``max_prompts`` benign prompts the model answers without refusing: how far a
    context lowers their helpful answers and raises the refusal openings there, the
    over-refusal side of :data:`RANKINGS` ``selective``.

    The defaults (the first answer token, 8 prompts) are the cheapest setting measured
    to rank contexts as well as the full one (``results/benchmarks/proxy.md``).

    Raises:
        ConfigError: an unknown design, ``max_prompts`` < 1, or ``benign`` without a
            prompt the model answers without refusing.
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
    likelihood = direction = benign_likelihood = None
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
        if benign is not None:
            benign_likelihood = _benign_targets(
                scorer,
                model,
                tokenizer,
                benign,
                likelihood.openings,
                max_prompts=max_prompts,
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
        benign_likelihood=benign_likelihood,
        generations=scorer.generations - before_gen,
        new_tokens=scorer.new_tokens - before_tok,
        seconds=time.perf_counter() - start,
    )


def _benign_targets(
    scorer: FlipScorer,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    benign: PromptSet,
    openings: Sequence[Sequence[int]],
    *,
    max_prompts: int | None,
    answer_tokens: int,
    default_system: str | None,
    micro_batch: int,
) -> LikelihoodTargets:
    # The first `max_prompts` benign prompts answered without a refusal, with their
    # answers; answers are made (or read from the cache) a chunk at a time until enough.
    rows = list(benign.benign())
    step = max_prompts or len(rows) or 1
    helpful: list[tuple[str, str]] = []
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        base = scorer.outcomes(Context(""), chunk)
        helpful += [
            (r.prompt, o.base_text)
            for r, o in zip(chunk, base, strict=True)
            if o.base_refusal[0] is False
        ]
        if max_prompts is not None and len(helpful) >= max_prompts:
            break
    if not helpful:
        raise ConfigError(
            f"the benign term needs benign prompts the model answers without refusing; "
            f"{benign.name!r} has {len(rows)} benign prompts and none qualifies: give a "
            "benign set the model answers (`--benign`), or rank by `likelihood`"
        )
    return LikelihoodTargets.build(
        model,
        tokenizer,
        helpful[:max_prompts],
        openings,
        answer_tokens=answer_tokens,
        default_system=default_system,
        micro_batch=micro_batch,
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
    benign: float | None = None
    """The likelihood score on benign prompts (higher: more over-refusal); None without
    benign prompts."""
    selective: float | None = None
    """``likelihood`` minus ``benign``: flips that do not over-refuse."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def score_candidates(
    setup: ProxySetup,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    candidates: Iterable[Candidate],
    *,
    micro_batch: int = 32,
    contexts_per_pass: int = CONTEXTS_PER_PASS,
) -> Iterable[ProxyRow]:
    """Yield each candidate's :class:`ProxyRow`, in order (lazily, for progress bars).

    ``contexts_per_pass`` candidates at a time are scored in one batched run per design
    (their prefixes encoded together, their rows sharing micro-batches of
    ``micro_batch``); a row's ``seconds`` is its share of that run.

    Raises:
        ConfigError: ``contexts_per_pass`` < 1.
    """
    if contexts_per_pass < 1:
        raise ConfigError(f"`contexts_per_pass` must be >= 1, got {contexts_per_pass}")
    chunk: list[Candidate] = []
    for cand in candidates:
        chunk.append(cand)
        if len(chunk) == contexts_per_pass:
            yield from _score_chunk(setup, model, tokenizer, chunk, micro_batch)
            chunk = []
    if chunk:
        yield from _score_chunk(setup, model, tokenizer, chunk, micro_batch)


def _score_chunk(
    setup: ProxySetup,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chunk: Sequence[Candidate],
    micro_batch: int,
) -> list[ProxyRow]:
    start = time.perf_counter()
    likelihood: list[list[LikelihoodScore]] = [[] for _ in chunk]
    if setup.likelihood is not None:
        # The benign rows ride in the harmful rows' pass: each prefix is encoded once.
        targets = [setup.likelihood]
        if setup.benign_likelihood is not None:
            targets.append(setup.benign_likelihood)
        likelihood = likelihood_shifts(
            model, tokenizer, [c.context for c in chunk], targets, micro_batch=micro_batch
        )
    direction: list[DirectionScore | None] = [None for _ in chunk]
    if setup.direction is not None:
        direction = list(
            direction_shifts(
                model,
                tokenizer,
                [c.context for c in chunk],
                setup.direction,
                micro_batch=micro_batch,
            )
        )
    seconds = (time.perf_counter() - start) / len(chunk)
    rows = []
    for cand, scores, dr in zip(chunk, likelihood, direction, strict=True):
        lk = scores[0] if scores else None
        bn = scores[1] if len(scores) > 1 else None
        tokens = (lk.forward_tokens if lk else 0.0) + (dr.forward_tokens if dr else 0.0)
        rows.append(
            ProxyRow(
                candidate_id=cand.id,
                placement=cand.context.placement,
                text=cand.context.text,
                likelihood=lk.score if lk else None,
                refusal_shift=lk.refusal_shift if lk else None,
                unsafe_drop=lk.unsafe_drop if lk else None,
                direction=dr.score if dr else None,
                forward_tokens=tokens,
                seconds=seconds,
                benign=bn.score if bn else None,
                selective=lk.score - bn.score if lk and bn else None,
            )
        )
    return rows


def top_candidates(rows: Sequence[ProxyRow], n: int, *, by: str) -> list[str]:
    """Candidate ids of the ``n`` highest-scoring rows by ``by``, one of :data:`RANKINGS`
    (ties: first seen).

    Raises:
        ConfigError: ``n`` < 1, or ``by`` is not a ranking every row was scored with.
    """
    if n < 1:
        raise ConfigError(f"`prescreen` must be >= 1, got {n}")
    if by not in RANKINGS or any(getattr(r, by) is None for r in rows):
        raise ConfigError(
            f"`by` must be one of {RANKINGS} that every row was scored with, got {by!r}"
            + (" (selective needs benign prompts)" if by == "selective" else "")
        )
    order = sorted(range(len(rows)), key=lambda i: -float(getattr(rows[i], by)))
    return [rows[i].candidate_id for i in order[:n]]
