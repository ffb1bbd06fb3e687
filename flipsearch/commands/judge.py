"""``flipsearch judge``: label existing (prompt, response) rows with a judge.

``--explain`` also prints, for each row, the outcome and the rule that decided it (the
verdict's ``raw`` field: for the offline ``refusal`` judge, the matcher's rule name).

Example:
    flipsearch judge --input rows.jsonl --out verdicts.jsonl --judge refusal
    flipsearch judge --input rows.jsonl --out verdicts.jsonl --explain
"""

from __future__ import annotations

import argparse
import json

from flipsearch.commands._common import add_judge_args, build_judge


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "judge",
        help="label (prompt, response) JSONL rows with a judge",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--input", required=True, help="JSONL with `prompt` and `response` fields")
    p.add_argument("--out", required=True, help="JSONL out: one verdict row per input row")
    p.add_argument(
        "--explain",
        action="store_true",
        help="print each row's outcome and the rule that decided it",
    )
    add_judge_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.judges import judge_file

    n = judge_file(args.input, args.out, build_judge(args))
    if args.explain:
        print(explain(args.input, args.out), end="")
    print(f"judged {n} rows -> {args.out}")
    return 0


def explain(input_path: str, verdicts_path: str, width: int = 60) -> str:
    """One line per row: index, outcome, deciding rule, and the response's start."""
    from flipsearch.judges import read_pairs

    _, responses = read_pairs(input_path)
    with open(verdicts_path, encoding="utf-8") as f:
        verdicts = [json.loads(line) for line in f if line.strip()]
    lines = []
    for i, (response, v) in enumerate(zip(responses, verdicts, strict=True)):
        rule = " ".join(str(v.get("raw") or "-").split())[:40]
        start = " ".join(response.split())[:width]
        lines.append(f"{i}\t{v['outcome']}\t{rule}\t{start!r}")
    return "".join(line + "\n" for line in lines)
