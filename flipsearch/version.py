"""The package version and, when run from a git checkout, the code commit (for provenance).

Example:
    >>> info = version_info()
    >>> sorted(info)
    ['commit', 'dirty', 'version']
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from flipsearch import __version__

__all__ = ["code_commit", "describe_version", "version_info"]

_ROOT = Path(__file__).resolve().parents[1]
"""The checkout root when running from source; ``site-packages`` when installed."""


def _git(*args: str) -> str | None:
    # None when git is missing, slow, or not answering for this folder.
    try:
        out = subprocess.run(
            ["git", "-C", str(_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def version_info() -> dict[str, object]:
    """``{"version", "commit", "dirty"}``: ``commit`` and ``dirty`` are None unless the
    imported code sits at the root of a git checkout (an installed wheel has no commit)."""
    commit = dirty = None
    # Only the checkout that holds this very code: an installed package inside some other
    # repository (a venv under a checkout) must not report that repository's commit.
    if (_ROOT / ".git").exists() and (_ROOT / "pyproject.toml").is_file():
        commit = _git("rev-parse", "HEAD")
        if commit is not None:
            status = _git("status", "--porcelain", "--untracked-files=no")
            dirty = None if status is None else bool(status)
    return {"version": __version__, "commit": commit, "dirty": dirty}


def describe_version(prog: str, version: str | None = None) -> str:
    """One line for ``--version``: ``flipsearch 0.1.0 (commit 88479f0c1d2e, modified)``."""
    info = version_info()
    head = f"{prog} {version or info['version']}"
    if info["commit"] is None:
        return head
    state = ", modified" if info["dirty"] else ""
    return f"{head} (commit {str(info['commit'])[:12]}{state})"


def code_commit() -> str | None:
    """The short commit of the running code, ``+dirty`` with uncommitted changes to tracked
    files; None for an installed package (report footers, stage records)."""
    info = version_info()
    if info["commit"] is None:
        return None
    return str(info["commit"])[:12] + ("+dirty" if info["dirty"] else "")
