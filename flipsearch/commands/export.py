"""``flipsearch export``: write a study's best context (or Pareto set) for training.

Examples::

    flipsearch export --study demo --out best.json
    flipsearch export --study demo --out best.yaml --benign-from benign
    flipsearch export --study demo --benign-study demo-ib --out best.json  # I_h + searched I_b
    flipsearch export --study demo --out front.json --pareto     # front-trial<N>.json each
    flipsearch export --study demo --trials-table trials.csv     # or .parquet

``--pareto`` writes one export file per Pareto trial, named ``<stem>-trial<N><suffix>``,
so each stays readable by ``flipsearch.export.read_export`` (one schema, one context).

``--study`` must be an I_h search; the best context of an I_b search (``flipsearch sweep
--target benign``) goes in through ``--benign-study``, with its own scores
(``scores.benign``) and provenance (``provenance.benign``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from flipsearch.commands._common import add_study_args
from flipsearch.contexts import PLACEMENTS

if TYPE_CHECKING:
    from flipsearch.contexts import Context


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the best context of a study (and/or its trials table)",
        description=__doc__.splitlines()[0],
    )
    add_study_args(p)
    p.add_argument("--out", default=None, help="export file, .json or .yaml")
    p.add_argument("--pareto", action="store_true", help="one file per Pareto-front trial")
    p.add_argument("--trial", type=int, default=None, help="export this trial instead of the best")
    b = p.add_argument_group("benign context I_b (optional)")
    b.add_argument("--benign-context", default=None, metavar="TEXT")
    b.add_argument(
        "--benign-from",
        default=None,
        metavar="SPACE",
        help="take I_b from a space file (first candidate, or --benign-id)",
    )
    b.add_argument("--benign-id", default=None, help="candidate id (prefix) in --benign-from")
    b.add_argument("--benign-placement", default="system", choices=PLACEMENTS)
    b.add_argument(
        "--benign-study",
        default=None,
        metavar="STUDY",
        help="take I_b from the best feasible trial of an I_b search (sweep --target benign)",
    )
    b.add_argument(
        "--benign-storage",
        default=None,
        help="the --benign-study's storage (default: the one its config.json records)",
    )
    p.add_argument("--trials-table", default=None, help="write all trials as .csv or .parquet")
    p.set_defaults(func=run)


def benign_context(args: argparse.Namespace) -> Context | None:
    """I_b from ``--benign-context`` or ``--benign-from`` (None when neither is given)."""
    from flipsearch.contexts import Context
    from flipsearch.errors import ConfigError
    from flipsearch.space import load_search_space

    given = [
        name
        for name, value in (
            ("--benign-context", args.benign_context),
            ("--benign-from", args.benign_from),
            ("--benign-study", getattr(args, "benign_study", None)),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ConfigError(
            "give at most one of `--benign-context`, `--benign-from` and `--benign-study`, "
            f"got {given}"
        )
    if args.benign_context is not None:
        return Context(args.benign_context, args.benign_placement)
    if args.benign_from is None:
        return None
    cands = load_search_space(args.benign_from).enumerate()
    if args.benign_id is None:
        return cands[0].context
    for c in cands:
        if c.id == args.benign_id or c.id.startswith(args.benign_id):
            return c.context
    raise ConfigError(
        f"`--benign-id` must name a candidate of {args.benign_from}, got {args.benign_id!r}; "
        f"first ids: {[c.id for c in cands[:3]]}"
    )


def run(args: argparse.Namespace) -> int:
    from flipsearch.errors import ConfigError
    from flipsearch.export import write_export
    from flipsearch.trials import (
        best_trial,
        export_of,
        open_study,
        pareto_trials,
        trials_frame,
        write_trials_table,
    )

    if args.out is None and args.trials_table is None:
        raise ConfigError("give `--out FILE` and/or `--trials-table FILE`")
    study = open_study(args.study, storage=args.storage, results_dir=args.results_dir)
    if args.trials_table:
        path = write_trials_table(trials_frame(study), args.trials_table)
        print(f"wrote {path} ({len(study.trials)} trials)")
    if args.out is None:
        return 0
    out = Path(args.out)
    if out.suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"`--out` must end in .json, .yaml or .yml, got {args.out!r}")
    benign = benign_context(args)
    benign_study = (
        open_study(args.benign_study, storage=args.benign_storage, results_dir=args.results_dir)
        if args.benign_study is not None
        else None
    )
    if args.pareto:
        front = pareto_trials(study)
        if not front:
            raise ConfigError(f"`--study` must have a COMPLETE trial, got none in {args.study!r}")
        for t in front:
            path = out.with_name(f"{out.stem}-trial{t.number}{out.suffix}")
            write_export(path, export_of(study, t, benign=benign, benign_study=benign_study))
            print(f"wrote {path}")
        return 0
    if args.trial is not None:
        trial = study.trials[args.trial] if 0 <= args.trial < len(study.trials) else None
        if trial is None or "scores" not in trial.user_attrs or not trial.state.is_finished():
            raise ConfigError(f"`--trial` must be a finished, scored trial, got {args.trial!r}")
    else:
        trial = best_trial(study)
    export = export_of(study, trial, benign=benign, benign_study=benign_study)
    write_export(out, export)
    tfr = export.scores.get("tfr") or {}
    print(
        f"wrote {out}: trial {trial.number}, TFR {tfr.get('value', 0):.3f}, "
        f"{export.harmful.placement}: {export.harmful.text!r}"
    )
    if benign_study is not None and export.benign is not None:
        helpful = (export.scores.get("benign") or {}).get("helpful_benign") or {}
        print(
            f"  I_b from {args.benign_study!r} trial {export.provenance['benign']['trial']}, "  # type: ignore[index]
            f"helpful {helpful.get('value', 0):.3f}, {export.benign.placement}: "
            f"{export.benign.text!r}"
        )
    return 0
