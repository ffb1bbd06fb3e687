"""Subcommands of the ``opsa-train`` CLI; each module has ``register(subparsers)`` and
``run(args) -> int`` (see :mod:`opsa_train.cli`)."""
