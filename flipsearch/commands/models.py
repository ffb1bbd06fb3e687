"""``flipsearch models``: prepare (convert once) and locate models.

``prepare`` makes the model's local folder (the embedded default is dequantized into the
cache dir once; a hub id is downloaded) and says where it is; ``path`` prints only the
folder, for scripts. ``python -m flipsearch.models prepare`` runs the same command.

Example:
    flipsearch models prepare                     # the embedded default, smollm2-135m
    flipsearch models path --model Qwen/Qwen3-0.6B
"""

from __future__ import annotations

import argparse

from flipsearch.commands._subcommand import add_command
from flipsearch.models import DEFAULT_MODEL


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "models", "prepare (convert once) and locate models", __doc__)
    p.add_argument("action", choices=["prepare", "path"])
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="embedded model name, local HF folder or hub id (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flipsearch.models import resolve_model

    path = resolve_model(args.model)
    print(path if args.action == "path" else f"model {args.model!r} ready at {path}")
    return 0
