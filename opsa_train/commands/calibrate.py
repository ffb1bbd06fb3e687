"""``opsa-train calibrate``: tune an OPSA recipe on dev prompts (never the ``:eval`` splits).

An Optuna grid over TrainConfig fields whose objective is the student's pooled dev
distillation efficiency, each trial evaluated every ``eval_every`` steps (the learning
curve); see :mod:`opsa_train.calibrate`. Writes ``calibration.csv``, ``calibration.md``
and ``learning_curve.png`` to ``--report`` (default: ``--out``). Re-running resumes.

Example:
    opsa-train calibrate --context best.json --out runs/calibrate --report results/calibration \\
        grid.lr=[1e-4,3e-4,1e-3] steps=40 eval_every=10 train.max_prompts=null
    opsa-train calibrate --config calibrate.yaml --out runs/calibrate
"""

from __future__ import annotations

import argparse

from opsa_train.commands._common import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "calibrate", "tune the training recipe on dev prompts", __doc__)
    p.add_argument("--config", default=None, help="YAML of CalibrationConfig fields")
    p.add_argument("--context", default=None, help="flipsearch export file (the teacher)")
    p.add_argument("--out", default=None, help="trial runs and the study journal")
    p.add_argument("--report", default=None, help="where the table and plot go (default: --out)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="field overrides, YAML values")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.paths import recordable
    from opsa_train.calibrate import CalibrationConfig, calibrate
    from opsa_train.calibrate_report import write_calibration_report
    from opsa_train.errors import OpsaConfigError
    from opsa_train.pipeline_config import yaml_document

    doc = yaml_document(args.config, args.overrides)
    if args.context is not None:
        doc["context_file"] = args.context
    if args.out is not None:
        doc["out_dir"] = args.out
    if "context_file" not in doc:
        raise OpsaConfigError("calibrate needs the teacher's export file: pass --context FILE")
    unknown = sorted(set(doc) - set(CalibrationConfig.__dataclass_fields__))
    if unknown:
        raise OpsaConfigError(
            f"calibrate config keys must be among "
            f"{sorted(CalibrationConfig.__dataclass_fields__)}, got {unknown!r}"
        )
    config = CalibrationConfig(**doc)
    study = calibrate(config)
    context = recordable(config.context_file)
    header = f"# Calibration `{config.study}` (dev prompts only; context `{context}`)"
    for path in write_calibration_report(
        study, args.report or config.out_dir, header=header, slack=config.over_refusal_slack
    ):
        print(f"wrote {path}")
    return 0
