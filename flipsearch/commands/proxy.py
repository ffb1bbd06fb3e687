"""``flipsearch proxy``: score every context of a space by forward passes, no generation.

Example:
    flipsearch proxy --space paper_axes --harmful harmful_core:search --out proxy.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from flipsearch.commands._common import (
    add_cache_args,
    add_engine_args,
    add_judge_args,
    build_engine,
    build_judge,
    open_cache,
)
from flipsearch.errors import ConfigError
from flipsearch.proxy import (
    ANSWER_TOKENS,
    CONTEXTS_PER_PASS,
    DIRECTION_HARMFUL,
    DIRECTION_HARMLESS,
    MAX_PROMPTS,
)

OPENING_SPACE = "baselines"
"""The reference contexts whose refusals give the likelihood proxy its refusal openings."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "proxy",
        help="rank a space's contexts by a generation-free flip proxy",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--space", required=True, help="search space: built-in name or YAML file")
    p.add_argument("--out", required=True, help="CSV to write, best first")
    p.add_argument(
        "--design",
        default="likelihood,direction",
        help="comma-separated: likelihood (own answers' log-likelihood shift), direction "
        "(refusal-direction shift, prompt tokens only); the first one orders the CSV",
    )
    p.add_argument("--harmful", default="harmful_core:search", help="prompts to score on")
    p.add_argument("--limit", type=int, default=None, help="first N harmful prompts")
    p.add_argument(
        "--benign",
        default=None,
        help="benign prompts (e.g. benign:search): adds the likelihood score on them "
        "(column benign, higher: more over-refusal) and selective = likelihood - benign, "
        "which then orders the CSV",
    )
    p.add_argument(
        "--direction-harmful",
        default=DIRECTION_HARMFUL,
        help="harmful prompts the refusal direction is fitted on (a train split)",
    )
    p.add_argument(
        "--direction-harmless",
        default=DIRECTION_HARMLESS,
        help="harmless prompts the refusal direction is fitted on (a train split)",
    )
    p.add_argument(
        "--direction-layers",
        default=None,
        help="candidate layers of the refusal direction, FIRST-LAST (default: every block "
        "but the last; the best separating one on held-out train prompts is used)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=24,
        help="window of the context-free answers the likelihood proxy reads (default 24)",
    )
    p.add_argument(
        "--max-prompts",
        type=int,
        default=MAX_PROMPTS,
        help=f"prompts each context is scored on: the first base-unsafe ones (default "
        f"{MAX_PROMPTS}; 0: all)",
    )
    p.add_argument(
        "--answer-tokens",
        type=int,
        default=ANSWER_TOKENS,
        help=f"tokens of each unsafe answer the likelihood proxy reads (default {ANSWER_TOKENS})",
    )
    p.add_argument("--micro-batch", type=int, default=32, help="rows per forward pass")
    p.add_argument(
        "--contexts-per-pass",
        type=int,
        default=CONTEXTS_PER_PASS,
        help=f"contexts whose rows are batched together (default {CONTEXTS_PER_PASS})",
    )
    add_engine_args(p)
    add_judge_args(p)
    add_cache_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from flipsearch.contexts import Context
    from flipsearch.flip import FlipScorer, ScoreSettings
    from flipsearch.prompts import load_prompt_set
    from flipsearch.proxy import DESIGNS, hf_model_of, prepare_proxies, score_candidates
    from flipsearch.space import load_search_space

    designs = [d.strip() for d in args.design.split(",") if d.strip()]
    bad = [d for d in designs if d not in DESIGNS]
    if bad or not designs:
        raise ConfigError(f"`--design` must be a comma-separated subset of {DESIGNS}, got {bad}")
    space = load_search_space(args.space)
    candidates = space.enumerate(limit=None, unique=True)
    harmful = load_prompt_set(args.harmful, limit=args.limit)
    benign = load_prompt_set(args.benign) if args.benign else None
    if benign is not None and "likelihood" not in designs:
        raise ConfigError("`--benign` adds to the likelihood design: add it to `--design`")
    engine = build_engine(args)
    model, tokenizer = hf_model_of(engine)
    scorer = FlipScorer(
        engine, build_judge(args), open_cache(args), ScoreSettings(max_tokens=args.max_tokens)
    )
    openings = [c.context for c in load_search_space(OPENING_SPACE).enumerate()]
    setup = prepare_proxies(
        scorer,
        model,
        tokenizer,
        harmful,
        benign=benign,
        designs=designs,
        opening_contexts=[Context(c.text, c.placement) for c in openings],
        direction_harmful=[r.prompt for r in load_prompt_set(args.direction_harmful).harmful()],
        direction_harmless=[r.prompt for r in load_prompt_set(args.direction_harmless).benign()],
        direction_layers=parse_layers(args.direction_layers),
        answer_tokens=args.answer_tokens,
        max_prompts=args.max_prompts or None,
        micro_batch=args.micro_batch,
    )
    print(
        f"set-up: {setup.generations} new generations ({setup.new_tokens} tokens), "
        f"{setup.seconds:.1f} s"
        + (
            f"; direction: layer {setup.direction.direction.layer}, "
            f"held-out separation d = {max(setup.direction.direction.separation.values()):.2f}"
            if setup.direction
            else ""
        )
    )
    start = time.perf_counter()
    rows = list(
        tqdm(
            score_candidates(
                setup,
                model,
                tokenizer,
                candidates,
                micro_batch=args.micro_batch,
                contexts_per_pass=args.contexts_per_pass,
            ),
            total=len(candidates),
            desc="proxy",
            disable=not sys.stderr.isatty(),
        )
    )
    seconds = time.perf_counter() - start
    order = "selective" if benign is not None else designs[0]
    rows.sort(key=lambda r: -float(getattr(r, order)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].to_dict()))
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_dict())
    tokens = sum(r.forward_tokens for r in rows)
    print(
        f"scored {len(rows)} contexts in {seconds:.1f} s ({seconds / len(rows):.2f} s, "
        f"{tokens / len(rows):.0f} forward tokens per context); wrote {out}"
    )
    return 0


def parse_layers(text: str | None) -> list[int] | None:
    """``"8-22"`` -> [8, ..., 22]; None -> None.

    Raises:
        ConfigError: not FIRST-LAST with 1 <= FIRST <= LAST.
    """
    if text is None:
        return None
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ConfigError(f"`--direction-layers` must be FIRST-LAST, such as 8-22, got {text!r}")
    lo, hi = int(first), int(last)
    if not 1 <= lo <= hi:
        raise ConfigError(f"`--direction-layers` must have 1 <= FIRST <= LAST, got {text!r}")
    return list(range(lo, hi + 1))
