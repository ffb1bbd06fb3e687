"""``flipsearch judge-eval``: score the refusal judge on hand-labelled model answers.

Prints the markdown report of :func:`flipsearch.judges.labelled_eval.report` (seconds,
no model): precision, recall and balanced accuracy per outcome (refusal, compliance,
non-answer), dev and test split. The default labelled file is the embedded
SmolLM2-135M's own answers (``flipsearch/judges/data/smollm2_135m.jsonl``).

Example:
    flipsearch judge-eval --out results/judge_smollm2.md
    flipsearch judge-eval --labelled my_labels.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flipsearch.commands._subcommand import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "judge-eval", "score the refusal judge on hand-labelled answers", __doc__)
    p.add_argument(
        "--labelled",
        type=Path,
        help="JSONL with prompt, response, label (refusal/compliance/non-answer), split "
        "(dev/test); default: the packaged SmolLM2-135M set",
    )
    p.add_argument("--out", type=Path, help="write the markdown report here too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.judges.labelled_eval import SMOLLM2_SET, report

    text = report(args.labelled or SMOLLM2_SET)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0
