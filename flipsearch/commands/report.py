"""``flipsearch report``: plots and summary.md of a study, into results/<study>/.

Example::

    flipsearch report --study demo    # history.png, pareto.png, slots.png, summary.md
"""

from __future__ import annotations

import argparse

from flipsearch.commands._common import add_study_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="plots and a markdown summary of a study",
        description=__doc__.splitlines()[0],
    )
    add_study_args(p)
    p.add_argument("--out-dir", default=None, help="default: results/<study>")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.proposers import CandidatePool
    from flipsearch.report import make_report
    from flipsearch.trials import open_study, study_dir

    study = open_study(args.study, storage=args.storage, results_dir=args.results_dir)
    folder = study_dir(args.results_dir, args.study)
    out = args.out_dir or folder
    pool_file = folder / "pool.jsonl"
    pool = CandidatePool(pool_file) if pool_file.is_file() else None
    for path in make_report(study, out, pool=pool):
        print(f"wrote {path}")
    return 0
