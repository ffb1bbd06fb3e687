"""YAML files and ``key=value`` strings into a config dataclass, typed by its fields.

The config loaders share this: :func:`parse_overrides` splits CLI items,
:func:`check_keys` rejects unknown keys with close matches, :func:`coerce_fields`
turns strings and YAML values into each field's declared type (ranges are left to the
dataclass's ``__post_init__``), and :func:`load_config` layers a base, a YAML file and
overrides. Every function raises ``error``, the calling package's ConfigError
(flipsearch's by default).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opts:
    ...     steps: int = 1
    ...     lr: float | None = None
    ...     sets: tuple[str, ...] = ()
    >>> load_config(Opts, None, parse_overrides(["steps=1e2", "lr=none", "sets=a, b"]))
    Opts(steps=100, lr=None, sets=('a', 'b'))
    >>> check_keys({"setps": 1}, ["steps", "lr"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flipsearch.errors.ConfigError: unknown config key `setps`. Did you mean `steps`? ...
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from flipsearch.errors import ConfigError

__all__ = [
    "as_tuple",
    "check_keys",
    "coerce_fields",
    "coerce_value",
    "load_config",
    "parse_overrides",
    "read_mapping",
]

C = TypeVar("C")
ErrorClass = type[Exception]

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
NONE = ("none", "null")  # "" stays a string: `benign_context=` means no context


def parse_overrides(items: Iterable[str], *, error: ErrorClass = ConfigError) -> dict[str, str]:
    """``["lr=1e-5", "steps=10"]`` -> ``{"lr": "1e-5", "steps": "10"}``; later keys win.

    Raises:
        error: an item has no ``=`` or an empty key.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"override must look like `key=value`, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def check_keys(
    values: Mapping[str, object], known: Sequence[str], *, error: ErrorClass = ConfigError
) -> None:
    """Raise ``error`` on the first key not in ``known``, naming up to 3 close matches."""
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
            raise error(f"unknown config key `{key}`.{hint} Known keys: {', '.join(known)}")


def coerce_fields(
    cls: type, values: Mapping[str, object], *, error: ErrorClass = ConfigError
) -> dict[str, object]:
    """``values`` checked against the fields of dataclass ``cls`` and coerced to their types."""
    check_keys(values, [f.name for f in dataclasses.fields(cls)], error=error)
    hints = typing.get_type_hints(cls)
    return {key: coerce_value(key, value, hints[key], error=error) for key, value in values.items()}


def coerce_value(
    name: str, value: object, tp: object, *, error: ErrorClass = ConfigError
) -> object:
    """A YAML value or CLI string as type ``tp``: ``"1e-5"`` -> 1e-05 for float, ``"true"``
    or ``"0"`` for bool, ``"none"``/``"null"`` for optional fields, ``"a,b"`` for tuples.
    Literal values pass as they are (``__post_init__`` names the choices)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in NONE)
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(name, value, inner[0], error=error) if len(inner) == 1 else value
    if origin is Literal:
        return value
    if origin is tuple:
        if isinstance(value, str):
            items: list[object] = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise error(f"`{name}` must be a list, got {value!r}")
        item_type = args[0] if args else str
        return tuple(coerce_value(name, item, item_type, error=error) for item in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise error(f"`{name}` must be a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _to_float(value)
        if number is None or not number.is_integer():
            raise error(f"`{name}` must be an integer, got {value!r}")
        return int(number)
    if tp is float:
        number = _to_float(value)
        if number is None:
            raise error(f"`{name}` must be a number, got {value!r}")
        return number
    if tp is str and not isinstance(value, str):
        raise error(f"`{name}` must be a string, got {value!r}")
    return value


def as_tuple(value: object) -> object:
    """A comma-separated string (CLI) or a list (YAML) as a tuple of its items; anything
    else as it is, for the field's check to name."""
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip())
    if isinstance(value, list):
        return tuple(value)
    return value


def _to_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def read_mapping(path: str | Path, *, error: ErrorClass = ConfigError) -> dict[str, Any]:
    """The mapping in YAML (or JSON) file ``path``; an empty file is ``{}``.

    Raises:
        error: a missing file, invalid YAML, or a document that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"`yaml_path` must be an existing file, got {str(path)!r}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(
            f"config file {str(path)!r} must hold a mapping of options, got {type(loaded).__name__}"
        )
    return loaded


def load_config(
    cls: type[C],
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    base: Mapping[str, object] | None = None,
    error: ErrorClass = ConfigError,
    file_extras: Sequence[str] = (),
) -> C:
    """Build dataclass ``cls`` from ``base`` values, then the YAML file, then ``overrides``,
    each value coerced to its field's type.

    An error about a field the file set is prefixed with the file's path. ``file_extras``:
    keys the file may hold beside ``cls``'s fields (records written next to the config,
    such as a run folder's ``config.json``), skipped.

    Raises:
        error: a bad file (see :func:`read_mapping`), an unknown key (with close matches),
            a value that cannot be coerced, or any rule of ``cls``.
    """
    values: dict[str, object] = dict(base or {})
    loaded: dict[str, Any] = {}
    if yaml_path is not None:
        loaded = read_mapping(yaml_path, error=error)
        loaded = {k: v for k, v in loaded.items() if k not in file_extras}
        try:
            values.update(coerce_fields(cls, loaded, error=error))
        except error as exc:
            raise error(f"config file {str(yaml_path)!r}: {exc}") from exc
    values.update(coerce_fields(cls, dict(overrides or {}), error=error))
    try:
        return cls(**values)
    except error as exc:
        field = re.match(r"`(\w+)`", str(exc))
        if field and field.group(1) in loaded:
            raise error(f"config file {str(yaml_path)!r}: {exc}") from exc
        raise
