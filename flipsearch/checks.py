"""Field checks shared by the config dataclasses: one rule, one message form.

Each check returns quietly when the value is fine, else raises ``error`` with
"`name` must <rule>, got <value!r>[: why]". ``error`` is the calling package's
ConfigError: flipsearch's by default; opsa_train binds its own in
:mod:`opsa_train.checks`. ``optional=True`` also accepts None and reads
"must be <rule> or None".

Example:
    >>> check_int("limit", 0, optional=True)
    Traceback (most recent call last):
    ...
    flipsearch.errors.ConfigError: `limit` must be an integer >= 1 or None, got 0
    >>> check_fraction("top_p", 0.0, include_0=False)
    Traceback (most recent call last):
    ...
    flipsearch.errors.ConfigError: `top_p` must be in (0, 1], got 0.0
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import NoReturn

from flipsearch.errors import ConfigError

__all__ = [
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_number",
    "check_str",
]

ErrorClass = type[Exception]


def _fail(
    error: ErrorClass, name: str, rule: str, value: object, *, optional: bool, why: str
) -> NoReturn:
    rule = f"{rule} or None" if optional else rule
    raise error(f"`{name}` must be {rule}, got {value!r}" + (f": {why}" if why else ""))


def _finite(
    name: str, value: object, *, optional: bool, why: str, error: ErrorClass
) -> float | None:
    # The value as a finite number; None where optional and None.
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(error, name, "a finite number", value, optional=optional, why=why)
    return value


def check_int(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    optional: bool = False,
    why: str = "",
    error: ErrorClass = ConfigError,
) -> None:
    """An int (not a bool) >= ``minimum``: "`name` must be an integer >= 1, got 0"."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(error, name, f"an integer >= {minimum}", value, optional=optional, why=why)


def check_number(
    name: str,
    value: object,
    *,
    above: float | None = None,
    minimum: float | None = None,
    optional: bool = False,
    why: str = "",
    error: ErrorClass = ConfigError,
) -> None:
    """A finite int or float (not a bool), ``> above`` and ``>= minimum`` where given:
    "`lr` must be a finite number, got nan", then "`lr` must be > 0, got 0.0"."""
    number = _finite(name, value, optional=optional, why=why, error=error)
    if number is None:
        return
    if above is not None and number <= above:
        _fail(error, name, f"> {above}", value, optional=optional, why=why)
    if minimum is not None and number < minimum:
        _fail(error, name, f">= {minimum}", value, optional=optional, why=why)


def check_fraction(
    name: str,
    value: object,
    *,
    include_0: bool = True,
    include_1: bool = True,
    optional: bool = False,
    why: str = "",
    error: ErrorClass = ConfigError,
) -> None:
    """A finite number in [0, 1], or (0, 1], [0, 1), (0, 1) as ``include_*`` say:
    "`alpha` must be in [0, 1], got 1.5"."""
    number = _finite(name, value, optional=optional, why=why, error=error)
    if number is None:
        return
    low_ok = number >= 0 if include_0 else number > 0
    high_ok = number <= 1 if include_1 else number < 1
    if not (low_ok and high_ok):
        interval = f"{'[' if include_0 else '('}0, 1{']' if include_1 else ')'}"
        _fail(error, name, f"in {interval}", value, optional=optional, why=why)


def check_choice(
    name: str,
    value: object,
    choices: Collection[object],
    *,
    optional: bool = False,
    why: str = "",
    error: ErrorClass = ConfigError,
) -> None:
    """One of ``choices``, shown as given: "`engine` must be one of ('auto', 'hf'), got 'x'"."""
    if optional and value is None:
        return
    if value not in choices:
        _fail(error, name, f"one of {choices}", value, optional=optional, why=why)


def check_bool(name: str, value: object, *, error: ErrorClass = ConfigError) -> None:
    """True or False, not a truthy stand-in: "`wandb` must be True or False, got 'yes'"."""
    if not isinstance(value, bool):
        _fail(error, name, "True or False", value, optional=False, why="")


def check_str(
    name: str,
    value: object,
    *,
    allow_empty: bool = False,
    optional: bool = False,
    error: ErrorClass = ConfigError,
) -> None:
    """A string, non-blank unless ``allow_empty``: "`model` must be a non-empty string, got ''"."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        rule = "a string" if allow_empty else "a non-empty string"
        _fail(error, name, rule, value, optional=optional, why="")
