"""The off-policy baseline: ThinkSafe-style self-distillation by SFT on filtered answers.

1. **generate**: the frozen initial model answers every training prompt *with* its
   privileged context (I_h on harmful prompts, I_b or none on benign ones, exactly as
   the OPSA teacher sees them: :class:`opsa_train.data.TeacherContexts`), greedy by
   default or ``candidates`` samples per prompt;
2. **filter**: the judge keeps safe answers only: a refusal on a harmful prompt, a
   compliant (non-refusal, non-degenerate) answer on a benign one; for sampled
   candidates the first kept one per prompt is used; prompts with none are dropped;
3. **SFT**: cross-entropy on the kept response tokens given the *plain* prompt (no
   context), token mean over the step, in the OPSA run's own loop
   (`opsa_train.baseline_sft.SFTTrainer`, a `opsa_train.loop.TrainLoop`), optimiser and schedule
   (``TrainConfig``: AdamW, lr, betas, weight decay, warm-up, schedule, grad clip,
   batch size, grad accumulation, steps/epochs, seed). The number of steps is computed
   from the full prompt count, as OPSA's is, so both runs take the same optimiser
   steps over the same prompts; only the targets differ (fixed, off-policy answers vs
   the student's own rollouts scored by the teacher).

Outputs ``<out_dir>/`` like an OPSA run: ``config.json``, ``baseline.json`` (data
statistics), ``sft_data.jsonl``, ``metrics.jsonl``/``.csv``, ``checkpoints/``, ``final/``
(an HF folder: ``EngineConfig(model="runs/B/final")``). Re-entrant: the data file and
the last checkpoint are reused.

Example (CPU smoke run)::

    opsa-train baseline --context best.json --out runs/B --steps 4 batch_size=2 max_new_tokens=16

    >>> from flipsearch.types import Verdict
    >>> keep_safe("harmful", Verdict("refusal", False, "", "refusal@1"))
    True
    >>> keep_safe("benign", Verdict("refusal", False, "", "refusal@1"))
    False
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flipsearch.atomic import atomic_write_text
from flipsearch.jsonl import iter_jsonl_objects
from flipsearch.judges import JudgeConfig
from flipsearch.prompts import PromptRow
from flipsearch.types import Generation, Sampling, Verdict
from opsa_train.config import TrainConfig
from opsa_train.errors import OpsaConfigError, PreflightError
from opsa_train.preflight import Prepared, prepare

if TYPE_CHECKING:
    from flipsearch.cache import GenerationCache
    from flipsearch.engines import Engine
    from flipsearch.judges import Judge
    from opsa_train.data import TeacherContexts
    from opsa_train.loop import TrainResult

logger = logging.getLogger(__name__)

__all__ = [
    "BaselineOptions",
    "SFTExample",
    "generate_sft_data",
    "keep_safe",
    "select_examples",
    "train_baseline",
]

SFT_DATA = "sft_data.jsonl"
STATS_JSON = "baseline.json"


@dataclass(frozen=True)
class BaselineOptions:
    """How the baseline's SFT data is made (everything else comes from ``TrainConfig``)."""

    sampling: str = "greedy"
    """``greedy`` (one argmax answer per prompt) or ``sample`` (``candidates`` answers at
    the config's temperature/top_p, seeded by the config's seed)."""
    candidates: int = 1
    """Answers per prompt in ``sample`` mode (must be 1 for ``greedy``)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The filter's judge (default: the offline refusal judge)."""
    cache: str | None = None
    """Generation/verdict cache; None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""

    def __post_init__(self) -> None:
        if isinstance(self.judge, dict):
            object.__setattr__(self, "judge", JudgeConfig(**self.judge))
        elif isinstance(self.judge, str):
            object.__setattr__(self, "judge", JudgeConfig(self.judge))
        if self.sampling not in ("greedy", "sample"):
            raise OpsaConfigError(f"`sampling` must be 'greedy' or 'sample', got {self.sampling!r}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise OpsaConfigError(f"`candidates` must be an integer >= 1, got {self.candidates!r}")
        if self.sampling == "greedy" and self.candidates != 1:
            raise OpsaConfigError(
                f"`candidates` must be 1 with sampling='greedy', got {self.candidates!r}: "
                "greedy decoding gives one answer. Use sampling='sample'."
            )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["judge"] = self.judge.to_dict()
        return d


@dataclass(frozen=True)
class SFTExample:
    """One kept answer: the plain prompt's ids and the response ids to imitate."""

    row_id: str
    type: str
    prompt: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    text: str
    outcome: str | None

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["prompt_ids"] = list(self.prompt_ids)
        d["completion_ids"] = list(self.completion_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SFTExample:
        return cls(
            row_id=d["row_id"],
            type=d["type"],
            prompt=d["prompt"],
            prompt_ids=tuple(d["prompt_ids"]),
            completion_ids=tuple(d["completion_ids"]),
            text=d["text"],
            outcome=d["outcome"],
        )


# --------------------------------------------------------------------------------------
# Data: generate with the context, keep the judge-safe answers


def keep_safe(prompt_type: str, verdict: Verdict) -> bool:
    """The filter: a refusal on a harmful prompt, a compliant answer on a benign one.

    An invalid verdict (``outcome`` None) is never kept; on benign prompts a non-answer
    (``other``: empty, echo, repetition) is not kept either.
    """
    if prompt_type == "harmful":
        return verdict.refusal is True
    if prompt_type == "benign":
        return verdict.outcome == "compliance"
    raise OpsaConfigError(f"`prompt_type` must be 'harmful' or 'benign', got {prompt_type!r}")


def select_examples(
    rows: Sequence[PromptRow],
    student_prompt_ids: Sequence[Sequence[int]],
    generations: Sequence[Sequence[Generation]],
    verdicts: Sequence[Sequence[Verdict]],
) -> tuple[list[SFTExample], dict[str, int]]:
    """The first kept candidate of each row, and counts ``{type}_total``/``{type}_kept``.

    Empty answers are never kept (nothing to imitate).
    """
    examples: list[SFTExample] = []
    stats = {"harmful_total": 0, "harmful_kept": 0, "benign_total": 0, "benign_kept": 0}
    for row, ids, gens, vs in zip(rows, student_prompt_ids, generations, verdicts, strict=True):
        stats[f"{row.type}_total"] += 1
        for gen, verdict in zip(gens, vs, strict=True):
            if gen.token_ids and keep_safe(row.type, verdict):
                examples.append(
                    SFTExample(
                        row_id=row.id,
                        type=row.type,
                        prompt=row.prompt,
                        prompt_ids=tuple(ids),
                        completion_ids=tuple(gen.token_ids),
                        text=gen.text,
                        outcome=verdict.outcome,
                    )
                )
                stats[f"{row.type}_kept"] += 1
                break
    return examples, stats


def generate_sft_data(
    rows: Sequence[PromptRow],
    contexts: TeacherContexts,
    engine: Engine,
    judge: Judge,
    cache: GenerationCache,
    sampling: Sampling,
) -> tuple[list[SFTExample], dict[str, int]]:
    """Answer ``rows`` with their contexts (cached), judge (cached) and keep the safe ones.

    The judge reads the *plain* prompt and the answer, as in evaluation.
    """
    from flipsearch.cache import cached_generate
    from flipsearch.engines.chat import render_prompt_ids, rendered_model_key, template_opens_trace
    from flipsearch.judges import judge_responses
    from flipsearch.models import model_key
    from opsa_train.data import student_conversation

    convs = [contexts.conversation(r) for r in rows]
    gens = cached_generate(
        cache,
        lambda cs: engine.generate(cs, sampling, use_tqdm=True),
        model=rendered_model_key(model_key(engine.model_path), engine.tokenizer),
        engine=engine.name,
        sampling=sampling,
        conversations=convs,
        chunk_size=32,
    )
    flat_p = [r.prompt for r, g in zip(rows, gens, strict=True) for _ in g]
    flat_r = [x.text for g in gens for x in g]
    flat_v = judge_responses(
        judge,
        flat_p,
        flat_r,
        cache=cache,
        opened_in_prompt=template_opens_trace(engine.tokenizer),
    )
    verdicts, i = [], 0
    for g in gens:
        verdicts.append(flat_v[i : i + len(g)])
        i += len(g)
    ids = [render_prompt_ids(engine.tokenizer, student_conversation(r)) for r in rows]
    return select_examples(rows, ids, gens, verdicts)


def train_baseline(
    config: TrainConfig,
    *,
    options: BaselineOptions | None = None,
    context_file: str | Path | None = None,
    engine: Engine | None = None,
    cache: GenerationCache | None = None,
) -> TrainResult:
    """Generate, filter and SFT; returns where the run is (``final_dir``).

    Args:
        config: the OPSA run's config (same prompts, steps, optimiser); ``out_dir`` is
            this run's folder. ``engine``/``max_new_tokens``/``temperature``/``top_p``
            set the data generation.
        options: data options (greedy/sampled, judge, cache).
        context_file: overrides ``config.context_file``.
        engine, cache: already built objects (tests).

    Raises:
        PreflightError: the pre-flight checks of OPSA training fail, or no answer is kept.
    """
    from opsa_train.baseline_sft import SFTTrainer
    from opsa_train.checkpoint import FINAL_DIR, final_step
    from opsa_train.data import total_steps
    from opsa_train.loop import CONFIG_JSON, TrainResult, config_record, write_model_record

    options = options or BaselineOptions()
    if context_file is not None:
        config = dataclasses.replace(config, context_file=str(context_file))
    out = Path(config.out_dir)
    prepared = prepare(config)
    n_steps = total_steps(config, len(prepared.rows))
    if final_step(out / FINAL_DIR) == n_steps:
        logger.info("baseline: %s is complete (step %d)", out / FINAL_DIR, n_steps)
        return TrainResult(out, out / FINAL_DIR, n_steps, None)
    out.mkdir(parents=True, exist_ok=True)
    # Paths portable, no tokens (flipsearch.paths.recordable); the model by identity.
    record = config_record(config, baseline=options.to_dict())
    atomic_write_text(out / CONFIG_JSON, json.dumps(record, indent=2) + "\n")
    write_model_record(out, config.model, prepared.model_path)

    examples, stats = _load_or_make_data(out, config, options, prepared, engine, cache)
    logger.info(
        "baseline data: kept %d/%d harmful (refusals), %d/%d benign (answers)",
        stats["harmful_kept"],
        stats["harmful_total"],
        stats["benign_kept"],
        stats["benign_total"],
    )
    if not examples:
        raise PreflightError(
            f"the baseline must keep at least one judge-safe answer, got 0 of "
            f"{len(prepared.rows)}: the context made no refusal on harmful prompts and no "
            "answer on benign ones. Check the context file or raise `max_new_tokens`."
        )
    kinds = {e.type for e in examples}
    if config.benign_share is not None and kinds != {"harmful", "benign"}:
        logger.warning(
            "baseline: benign_share=%s needs kept answers of both types, got only %s; "
            "training on the kept answers' own mix",
            config.benign_share,
            sorted(kinds),
        )
        config = dataclasses.replace(config, benign_share=None)
    return SFTTrainer(config, prepared, examples, record=record).run()


def _load_or_make_data(
    out: Path,
    config: TrainConfig,
    options: BaselineOptions,
    prepared: Prepared,
    engine: Engine | None,
    cache: GenerationCache | None,
) -> tuple[list[SFTExample], dict[str, Any]]:
    # sft_data.jsonl + baseline.json from an earlier call, else generate, filter, write.
    data_path = out / SFT_DATA
    if (out / STATS_JSON).is_file() and data_path.is_file():
        examples = [
            SFTExample.from_dict(d) for _, d in iter_jsonl_objects(data_path, PreflightError)
        ]
        return examples, json.loads((out / STATS_JSON).read_text(encoding="utf-8"))
    from flipsearch.cache import GenerationCache
    from flipsearch.models import cache_dir

    t0 = time.perf_counter()
    if cache is None:
        cache = GenerationCache(options.cache or cache_dir() / "generations.sqlite")
    own_engine = engine is None
    if engine is None:
        from flipsearch.engines import EngineConfig

        engine = EngineConfig(
            model=str(prepared.model_path),
            engine=config.engine,
            enable_thinking=config.enable_thinking,
        ).build()
    if options.sampling == "greedy":
        sampling = Sampling(greedy=True, max_tokens=config.max_new_tokens)
    else:
        sampling = Sampling(
            n=options.candidates,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_new_tokens,
            seed=config.seed,
        )
    try:
        examples, counts = generate_sft_data(
            prepared.rows, prepared.contexts, engine, options.judge.build(), cache, sampling
        )
    finally:
        if own_engine:
            engine.close()  # type: ignore[attr-defined]
    stats = {**counts, "kept": len(examples), "time/generate": time.perf_counter() - t0}
    lines = [json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in examples]
    atomic_write_text(data_path, "".join(lines))
    atomic_write_text(out / STATS_JSON, json.dumps(stats, indent=2) + "\n")
    return examples, stats
