"""The shared field checks of :mod:`flipsearch.checks`, raising opsa_train's OpsaConfigError,
and the check of its prompt-set specs.

Example:
    >>> check_int("steps", 0)
    Traceback (most recent call last):
    ...
    opsa_train.errors.OpsaConfigError: `steps` must be an integer >= 1, got 0
"""

from __future__ import annotations

from functools import partial

from flipsearch import checks
from opsa_train.errors import OpsaConfigError

__all__ = [
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_number",
    "check_prompt_specs",
    "check_str",
]

check_bool = partial(checks.check_bool, error=OpsaConfigError)
check_choice = partial(checks.check_choice, error=OpsaConfigError)
check_fraction = partial(checks.check_fraction, error=OpsaConfigError)
check_int = partial(checks.check_int, error=OpsaConfigError)
check_number = partial(checks.check_number, error=OpsaConfigError)
check_str = partial(checks.check_str, error=OpsaConfigError)


def check_prompt_specs(name: str, specs: object) -> None:
    """A tuple of ``name`` or ``name:split`` strings (``harmful_core:train``)."""
    if not isinstance(specs, tuple):
        raise OpsaConfigError(f"`{name}` must be a list of `name[:split]` strings, got {specs!r}")
    for spec in specs:
        if (
            not isinstance(spec, str)
            or not spec.strip()
            or spec.count(":") > 1
            or spec.startswith(":")
            or spec.endswith(":")
        ):
            raise OpsaConfigError(
                f"`{name}` entries must look like `name` or `name:split`, got {spec!r}"
            )
