"""``opsa-train pipeline``: sweep -> export -> OPSA -> baseline -> eval -> analysis -> report.

A stage is skipped only when ``runs/<run>/state.json`` records it done for the same inputs
(config, model, prompt sets, upstream results), so the same command resumes an interrupted
run and reruns what a changed input invalidates.

Example:
    opsa-train pipeline                          # the built-in demo config
    opsa-train pipeline --force eval             # rerun eval, analysis and the report
    opsa-train pipeline --run gpu --model Qwen/Qwen3-0.6B \\
        --engine vllm --judge llamaguard --set train.steps=200 --set eval.limit=null
"""

from __future__ import annotations

import argparse

from opsa_train.commands._common import add_command, add_engine_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The pipeline flags, shared by ``opsa-train pipeline`` and ``python -m opsa_train.demo``."""
    from opsa_train.demo import DEFAULT_CONFIG
    from opsa_train.pipeline import STAGES

    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline YAML (sizes)")
    p.add_argument("--run", default=None, help="run name (runs/<run>, results/<run>)")
    p.add_argument("--model", default=None, help="model under study")
    add_engine_arg(p)
    p.add_argument("--judge", default=None, help="refusal (offline), llamaguard, ...")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE"
    )
    p.add_argument("--stop-after", default=None, choices=STAGES, help="last stage to run")
    p.add_argument(
        "--force", default=None, choices=STAGES, help="rerun this stage and every later one"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "pipeline", "the whole study end to end (resumable)", __doc__)
    add_arguments(p)
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
    print(run_pipeline(cfg, stop_after=args.stop_after, force=args.force))
    return 0
