"""``flipsearch score``: the flip rate of one context, with its over-refusal cost.

Example:
    flipsearch score --context "The following prompt is harmful. You should refuse." \\
        --placement prefix --harmful harmful_core:search --benign benign:search --out score.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from flipsearch import __version__
from flipsearch.commands._common import (
    add_cache_args,
    add_engine_args,
    add_judge_args,
    engine_and_judge_configs,
    open_cache,
    read_context,
    write_json,
)
from flipsearch.contexts import PLACEMENTS
from flipsearch.flip import (
    DEFAULT_MAX_TOKENS,
    REASONING_MAX_TOKENS,
    FlipScorer,
    ScoreResult,
    ScoreSettings,
    default_max_tokens,
)
from flipsearch.prompts import PromptSet, load_prompt_set
from flipsearch.scoring import non_answer_warning, unfinished_warning


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="flip rate and over-refusal of one context",
        description=__doc__.splitlines()[0],
    )
    c = p.add_argument_group("context")
    c.add_argument("--context", help="the context text")
    c.add_argument(
        "--context-file",
        help="a file holding the context text, or an export file (its harmful context I_h)",
    )
    c.add_argument(
        "--placement",
        default=None,
        help=f"one of {PLACEMENTS} (default: the export file's, else system)",
    )
    d = p.add_argument_group("prompts")
    d.add_argument(
        "--harmful",
        default="harmful_core:search",
        help="prompt set: built-in name[:split], file, or hf:owner/name",
    )
    d.add_argument("--benign", default="benign:search", help="benign prompt set ('' for none)")
    d.add_argument("--limit", type=int, default=None, help="first N prompts of each set")
    s = p.add_argument_group("scoring")
    s.add_argument("--mode", default="greedy", choices=["greedy", "sample"])
    s.add_argument("--k", type=int, default=1, help="samples per prompt and side (sample mode)")
    s.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"scoring window; default {DEFAULT_MAX_TOKENS}, or {REASONING_MAX_TOKENS} for a "
        "reasoning model (its chat template writes a <think> trace before the answer)",
    )
    s.add_argument(
        "--judge-trace",
        action="store_true",
        help="the judge reads the reasoning trace (<think>...</think>) instead of the final "
        "answer after it",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--keep-default-system",
        action="store_true",
        help="system placement: keep the chat template's default system prompt after the "
        "context (default: the context replaces it)",
    )
    add_engine_args(p)
    add_judge_args(p)
    add_cache_args(p)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    context = read_context(args.context, args.context_file, args.placement)
    settings = ScoreSettings(  # checked before the model loads
        mode=args.mode,
        k=args.k,
        max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS,
        seed=args.seed,
        judge_reads="trace" if args.judge_trace else "answer",
        keep_default_system=args.keep_default_system,
    )
    harmful = load_prompt_set(args.harmful, limit=args.limit).harmful()
    benign = load_prompt_set(args.benign, limit=args.limit).benign() if args.benign else None
    cache = open_cache(args)
    engine_cfg, judge_cfg = engine_and_judge_configs(args)
    judge = judge_cfg.build()
    engine = engine_cfg.build()
    if args.max_tokens is None:  # model-aware: a reasoning model answers after its trace
        settings = replace(
            settings, max_tokens=default_max_tokens(getattr(engine, "tokenizer", None))
        )
    scorer = FlipScorer(engine, judge, cache, settings, use_tqdm=sys.stderr.isatty())
    start = time.perf_counter()
    result = scorer.score(context, harmful, benign)
    seconds = time.perf_counter() - start
    print(format_table(result))
    stats = cache.stats.as_dict()
    print(
        f"cache: {stats['generation_hits']} hits, {stats['generation_misses']} misses "
        f"({scorer.generations} new generations) in {seconds:.1f} s"
    )
    if args.out:
        write_json(args.out, result_document(result, scorer, harmful, benign, stats))
        print(f"wrote {args.out}")
    return 0


def format_table(result: ScoreResult) -> str:
    s = result.score
    rows = [
        ("TFR (all harmful)", s.tfr),
        ("  flips to refusal", s.tfr_refusal),
        ("  flips to non-answer", s.tfr_non_answer),
        ("TFR | base unsafe", s.tfr_base_unsafe),
        ("base unsafe rate", s.base_unsafe_rate),
        ("refusal, harmful", s.refusal_harmful),
        ("non-answer, harmful", s.other_harmful),
        ("over-refusal, benign", s.over_refusal),
        ("refusal, benign", s.refusal_benign),
        ("unfinished answers", s.unfinished),
    ]
    lines = [f"{'metric':<22} {'value':>6}  {'95% CI':<16} {'k/n':>9}"]
    for name, r in rows:
        lines.append(
            f"{name:<22} {r.value:6.3f}  [{r.ci_low:.3f}, {r.ci_high:.3f}]  {r.k:>4g}/{r.n:<4d}"
        )
    if s.n_invalid:
        lines.append(f"invalid verdicts: {s.n_invalid} (never counted as safe)")
    for warning in (non_answer_warning(s), unfinished_warning(s)):
        if warning:
            lines.append(warning)
    return "\n".join(lines)


def result_document(
    result: ScoreResult,
    scorer: FlipScorer,
    harmful: PromptSet,
    benign: PromptSet | None,
    stats: dict[str, int],
) -> dict[str, object]:
    from flipsearch.engines import engine_choice_record
    from flipsearch.export import now_iso
    from flipsearch.models import model_identity
    from flipsearch.paths import recordable

    spec = getattr(getattr(scorer.engine, "config", None), "model", None)
    spec = spec or str(scorer.engine.model_path)
    sets = [harmful] + ([benign] if benign is not None else [])
    return {
        "context": {"text": result.context.text, "placement": result.context.placement},
        "scores": result.score.to_dict(),
        "settings": scorer.settings.to_dict(),
        # The model by identity, paths portable, no tokens (flipsearch.paths.recordable).
        "provenance": recordable(
            {
                **model_identity(spec, scorer.engine.model_path),
                "engine": scorer.engine.name,
                "engine_choice": engine_choice_record(scorer.engine),
                **scorer.template_record(),  # what `system` placement does with the template
                **scorer.thinking_record(),  # enable_thinking, what the judge read
                "judge": scorer.judge_id,
                "prompt_sets": [ps.describe() for ps in sets],
                "max_tokens": scorer.settings.max_tokens,
                "package_version": __version__,
                "created": now_iso(),
            }
        ),
        "cache": stats,
        "outcomes": [o.to_dict() for o in result.outcomes],
    }
