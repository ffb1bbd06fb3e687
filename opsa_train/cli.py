"""The ``opsa-train`` command line: one subcommand per module in :mod:`opsa_train.commands`.

Example:
    opsa-train run --context best.json --out runs/R
    opsa-train run --context best.json --out runs/smoke --steps 4 batch_size=2 max_new_tokens=16
    opsa-train run --out runs/R --resume          # continue where it stopped
    opsa-train --version                          # version and git commit (in a checkout)
"""

from __future__ import annotations

import sys

from flipsearch.cli import build_parser, run_cli
from flipsearch.errors import FlipsearchError
from opsa_train import __version__
from opsa_train.errors import OpsaTrainError

# Modules not shipped in this version (e.g. `eval` before it is written) are skipped.
COMMAND_MODULES = (
    "opsa_train.commands.run",
    "opsa_train.commands.eval",
    "opsa_train.commands.baseline",
    "opsa_train.commands.analyze",
    "opsa_train.commands.pipeline",
    "opsa_train.commands.calibrate",
    "opsa_train.commands.validate",
)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; known errors print one line and exit 2."""
    parser = build_parser(COMMAND_MODULES, prog="opsa-train", version=__version__)
    parser.description = __doc__.splitlines()[0]
    return run_cli(parser, argv, (OpsaTrainError, FlipsearchError))


if __name__ == "__main__":
    sys.exit(main())
