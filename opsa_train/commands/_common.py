"""Pieces shared by the ``opsa-train`` subcommands: the subparser, the option blocks that
recur (``--models``, ``--engine``, the TrainConfig flags) and flag-to-config mapping."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from flipsearch.commands._subcommand import add_command

__all__ = [
    "ENGINES",
    "PRESETS",
    "add_command",
    "add_engine_arg",
    "add_models_arg",
    "add_train_config_args",
    "parse_models",
    "print_run",
    "set_given",
]

ENGINES = ("auto", "vllm", "hf")
"""The ``--engine`` choices of every subcommand."""

PRESETS = ("cpu", "paper")
"""``--preset`` choices: :meth:`TrainConfig.cpu_default` and :meth:`TrainConfig.paper`."""


def add_engine_arg(
    p: argparse.ArgumentParser, *, default: str | None = None, help: str | None = None
) -> None:
    p.add_argument("--engine", default=default, choices=ENGINES, help=help)


def add_models_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL")


def add_train_config_args(p: argparse.ArgumentParser, *, engine_help: str) -> None:
    """The TrainConfig flags of ``run`` and ``baseline`` (see :func:`train_overrides`)."""
    p.add_argument("--context", help="flipsearch export file (sets `context_file`)")
    p.add_argument("--out", help="run folder (sets `out_dir`)")
    p.add_argument("--config", help="YAML TrainConfig, applied over the preset")
    p.add_argument("--preset", choices=PRESETS, default=None, help="base config (default: cpu)")
    p.add_argument("--steps", type=int, help="optimiser steps (overrides epochs)")
    p.add_argument("--model", help="model: embedded name, HF folder or hub id")
    add_engine_arg(p, help=engine_help)


def set_given(
    kw: dict[str, object], args: argparse.Namespace, flags: Iterable[tuple[str, str]]
) -> dict[str, object]:
    """Copy each ``args.<flag>`` that is not None into ``kw[<key>]``; returns ``kw``."""
    for flag, key in flags:
        value = getattr(args, flag)
        if value is not None:
            kw[key] = value
    return kw


def parse_models(items: list[str]) -> dict[str, str]:
    """``["base=M0", "opsa=runs/R/final"]`` -> ``{"base": "M0", "opsa": "runs/R/final"}``;
    a bare path is named by its position (``m0``, ``m1``, ...)."""
    from opsa_train.errors import OpsaConfigError

    out: dict[str, str] = {}
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        if not sep:
            name, path = f"m{i}", item
        if not name or not path or name in out:
            raise OpsaConfigError(f"`--models` entries must be unique NAME=MODEL, got {item!r}")
        out[name] = path
    return out


class RunResult(Protocol):
    """What ``run`` and ``baseline`` print of a finished training run."""

    @property
    def out_dir(self) -> Path: ...
    @property
    def final_dir(self) -> Path: ...
    @property
    def steps(self) -> int: ...


def print_run(result: RunResult, **extra: object) -> None:
    """One JSON line with a finished run's ``out_dir``, ``final``, ``steps`` (and ``extra``)."""
    doc = {"out_dir": str(result.out_dir), "final": str(result.final_dir), "steps": result.steps}
    print(json.dumps({**doc, **extra}))
