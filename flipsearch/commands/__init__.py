"""Subcommands of the ``flipsearch`` CLI; each module has ``register(subparsers)``."""
