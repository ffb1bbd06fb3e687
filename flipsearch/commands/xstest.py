"""``flipsearch xstest-eval``: score the offline refusal judge on XSTest's human labels.

Prints the markdown report of :func:`flipsearch.judges.xstest_eval.report` (seconds, no
model): accuracy, precision and recall per file, dev and held-out, plus XSTest's own
prefix baseline.

Example:
    flipsearch xstest-eval --out results/judge_xstest.md
    flipsearch xstest-eval --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flipsearch.commands._subcommand import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "xstest-eval", "score the refusal judge on XSTest's human labels", __doc__)
    p.add_argument("--out", type=Path, help="write the markdown report here too")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="shared data folder (default: $FLIPSEARCH_SHARED_DATA or ../shared/data)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.judges.xstest_eval import report

    text = report(args.data_dir)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0
