"""``opsa-train baseline``: the off-policy baseline, SFT on filtered self-generated answers.

ThinkSafe-style: the frozen model answers with its privileged context, the judge keeps
the safe answers, and the model is fine-tuned on them with the OPSA run's options.

The config is built like ``opsa-train run``'s (preset, ``--config``, flags, ``key=value``
overrides), so passing the same options gives matched data, steps and optimiser.

Example:
    opsa-train baseline --context best.json --out runs/B --steps 20
    opsa-train baseline --context best.json --out runs/B --sampling sample --candidates 4
    opsa-train baseline --context best.json --out runs/s --steps 2 batch_size=2 max_new_tokens=16
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "baseline",
        help="off-policy self-distillation baseline (SFT)",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[6:]),
    )
    p.add_argument("--context", help="flipsearch export file (sets `context_file`)")
    p.add_argument("--out", help="run folder (sets `out_dir`)")
    p.add_argument("--config", help="YAML TrainConfig, applied over the preset")
    p.add_argument("--preset", choices=("cpu", "paper"), default=None)
    p.add_argument("--steps", type=int)
    p.add_argument("--model")
    p.add_argument("--engine", choices=("auto", "vllm", "hf"), help="data generation engine")
    p.add_argument("--sampling", choices=("greedy", "sample"), default="greedy")
    p.add_argument("--candidates", type=int, default=1, help="answers per prompt (sample)")
    p.add_argument("--judge", default="refusal", help="filter judge")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any TrainConfig field")
    # The flags `opsa-train run` has and this command does not use.
    p.set_defaults(func=run, resume=False, fresh=False, dry_run=False)


def run(args: argparse.Namespace) -> int:
    from opsa_train.baseline import BaselineOptions, train_baseline
    from opsa_train.commands.run import build_config

    config = build_config(args)
    options = BaselineOptions(sampling=args.sampling, candidates=args.candidates, judge=args.judge)
    result = train_baseline(config, options=options)
    print(
        json.dumps(
            {"out_dir": str(result.out_dir), "final": str(result.final_dir), "steps": result.steps}
        )
    )
    return 0
