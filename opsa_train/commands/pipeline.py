"""``opsa-train pipeline``: sweep -> export -> OPSA -> baseline -> eval -> analysis -> report.

Every stage is skipped when its output is complete, so the same command resumes.

Example:
    opsa-train pipeline                      # the built-in demo config
    opsa-train pipeline --run gpu --model Qwen/Qwen3-0.6B \\
        --engine vllm --judge llamaguard --set train.steps=200 --set eval.limit=null
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from opsa_train.demo import DEFAULT_CONFIG

    p = subparsers.add_parser(
        "pipeline",
        help="the whole study end to end (resumable)",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline YAML")
    p.add_argument("--run", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--engine", default=None, choices=("auto", "vllm", "hf"))
    p.add_argument("--judge", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="S.K=V")
    p.add_argument("--stop-after", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from opsa_train.pipeline import load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(
        args.config,
        args.overrides,
        run=args.run,
        model=args.model,
        engine=args.engine,
        judge=args.judge,
    )
    print(run_pipeline(cfg, stop_after=args.stop_after))
    return 0
