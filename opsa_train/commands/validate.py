"""``opsa-train validate``: does a higher flip rate train a safer model? (the paper's Fig. 3)

Picks ``--contexts`` K contexts of a sweep study spanning its flip-rate range, trains OPSA
with each under one recipe, evaluates each on held-out sets and reports Spearman's rho of
the flip rate (and of a ``flipsearch proxy`` score) against the safety gain, with a
scatter plot; see :mod:`opsa_train.validate`. Re-running skips finished contexts.

Example:
    opsa-train validate --study demo --results-dir runs/demo/sweep --contexts 5 \\
        --out results/validate/demo train.steps=20 limit=50
"""

from __future__ import annotations

import argparse

from opsa_train.commands._common import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "validate", "flip rate vs post-training safety gain", __doc__)
    p.add_argument("--config", default=None, help="YAML of ValidateConfig fields")
    p.add_argument("--study", default=None, help="the sweep study")
    p.add_argument("--results-dir", default=None, help="the sweep's results folder")
    p.add_argument("--contexts", type=int, default=None, help="K contexts (default 5)")
    p.add_argument("--proxy", default=None, help="a `flipsearch proxy` CSV to correlate too")
    p.add_argument("--runs", default=None, help="run folders (default runs/validate)")
    p.add_argument("--out", required=True, help="where validate.md/.csv/.png go")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="field overrides, YAML values")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from opsa_train.errors import OpsaConfigError
    from opsa_train.pipeline_config import yaml_document
    from opsa_train.validate import ValidateConfig, validate, write_validation_report

    doc = yaml_document(args.config, args.overrides)
    given = {
        "study": args.study,
        "results_dir": args.results_dir,
        "contexts": args.contexts,
        "proxy": args.proxy,
        "out_dir": args.runs,
    }
    doc.update({k: v for k, v in given.items() if v is not None})
    if "study" not in doc:
        raise OpsaConfigError("validate needs the sweep study: pass --study NAME")
    unknown = sorted(set(doc) - set(ValidateConfig.__dataclass_fields__))
    if unknown:
        raise OpsaConfigError(
            f"validate config keys must be among "
            f"{sorted(ValidateConfig.__dataclass_fields__)}, got {unknown!r}"
        )
    config = ValidateConfig(**doc)
    rows = validate(config)
    from flipsearch.trials import objective_metric_of, open_study

    metric = config.metric or objective_metric_of(
        open_study(config.study, storage=config.storage, results_dir=config.results_dir)
    )
    header = (
        f"# TFR validation: study `{config.study}`, {len(rows)} contexts "
        f"(held-out sets {', '.join(config.harmful_sets)}; limit {config.limit})"
    )
    for path in write_validation_report(rows, args.out, header=header, metric=metric):
        print(f"wrote {path}")
    return 0
