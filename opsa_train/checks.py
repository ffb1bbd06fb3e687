"""The shared field checks of :mod:`flipsearch.checks`, raising opsa_train's ConfigError,
and the check of its prompt-set specs.

Example:
    >>> check_int("steps", 0)
    Traceback (most recent call last):
    ...
    opsa_train.errors.ConfigError: `steps` must be an integer >= 1, got 0
"""

from __future__ import annotations

from functools import partial

from flipsearch import checks
from opsa_train.errors import ConfigError

__all__ = [
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_number",
    "check_prompt_specs",
    "check_str",
]

check_bool = partial(checks.check_bool, error=ConfigError)
check_choice = partial(checks.check_choice, error=ConfigError)
check_fraction = partial(checks.check_fraction, error=ConfigError)
check_int = partial(checks.check_int, error=ConfigError)
check_number = partial(checks.check_number, error=ConfigError)
check_str = partial(checks.check_str, error=ConfigError)


def check_prompt_specs(name: str, specs: object) -> None:
    """A tuple of ``name`` or ``name:split`` strings (``harmful_core:train``)."""
    if not isinstance(specs, tuple):
        raise ConfigError(f"`{name}` must be a list of `name[:split]` strings, got {specs!r}")
    for spec in specs:
        if (
            not isinstance(spec, str)
            or not spec.strip()
            or spec.count(":") > 1
            or spec.startswith(":")
            or spec.endswith(":")
        ):
            raise ConfigError(
                f"`{name}` entries must look like `name` or `name:split`, got {spec!r}"
            )
