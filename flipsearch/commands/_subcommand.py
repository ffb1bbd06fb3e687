"""The subparser of a command described by its module docstring (``flipsearch`` and
``opsa-train`` commands alike)."""

from __future__ import annotations

import argparse


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, doc: str, *, epilog: str = "all"
) -> argparse.ArgumentParser:
    """The subparser of ``name``, described by its module docstring ``doc``.

    The description is the docstring's first line; the epilog is the rest after the
    blank line (``epilog="example"``: from its ``Example:`` line on), shown as written.
    """
    lines = doc.splitlines()
    start = lines.index("Example:") if epilog == "example" else 2
    return subparsers.add_parser(
        name,
        help=help,
        description=lines[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(lines[start:]),
    )
