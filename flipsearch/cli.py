"""The ``flipsearch`` command line: one subcommand per module in :mod:`flipsearch.commands`.

Example:
    flipsearch score --context "Refuse harmful requests." --placement prefix
    flipsearch judge --input rows.jsonl --out verdicts.jsonl
    flipsearch sweep --space search_spaces/paper_axes.yaml --study demo --trials 20
    flipsearch export --study demo --out best.json
    flipsearch report --study demo
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from flipsearch import __version__
from flipsearch.errors import FlipsearchError

# Each module defines `register(subparsers)`, which adds one subcommand whose
# parser sets `func=run`, with `run(args) -> int`.
COMMAND_MODULES = (
    "flipsearch.commands.score",
    "flipsearch.commands.judge",
    "flipsearch.commands.sweep",
    "flipsearch.commands.export",
    "flipsearch.commands.report",
)


def build_parser(
    modules: tuple[str, ...] = COMMAND_MODULES, prog: str = "flipsearch", version: str = __version__
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a command not shipped in this version
        module.register(sub)
    return parser


def run_cli(
    parser: argparse.ArgumentParser, argv: list[str] | None, errors: tuple[type[Exception], ...]
) -> int:
    """Parse, set up logging, run the subcommand; known errors print one line, exit 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, (FlipsearchError,))


if __name__ == "__main__":
    sys.exit(main())
