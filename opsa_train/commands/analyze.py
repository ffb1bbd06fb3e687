"""``opsa-train analyze``: token-level KL between the context-conditioned teacher and models.

Per position and per token, teacher = initial model + I_h, on harmful prompts (the
paper's Fig. 2); see :mod:`opsa_train.analysis`.

Example:
    opsa-train analyze --context best.json --models base=smollm2-135m opsa=runs/R/final \\
        baseline=runs/B/final --out results/analysis --limit 8 --max-tokens 32
    opsa-train analyze --context best.json --models base=M opsa=runs/R/final --rollouts base
"""

from __future__ import annotations

import argparse
import json

from opsa_train.commands._common import add_command, add_engine_arg, add_models_arg, parse_models


def register(subparsers: argparse._SubParsersAction) -> None:
    help = "token-level teacher/student KL (CSV + PNG)"
    p = add_command(subparsers, "analyze", help, __doc__, epilog="example")
    p.add_argument("--context", required=True, help="flipsearch export file (I_h)")
    add_models_arg(p)
    p.add_argument("--out", required=True)
    p.add_argument("--teacher", default=None, help="teacher weights (default: base)")
    p.add_argument("--prompts", default="harmful_core:eval")
    p.add_argument("--limit", type=int, default=16, help="prompts; 0 = all")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--rollouts", choices=("own", "base"), default="own")
    add_engine_arg(p, default="auto")
    p.add_argument("--judge", default="refusal", help="judge of the outcome split")
    p.add_argument("--cache", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from opsa_train.analysis import AnalysisConfig, run_analysis

    config = AnalysisConfig(
        context_file=args.context,
        models=parse_models(args.models),
        teacher=args.teacher,
        prompts=args.prompts,
        limit=args.limit or None,
        max_tokens=args.max_tokens,
        rollouts=args.rollouts,
        engine=args.engine,
        judge=args.judge,
        out_dir=args.out,
        cache=args.cache,
    )
    summary = run_analysis(config)
    print(json.dumps({"models": summary["models"], "outcomes": summary["outcomes"]}, indent=2))
    return 0
