"""The built-in spaces (package data read through :mod:`importlib.resources`) and
:func:`load_search_space`, which resolves a bare name to one of them or reads a path."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from flipsearch.errors import SearchSpaceError
from flipsearch.space._space import SearchSpace

if TYPE_CHECKING:
    from importlib.abc import Traversable  # importlib.resources.abc from Python 3.11

SEARCH_SPACES_DIR: Traversable = resources.files("flipsearch") / "search_spaces"
"""The built-in spaces, package data of ``flipsearch`` (bare names resolve here)."""


@dataclass(frozen=True)
class BuiltinSpace:
    """A space file shipped inside the package (``flipsearch spaces`` lists them)."""

    name: str
    resource: str
    """Its path inside the installed package, e.g. ``flipsearch/search_spaces/benign.yaml``."""
    ref: Traversable = field(repr=False)

    def load(self) -> SearchSpace:
        return SearchSpace.from_text(self.ref.read_text(encoding="utf-8"), source=str(self.ref))


def builtin_spaces() -> dict[str, BuiltinSpace]:
    """The built-in spaces by bare name, sorted (read through :mod:`importlib.resources`)."""
    if not SEARCH_SPACES_DIR.is_dir():  # a broken install: lookups then list no built-ins
        return {}
    refs = sorted(
        (r for r in SEARCH_SPACES_DIR.iterdir() if r.name.endswith(".yaml") and r.is_file()),
        key=lambda r: r.name,
    )
    return {
        r.name.removesuffix(".yaml"): BuiltinSpace(
            r.name.removesuffix(".yaml"), f"flipsearch/search_spaces/{r.name}", r
        )
        for r in refs
    }


def load_search_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space from a path, or a bare name of a built-in space (``"paper_axes"``).

    A name without a folder or suffix that is not an existing file resolves to the
    package's ``search_spaces/<name>.yaml``; anything else is read as a path.

    Raises:
        SearchSpaceError: no such file or built-in name, or the file is malformed.
    """
    path = Path(name_or_path)
    if not path.exists() and path.suffix == "" and path.parent == Path("."):
        builtins = builtin_spaces()
        if str(name_or_path) not in builtins:
            close = difflib.get_close_matches(str(name_or_path), list(builtins), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SearchSpaceError(
                f"`space` must be a search-space file or a built-in name {sorted(builtins)}, "
                f"got {str(name_or_path)!r}: no such file and no such built-in space "
                f"(`flipsearch spaces` lists them).{hint}"
            )
        return builtins[str(name_or_path)].load()
    return SearchSpace.from_yaml(path)
