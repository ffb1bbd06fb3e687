"""``flipsearch judge``: label existing (prompt, response) rows with a judge.

Example:
    flipsearch judge --input rows.jsonl --out verdicts.jsonl --judge refusal
"""

from __future__ import annotations

import argparse

from flipsearch.commands._common import add_judge_args, build_judge


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "judge",
        help="label (prompt, response) JSONL rows with a judge",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--input", required=True, help="JSONL with `prompt` and `response` fields")
    p.add_argument("--out", required=True, help="JSONL out: one verdict row per input row")
    add_judge_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.judges import judge_file

    n = judge_file(args.input, args.out, build_judge(args))
    print(f"judged {n} rows -> {args.out}")
    return 0
