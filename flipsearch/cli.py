"""The ``flipsearch`` command line: one subcommand per module in :mod:`flipsearch.commands`.

Example:
    flipsearch score --context "Refuse harmful requests." --placement prefix
    flipsearch judge --input rows.jsonl --out verdicts.jsonl
    flipsearch spaces
    flipsearch sweep --space paper_axes --study demo --trials 20
    flipsearch export --study demo --out best.json
    flipsearch report --study demo
    flipsearch models prepare
    flipsearch xstest-eval --out results/judge_xstest.md
    flipsearch judge-eval --out results/judge_smollm2.md
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from flipsearch.engines import quiet_vllm_logging
from flipsearch.errors import FlipsearchError

# Each module defines `register(subparsers)`, which adds one subcommand whose
# parser sets `func=run`, with `run(args) -> int`.
COMMAND_MODULES = (
    "flipsearch.commands.score",
    "flipsearch.commands.judge",
    "flipsearch.commands.sweep",
    "flipsearch.commands.export",
    "flipsearch.commands.report",
    "flipsearch.commands.spaces",
    "flipsearch.commands.models",
    "flipsearch.commands.xstest",
    "flipsearch.commands.judge_eval",
    "flipsearch.commands.proxy",
)


class _VersionAction(argparse.Action):
    """``--version``: the version plus the git commit, looked up only when asked."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str = argparse.SUPPRESS,
        version: str | None = None,
        help: str | None = None,
    ) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)
        self.version = version or None

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from flipsearch.version import describe_version

        print(describe_version(parser.prog, self.version))
        parser.exit()


def build_parser(
    modules: tuple[str, ...] = COMMAND_MODULES, prog: str = "flipsearch", version: str | None = None
) -> argparse.ArgumentParser:
    """The parser with every shipped subcommand; ``version`` defaults to flipsearch's."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version",
        action=_VersionAction,
        version=version or "",  # "": the package's own version
        help="print the version (and the git commit in a checkout) and exit",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and vLLM's INFO logs"
    )
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
    # Before any vllm import: vLLM logs warnings only, unless -v or VLLM_LOGGING_LEVEL.
    quiet_vllm_logging(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, (FlipsearchError,))


if __name__ == "__main__":
    sys.exit(main())
