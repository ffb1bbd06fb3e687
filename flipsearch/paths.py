"""Portable paths and secret-free records: what files written by flipsearch may say.

Export files, provenance, reports and run configs are committed and shared, so they
never hold an absolute path of this machine's home or cache folder, nor a token. Every
writing site passes its document through :func:`recordable`, which

- rewrites each absolute local path with :func:`portable_path`: under the flipsearch
  cache as ``$FLIPSEARCH_CACHE/...``, under the Hugging Face hub cache as
  ``$HF_HUB_CACHE/...``, under the working folder as a relative path, under the home
  folder as ``~/...`` (other absolute paths, e.g. ``/data/models``, stay as they are);
- masks the values of secret-named keys (``hf_token``, ``auth_token``, ``api_key``,
  ``password``, ``secret``) and any string holding the value of a token variable
  (``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, ...).

:func:`local_path` turns a recorded path back into a local one (``$FLIPSEARCH_CACHE``,
``$HF_HUB_CACHE`` and ``~`` expand; old absolute paths stay as they are).

Example:
    >>> import os
    >>> os.environ["FLIPSEARCH_CACHE"] = "/tmp/fs-cache"
    >>> portable_path("/tmp/fs-cache/models/smollm2-135m-instruct")
    '$FLIPSEARCH_CACHE/models/smollm2-135m-instruct'
    >>> str(local_path("$FLIPSEARCH_CACHE/models/smollm2-135m-instruct"))
    '/tmp/fs-cache/models/smollm2-135m-instruct'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TypeVar

CACHE_VAR = "$FLIPSEARCH_CACHE"
HUB_VAR = "$HF_HUB_CACHE"

TOKEN_VARS: tuple[str, ...] = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_HUB_TOKEN",
    "HF_API_TOKEN",
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
)
"""Environment variables whose values never appear in a written file."""

MASK = "***"

# Keys whose values are secrets whatever they hold. A bare `token` (an analysis table's
# token text), `pad_token`, `max_tokens` do not match.
_SECRET_KEY = re.compile(
    r"(^|_)(hf|auth|access|api|hub|bearer|wandb)_?token$|(^|_)(api_?key|password|passwd|secret)$",
    re.IGNORECASE,
)

T = TypeVar("T")


def cache_dir() -> Path:
    """The root of flipsearch's caches (models, generations): ``$FLIPSEARCH_CACHE`` if set,
    else ``$XDG_CACHE_HOME/flipsearch`` (default ``~/.cache/flipsearch``)."""
    env = os.environ.get("FLIPSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "flipsearch"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as ``huggingface_hub`` finds it (``HF_HUB_CACHE``,
    ``HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``)."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _relative(path: Path, root: Path) -> str | None:
    # `path` relative to `root` (as given or with symlinks resolved), or None if outside.
    for p, r in ((path, root), (Path(os.path.realpath(path)), Path(os.path.realpath(root)))):
        try:
            return p.relative_to(r).as_posix()
        except ValueError:
            continue
    return None


def portable_path(path: str | Path, *, root: str | Path | None = None) -> str:
    """``path`` as a file may record it: relative to a named root, never under home/cache.

    Tried in order: ``root`` (relative to it), the flipsearch cache (``$FLIPSEARCH_CACHE/
    ...``), the hub cache (``$HF_HUB_CACHE/...``), the working folder (relative), the home
    folder (``~/...``). A relative path is returned as it is; so is an absolute path
    outside all of them.

    Args:
        path: a local path (absolute or relative).
        root: a folder the writing file names (e.g. the run root); tried first.
    """
    text = str(path)
    if not text.startswith(("/", "~")):
        return text  # relative (or not a path at all, e.g. "<dict>")
    p = Path(os.path.abspath(Path(text).expanduser()))
    roots: list[tuple[Path, str | None]] = []
    if root is not None:
        roots.append((Path(os.path.abspath(Path(root).expanduser())), None))
    roots += [(cache_dir(), CACHE_VAR), (hub_cache_dir(), HUB_VAR), (Path.cwd(), None)]
    for base, var in roots:
        rel = _relative(p, Path(os.path.abspath(base)))
        if rel is not None:
            if var is not None:
                return var if rel == "." else f"{var}/{rel}"
            return rel
    rel = _relative(p, Path.home())
    if rel is not None:
        return "~" if rel == "." else f"~/{rel}"
    return text


def local_path(recorded: str | Path) -> Path:
    """A recorded path made local again: ``$FLIPSEARCH_CACHE``, ``$HF_HUB_CACHE`` and ``~``
    expand; anything else (a relative path, an old absolute one) is returned as a Path."""
    text = str(recorded)
    for var, base in ((CACHE_VAR, cache_dir), (HUB_VAR, hub_cache_dir)):
        if text == var or text.startswith(var + "/"):
            return base() / text[len(var) + 1 :] if text != var else base()
    return Path(text).expanduser()


def _secrets() -> list[str]:
    # Values of token variables set now; short ones would mask ordinary words.
    return [v for v in (os.environ.get(k) for k in TOKEN_VARS) if v and len(v) >= 8]


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "~/")) and "\n" not in text and len(text) < 4096


def recordable(obj: T) -> T:
    """A copy of a JSON-like ``obj`` fit to write to a file: absolute local paths made
    portable (:func:`portable_path`), secret-named keys and token values masked.

    Idempotent: a recorded document passes through unchanged, so a config read back from
    a file compares equal to ``recordable`` of the same config.
    """
    return _clean(obj, _secrets())  # type: ignore[return-value]


def _clean(obj: object, secrets: list[str]) -> object:
    if isinstance(obj, dict):
        return {k: (MASK if _is_secret_key(k, v) else _clean(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clean(v, secrets) for v in obj)
    if isinstance(obj, str):
        for s in secrets:
            if s in obj:
                obj = obj.replace(s, MASK)
        return portable_path(obj) if _looks_like_path(obj) else obj
    return obj


def _is_secret_key(key: object, value: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key)) and isinstance(value, str)
