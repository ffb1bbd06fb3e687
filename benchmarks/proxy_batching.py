"""Proxy batching: seconds per context with several contexts per batched run, against one.

The same contexts (``search_efficiency.fixed_contexts``) are scored by
:func:`flipsearch.proxy.score_candidates` at each ``--contexts-per-pass`` value; the
baseline, measured in the same run, is one context per pass (each context's rows in
their own forward passes, its prefix encoded once). Reported per value: seconds per
context, the ratio to the baseline, forward tokens per context (the same for every
value: batching changes how rows are packed, not what runs) and the largest score
difference from the baseline. Set-up (context-free answers, refusal openings, the
direction) is built once and not timed.

Example (CPU, a few minutes with the embedded model)::

    python benchmarks/proxy_batching.py --contexts 64 --contexts-per-pass 1,4,8,16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine_header
from search_efficiency import fixed_contexts

from flipsearch.cache import GenerationCache
from flipsearch.engines import EngineConfig
from flipsearch.flip import FlipScorer, ScoreSettings
from flipsearch.judges import JudgeConfig
from flipsearch.paths import cache_dir
from flipsearch.prompts import load_prompt_set
from flipsearch.proxy import DESIGNS, hf_model_of, prepare_proxies, score_candidates
from flipsearch.space import Candidate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--harmful", default="harmful_core:search")
    ap.add_argument("--benign", default="benign:search", help="'' for no benign term")
    ap.add_argument("--contexts", type=int, default=64, help="grammar contexts + 4 references")
    ap.add_argument("--contexts-per-pass", default="1,4,8,16")
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--designs", default="likelihood", help=f"comma-separated of {DESIGNS}")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "auto"])
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    machine = machine_header()
    widths = [int(x) for x in args.contexts_per_pass.split(",")]
    if 1 not in widths:
        widths.insert(0, 1)  # the baseline
    engine = EngineConfig(engine=args.engine).build()
    model, tokenizer = hf_model_of(engine)
    scorer = FlipScorer(
        engine,
        JudgeConfig().build(),
        GenerationCache(cache_dir() / "generations.sqlite"),
        ScoreSettings(max_tokens=24),
    )
    setup = prepare_proxies(
        scorer,
        model,
        tokenizer,
        load_prompt_set(args.harmful),
        benign=load_prompt_set(args.benign) if args.benign else None,
        designs=args.designs.split(","),
    )
    candidates = [Candidate(id=n, context=c, choice={}) for n, c in fixed_contexts(args.contexts)]
    print(f"{len(candidates)} contexts, designs {args.designs}, micro-batch {args.micro_batch}")
    runs = {}
    for width in sorted(set(widths)):
        start = time.perf_counter()
        rows = list(
            score_candidates(
                setup,
                model,
                tokenizer,
                candidates,
                micro_batch=args.micro_batch,
                contexts_per_pass=width,
            )
        )
        runs[width] = (time.perf_counter() - start, rows)
    base_seconds, base_rows = runs[1]
    results = {}
    for width, (seconds, rows) in runs.items():
        diff = max(
            abs(float(getattr(a, d) or 0.0) - float(getattr(b, d) or 0.0))
            for a, b in zip(rows, base_rows, strict=True)
            for d in ("likelihood", "benign", "direction")
        )
        tokens = sum(r.forward_tokens for r in rows) / len(rows)
        results[width] = {
            "seconds_per_context": seconds / len(rows),
            "speedup_vs_one": base_seconds / seconds,
            "forward_tokens_per_context": tokens,
            "max_score_difference": diff,
        }
        print(
            f"contexts per pass {width:3d}: {seconds / len(rows):.3f} s/context "
            f"({base_seconds / seconds:.2f}x one per pass), {tokens:.0f} forward tokens/context, "
            f"largest score difference {diff:.1e}"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "contexts": len(candidates),
                    "designs": args.designs,
                    "micro_batch": args.micro_batch,
                    "benign": args.benign,
                    "runs": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
