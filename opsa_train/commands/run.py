"""``opsa-train run``: train a model with OPSA from a flipsearch export file.

The config is built in layers: a preset (``--preset cpu``, the default, or ``paper``),
then ``--config cfg.yaml``, then the flags below, then ``key=value`` overrides (any
:class:`~opsa_train.config.TrainConfig` field). When ``--out`` holds a checkpoint and
no config is given, the run's own ``config.json`` is the base, so
``opsa-train run --out runs/R --resume`` needs nothing else.

The context comes from a flipsearch export file (``--context``) or, hand-written, from
``--context-text TEXT --placement system|prefix``: that builds an export whose provenance
says it was hand-written and saves it as ``<out>/context.json``, which the run's
``config.json`` names as its ``context_file`` (so ``--resume`` finds it).

Re-running a finished run (``final/`` at its last step) prints "already at step N" and
changes nothing; ``--steps M --resume`` with a larger M continues it to step M.

Example:
    opsa-train run --context best.json --out runs/R --steps 20
    opsa-train run --context-text "Refuse harmful requests." --placement system --out runs/H
    opsa-train run --context best.json --out runs/R --preset paper engine=vllm
    opsa-train run --context best.json --out runs/smoke --steps 2 batch_size=2 max_new_tokens=16
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from flipsearch.errors import ExportFileError
from flipsearch.export import ExportFile, read_export, write_export
from opsa_train.commands._common import add_command, add_train_config_args, print_run, set_given
from opsa_train.config import TrainConfig, load_train_config, parse_overrides, saved_train_config
from opsa_train.errors import OpsaConfigError
from opsa_train.preflight import hand_written_export

logger = logging.getLogger(__name__)

_PRESETS = {"cpu": TrainConfig.cpu_default, "paper": TrainConfig.paper}
HAND_WRITTEN_CONTEXT = "context.json"
"""Where ``--context-text`` saves its export in the run folder."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "run", "train with on-policy self-distillation", __doc__)
    add_train_config_args(p, engine_help="rollout engine")
    p.add_argument(
        "--context-text",
        metavar="TEXT",
        help="a hand-written harmful context instead of --context (needs --placement)",
    )
    p.add_argument(
        "--placement",
        choices=("system", "prefix"),
        help="where --context-text goes: a system message or before the user prompt "
        "(with --context: overrides the export's placement, sets `placement`)",
    )
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
    flags = (
        ("context", "context_file"),
        ("out", "out_dir"),
        ("steps", "steps"),
        ("model", "model"),
        ("engine", "engine"),
        ("placement", "placement"),
    )
    given = set_given({}, args, flags)
    overrides: dict[str, object] = dict(parse_overrides(args.overrides))
    overrides.update({key: str(value) for key, value in given.items()})
    saved = Path(args.out) / "config.json" if args.out else None
    if args.preset is None and args.config is None and saved is not None and saved.is_file():
        base = saved_train_config(saved)  # resuming a run: its own options are the base
    else:
        base = _PRESETS[args.preset or "cpu"]()
    config = load_train_config(args.config, overrides, base=base)
    if args.context_text is None:
        if config.context_file is None:
            raise OpsaConfigError(
                "`--context` or `--context-text` must be given, got neither: pass a flipsearch "
                "export file (--context best.json) or a hand-written context "
                "(--context-text TEXT --placement system|prefix)"
            )
        return config
    hand_file = str(Path(config.out_dir) / HAND_WRITTEN_CONTEXT)
    if args.context is not None or config.context_file not in (None, hand_file):
        raise OpsaConfigError(
            "`--context-text` must not be given with a context file, got context_file="
            f"{args.context or config.context_file!r}: use one of the two"
        )
    if args.placement is None:
        raise OpsaConfigError(
            "`--placement` must be given with --context-text, got none: "
            "--placement system (a system message) or prefix (before the user prompt)"
        )
    return load_train_config(None, {"context_file": hand_file}, base=config)


def hand_written(args: argparse.Namespace) -> ExportFile | None:
    """The in-memory export of ``--context-text``/``--placement``; None without them."""
    if args.context_text is None:
        return None
    return hand_written_export(args.context_text, args.placement)


def save_hand_written(export: ExportFile, path: Path) -> None:
    """Save ``export`` to ``path`` in the run folder, unless it already holds it.

    Raises:
        OpsaConfigError: ``path`` holds another context (that run was trained on it).
    """
    if path.is_file():
        try:
            old = read_export(path)
        except ExportFileError as exc:
            raise OpsaConfigError(f"`{path}` must be a valid export file, got: {exc}") from exc
        if old.to_dict() == export.to_dict():
            return
        raise OpsaConfigError(
            f"`--context-text` must match the context of the run in {str(path.parent)!r}, "
            f"got {export.harmful.text!r} ({export.harmful.placement}), but {str(path)!r} "
            f"holds {old.harmful.text!r} ({old.harmful.placement}): choose another --out"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_export(path, export)


def run(args: argparse.Namespace) -> int:
    from opsa_train.trainer import Trainer, prepare

    config = build_config(args)
    export = hand_written(args)
    if args.dry_run:
        prepared = prepare(config, export=export)
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
    if export is not None:
        save_hand_written(export, Path(config.context_file))  # type: ignore[arg-type]
    resume = True if args.resume else (False if args.fresh else None)
    result = Trainer(config, resume=resume).run()
    if result.resumed_from == result.steps:
        print(f"already at step {result.steps}: nothing to train, {result.final_dir} is current")
    print_run(result, resumed_from=result.resumed_from)
    return 0
