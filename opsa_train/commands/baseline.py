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

from opsa_train.commands._common import add_command, add_train_config_args, print_run


def register(subparsers: argparse._SubParsersAction) -> None:
    help = "off-policy self-distillation baseline (SFT)"
    p = add_command(subparsers, "baseline", help, __doc__)
    add_train_config_args(p, engine_help="data generation engine")
    p.add_argument("--sampling", choices=("greedy", "sample"), default="greedy")
    p.add_argument("--candidates", type=int, default=1, help="answers per prompt (sample)")
    p.add_argument("--judge", default="refusal", help="filter judge")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any TrainConfig field")
    # The flags `opsa-train run` has and this command does not use (build_config reads them).
    no_run_flags = {"resume": False, "fresh": False, "dry_run": False}
    p.set_defaults(func=run, context_text=None, placement=None, **no_run_flags)


def run(args: argparse.Namespace) -> int:
    from opsa_train.baseline import BaselineOptions, train_baseline
    from opsa_train.commands.run import build_config

    config = build_config(args)
    options = BaselineOptions(sampling=args.sampling, candidates=args.candidates, judge=args.judge)
    print_run(train_baseline(config, options=options))
    return 0
