"""``opsa-train run``: train a model with OPSA from a flipsearch export file.

The config is built in layers: a preset (``--preset cpu``, the default, or ``paper``),
then ``--config cfg.yaml``, then the flags below, then ``key=value`` overrides (any
:class:`~opsa_train.config.TrainConfig` field). When ``--out`` holds a checkpoint and
no config is given, the run's own ``config.json`` is the base, so
``opsa-train run --out runs/R --resume`` needs nothing else.

Example:
    opsa-train run --context best.json --out runs/R --steps 20
    opsa-train run --context best.json --out runs/R --preset paper engine=vllm
    opsa-train run --context best.json --out runs/smoke --steps 2 batch_size=2 max_new_tokens=16
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from opsa_train.config import TrainConfig, load_train_config, parse_overrides

logger = logging.getLogger(__name__)

_PRESETS = {"cpu": TrainConfig.cpu_default, "paper": TrainConfig.paper}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="train with on-policy self-distillation",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--context", help="flipsearch export file (sets `context_file`)")
    p.add_argument("--out", help="run folder (sets `out_dir`)")
    p.add_argument("--config", help="YAML config file, applied over the preset")
    p.add_argument(
        "--preset", choices=sorted(_PRESETS), default=None, help="base config (default: cpu)"
    )
    p.add_argument("--steps", type=int, help="optimiser steps (overrides epochs)")
    p.add_argument("--model", help="model: embedded name, HF folder or hub id")
    p.add_argument("--engine", choices=("auto", "vllm", "hf"), help="rollout engine")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true", help="require a checkpoint in --out and continue it"
    )
    resume.add_argument(
        "--fresh", action="store_true", help="refuse to run if --out already holds checkpoints"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the pre-flight checks, print the resolved config and exit",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any TrainConfig field")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The resolved config of ``args`` (preset or saved config.json, YAML, flags, overrides)."""
    overrides: dict[str, object] = dict(parse_overrides(args.overrides))
    for flag, key in (
        ("context", "context_file"),
        ("out", "out_dir"),
        ("steps", "steps"),
        ("model", "model"),
        ("engine", "engine"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = str(value)
    saved = Path(args.out) / "config.json" if args.out else None
    if args.preset is None and args.config is None and saved is not None and saved.is_file():
        base = load_train_config(saved)  # resuming a run: its own options are the base
    else:
        base = _PRESETS[args.preset or "cpu"]()
    return load_train_config(args.config, overrides, base=base)


def run(args: argparse.Namespace) -> int:
    from opsa_train.trainer import Trainer, prepare

    config = build_config(args)
    if args.dry_run:
        prepared = prepare(config)
        n_harmful = sum(r.type == "harmful" for r in prepared.rows)
        print(config.to_json())
        print(
            json.dumps(
                {
                    "prompts": len(prepared.rows),
                    "harmful": n_harmful,
                    "benign": len(prepared.rows) - n_harmful,
                    "contexts": prepared.contexts.describe(),
                    "model_path": str(prepared.model_path),
                }
            )
        )
        return 0
    resume = True if args.resume else (False if args.fresh else None)
    result = Trainer(config, resume=resume).run()
    print(
        json.dumps(
            {
                "out_dir": str(result.out_dir),
                "final": str(result.final_dir),
                "steps": result.steps,
                "resumed_from": result.resumed_from,
            }
        )
    )
    return 0
