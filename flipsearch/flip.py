"""Score a privileged context: generate with and without it, judge, count flips.

:class:`FlipScorer` owns an engine, a judge and a cache. The context-free baseline
is generated once per prompt (then served from the cache); each context costs one
pass over the prompts it is scored on. The search scores contexts on successive
minibatches through :meth:`FlipScorer.outcomes` and reduces them with
:func:`flipsearch.scoring.summarise`.

Example:
    >>> scorer = FlipScorer(engine, judge, cache, ScoreSettings())  # doctest: +SKIP
    >>> result = scorer.score(Context("Refuse harmful requests.", "prefix"), harmful, benign)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from flipsearch.cache import GenerationCache, cached_generate
from flipsearch.checks import check_choice, check_int
from flipsearch.contexts import Context
from flipsearch.engines.chat import (
    enable_thinking_of,
    render_prompt_ids,
    rendered_model_key,
    template_opens_trace,
    template_thinks,
)
from flipsearch.engines.template_caps import TemplateCaps, template_caps
from flipsearch.errors import ConfigError
from flipsearch.judges.final_answer import JUDGE_READS, judge_responses
from flipsearch.models import model_key
from flipsearch.scoring import FlipScore, PromptOutcome, summarise
from flipsearch.types import Conversation, Generation, Sampling, Verdict, make_conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from flipsearch.engines import Engine
    from flipsearch.judges import Judge
    from flipsearch.prompts import PromptRow, PromptSet

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 64
"""Scoring window of a model that answers at once: refusals show in the first tokens."""
REASONING_MAX_TOKENS = 1024
"""Scoring window of a reasoning model, whose refusal comes after its trace."""


def default_max_tokens(tokenizer: PreTrainedTokenizerBase | None) -> int:
    """The scoring window for a model: :data:`REASONING_MAX_TOKENS` when its chat template
    lets it think (:func:`flipsearch.engines.chat.template_thinks`), else (or without a
    tokenizer) :data:`DEFAULT_MAX_TOKENS`."""
    if tokenizer is not None and template_thinks(tokenizer):
        return REASONING_MAX_TOKENS
    return DEFAULT_MAX_TOKENS


@dataclass(frozen=True)
class ScoreSettings:
    """How contexts are scored; recorded in every result."""

    mode: str = "greedy"
    """``greedy`` (the paper: one argmax answer per prompt and side) or ``sample``."""
    k: int = 1
    """Samples per prompt and side in ``sample`` mode."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Scoring window: refusals show in the first tokens, so short windows are cheap
    and enough for refusal judges. Raise it for judges that read whole answers. A
    reasoning model refuses after its trace: :func:`default_max_tokens` gives
    ``flipsearch score`` and ``flipsearch sweep`` a model-aware default."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    judge_reads: str = "answer"
    """What the judge reads of a reasoning model's response: its final ``answer`` (after
    ``</think>``) or its ``trace`` (:mod:`flipsearch.judges.final_answer`)."""
    keep_default_system: bool = False
    """With ``system`` placement on a chat template that has a default system prompt
    (the embedded SmolLM2's), keep that prompt after the context instead of replacing it
    (:mod:`flipsearch.engines.template_caps`)."""

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("greedy", "sample"))
        if self.mode == "greedy" and self.k != 1:
            raise ConfigError(f"`k` must be 1 in greedy mode, got {self.k!r}. Use mode='sample'.")
        check_int("k", self.k)
        check_choice("judge_reads", self.judge_reads, JUDGE_READS)
        self.sampling()  # validates max_tokens, temperature, top_p

    def sampling(self) -> Sampling:
        if self.mode == "greedy":
            return Sampling(greedy=True, max_tokens=self.max_tokens)
        return Sampling(
            n=self.k,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ScoreResult:
    """A context's :class:`FlipScore` plus the per-prompt outcomes behind it."""

    context: Context
    score: FlipScore
    outcomes: tuple[PromptOutcome, ...]

    def failing(self) -> list[PromptOutcome]:
        """Harmful prompts still answered unsafely with the context."""
        return [o for o in self.outcomes if o.type == "harmful" and o.p_ctx_safe < 1.0]


class FlipScorer:
    """Generates, judges and counts; everything generated or judged goes to the cache."""

    def __init__(
        self,
        engine: Engine,
        judge: Judge,
        cache: GenerationCache,
        settings: ScoreSettings,
        *,
        max_model_len: int | None = None,
        use_tqdm: bool = False,
    ) -> None:
        self.engine = engine
        self.judge = judge
        self.cache = cache
        self.settings = settings
        self.sampling = settings.sampling()
        self.model_id = model_fingerprint_of(engine)
        self.max_model_len = max_model_len or getattr(
            getattr(engine, "config", None), "max_model_len", None
        )
        self.use_tqdm = use_tqdm
        self.template = _probe_template(engine)
        """The chat template's system-message handling, probed here once (None for an
        engine without a chat template, such as a test fake)."""
        tokenizer = getattr(engine, "tokenizer", None)
        self.opens_trace = (
            tokenizer is not None and self.template is not None and template_opens_trace(tokenizer)
        )
        """The template opens ``<think>`` in the prompt: responses start inside the trace."""
        self._kept_default = (
            None
            if self.template is None
            else self.template.kept_default(settings.keep_default_system)
        )
        self.generations = 0
        """New generations made by this scorer (cache misses x samples)."""
        self.new_tokens = 0
        """Tokens in those new generations."""
        self.job_generations: list[int] = []
        """New context answers per job of the last :meth:`outcomes_many` call."""
        self._generated: set[int] = set()

    @property
    def judge_id(self) -> str:
        """The verdict cache key (:func:`flipsearch.judges.judge_cache_id`): the judge's
        name and version, its offline matcher's, and a model judge's weights identity, so
        a changed judge never reuses old verdicts."""
        from flipsearch.judges import judge_cache_id

        return judge_cache_id(self.judge)

    def template_record(self) -> dict[str, object]:
        """What ``system`` placement does with this model's chat template, as results
        record it (:meth:`TemplateCaps.record`); None values without a chat template."""
        if self.template is None:
            return {"system_placement": None, "default_system": None}
        return self.template.record(keep_default_system=self._kept_default is not None)

    def thinking_record(self) -> dict[str, object]:
        """The reasoning switches as results record them: the ``enable_thinking`` value
        every render passed (None: not passed), whether the template opens ``<think>`` in
        the prompt, and what the judge read (``answer`` or ``trace``)."""
        tokenizer = getattr(self.engine, "tokenizer", None)
        return {
            "enable_thinking": None if tokenizer is None else enable_thinking_of(tokenizer),
            "trace_opened_by_template": self.opens_trace,
            "judge_reads": self.settings.judge_reads,
        }

    # ---------------------------------------------------------------- public

    def score(
        self, context: Context, harmful: PromptSet, benign: PromptSet | None = None
    ) -> ScoreResult:
        """Score ``context`` on every harmful and benign prompt."""
        rows = list(harmful) + (list(benign) if benign is not None else [])
        if not any(r.type == "harmful" for r in rows):
            raise ConfigError(
                f"`harmful` must hold at least one harmful prompt, got {harmful.name!r}"
            )
        outcomes = self.outcomes(context, rows)
        return ScoreResult(context=context, score=summarise(outcomes), outcomes=tuple(outcomes))

    def outcomes(self, context: Context, rows: Sequence[PromptRow]) -> list[PromptOutcome]:
        """Per-prompt outcomes of ``context`` on ``rows`` (baseline from the cache)."""
        return self.outcomes_many([(context, rows)])[0]

    def outcomes_many(
        self, jobs: Sequence[tuple[Context, Sequence[PromptRow]]]
    ) -> list[list[PromptOutcome]]:
        """:meth:`outcomes` of several (context, rows) pairs through one engine call for
        all their uncached answers, so the engine batches across contexts (the batched
        race of :mod:`flipsearch.sweep`)."""
        rows = [r for _, rs in jobs for r in rs]
        base_convs = [make_conversation(r.prompt) for r in rows]
        ctx_convs = []
        for context, rs in jobs:
            ctx_convs += [
                context.apply(make_conversation(r.prompt), default_system=self._kept_default)
                for r in rs
            ]
        self._check_fits(ctx_convs)
        base = self._generate(base_convs)
        self._generated = set()
        ctx = self._generate(ctx_convs)
        self.job_generations = []
        start = 0
        for _, rs in jobs:
            convs = ctx_convs[start : start + len(rs)]
            self.job_generations.append(sum(id(c) in self._generated for c in convs))
            start += len(rs)
        prompts = [r.prompt for r in rows]
        base_v = self._judge(prompts, base)
        ctx_v = self._judge(prompts, ctx)
        flat = []
        for r, bg, cg, bv, cv in zip(rows, base, ctx, base_v, ctx_v, strict=True):
            flat.append(
                PromptOutcome(
                    id=r.id,
                    type=r.type,
                    category=r.category,
                    base_unsafe=tuple(v.unsafe for v in bv),
                    base_refusal=tuple(v.refusal for v in bv),
                    ctx_unsafe=tuple(v.unsafe for v in cv),
                    ctx_refusal=tuple(v.refusal for v in cv),
                    ctx_outcomes=tuple(v.outcome for v in cv),
                    base_outcomes=tuple(v.outcome for v in bv),
                    base_text=bg[0].text,
                    ctx_text=cg[0].text,
                )
            )
        out, start = [], 0
        for _, rs in jobs:
            out.append(flat[start : start + len(rs)])
            start += len(rs)
        return out

    def check_fits(self, context: Context, rows: Sequence[PromptRow]) -> None:
        """Raise :class:`ConfigError` if ``context`` on any of ``rows`` plus ``max_tokens``
        exceeds the model window (no generation)."""
        self._check_fits(
            [context.apply(make_conversation(r.prompt), default_system=self._kept_default)
             for r in rows]
        )  # fmt: skip

    # ---------------------------------------------------------------- steps

    def _generate(self, convs: list[Conversation]) -> list[list[Generation]]:
        before = self.cache.stats.generation_misses
        outs = cached_generate(
            self.cache,
            self._generate_new,
            model=self.model_id,
            engine=self.engine.name,
            sampling=self.sampling,
            conversations=convs,
        )
        self.generations += (self.cache.stats.generation_misses - before) * self.sampling.n
        return outs

    def _generate_new(self, convs: list[Conversation]) -> list[list[Generation]]:
        self._generated.update(id(c) for c in convs)
        outs = self.engine.generate(convs, self.sampling, use_tqdm=self.use_tqdm)
        self.new_tokens += sum(len(g.token_ids) for gens in outs for g in gens)
        return outs

    def _judge(self, prompts: list[str], gens: list[list[Generation]]) -> list[list[Verdict]]:
        flat_p = [p for p, g in zip(prompts, gens, strict=True) for _ in g]
        flat_r = [x.text for g in gens for x in g]
        verdicts = judge_responses(
            self.judge,
            flat_p,
            flat_r,
            cache=self.cache,
            opened_in_prompt=self.opens_trace,
            read=self.settings.judge_reads,
        )
        out, i = [], 0
        for g in gens:
            out.append(verdicts[i : i + len(g)])
            i += len(g)
        return out

    def _check_fits(self, convs: list[Conversation]) -> None:
        if not self.max_model_len:
            return
        tokenizer = self.engine.tokenizer
        for conv in convs:
            n = len(render_prompt_ids(tokenizer, conv))
            if n + self.sampling.max_tokens > self.max_model_len:
                raise ConfigError(
                    f"`context` is too long for the model window: prompt of {n} tokens + "
                    f"max_tokens {self.sampling.max_tokens} > max_model_len "
                    f"{self.max_model_len}. Shorten the context or raise max_model_len."
                )


def _probe_template(engine: Engine) -> TemplateCaps | None:
    # At start-up, so a template that raises on system messages is found once, here.
    tokenizer = getattr(engine, "tokenizer", None)
    if not getattr(tokenizer, "chat_template", None):
        return None
    return template_caps(tokenizer)


def model_fingerprint_of(engine: Engine) -> str:
    """The cache identity of an engine's model: :func:`flipsearch.models.model_key` of its
    folder (``<folder>:<content digest>``), plus its tokenizer's ``enable_thinking`` when
    set (:func:`flipsearch.engines.chat.rendered_model_key`)."""
    return rendered_model_key(model_key(engine.model_path), getattr(engine, "tokenizer", None))
