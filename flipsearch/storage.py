"""Where a sweep's Optuna study lives: ``--storage`` values parsed, built and masked.

Storage specs (``--storage``):

- None: ``sqlite:///<results_dir>/<study>/study.db`` (the default);
- ``sqlite:///path.db``, ``postgresql://...``, ``mysql://...``: an Optuna ``RDBStorage``;
- ``journal:path``, or a path ending in ``.log``/``.jsonl``: a ``JournalStorage`` on a
  ``JournalFileBackend`` (append-only, fsynced; the most robust choice on one machine);
- a path ending in ``.db``/``.sqlite``/``.sqlite3``: the SQLite URL of that path.

``optuna-dashboard sqlite:///results/S/study.db`` or ``optuna-dashboard results/S/study.log``
opens either kind.

Passwords: :func:`mask_storage` is the one way a storage URL is shown or saved
(``postgresql://ana:***@db/sweeps``); the study's ``config.json`` holds that form. A URL
whose password is ``***`` connects without one, so libpq takes it from ``PGPASSWORD`` or
``~/.pgpass`` (the way to keep it off the command line in the first place).

Everything here is re-exported by :mod:`flipsearch.trials`.

Example:
    >>> parse_storage(None, results_dir="results", study="demo").url
    'sqlite:///results/demo/study.db'
    >>> parse_storage("journal:/tmp/s.log", results_dir="results", study="demo").kind
    'journal'
    >>> mask_storage("postgresql://ana:s3cret@db.lab/sweeps")
    'postgresql://ana:***@db.lab/sweeps'
"""

from __future__ import annotations

import inspect
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

import optuna
import optuna.storages.journal

from flipsearch.errors import ConfigError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

__all__ = [
    "JOURNAL_SUFFIXES",
    "MASK",
    "SQLITE_SUFFIXES",
    "StorageSpec",
    "default_storage",
    "mask_storage",
    "parse_storage",
    "redact_storage_password",
    "storage_identity",
    "study_dir",
]

JOURNAL_SUFFIXES = (".log", ".jsonl")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
_SCHEMA_RACE = re.compile(r"(?i)duplicate key|already exists")
_SCHEMA_RACE_RETRIES = 5
MASK = "***"
"""What a storage URL's password is replaced by (:func:`mask_storage`)."""
# SQLAlchemy's own URL grammar: `scheme://user:password@host...`, the password running
# to the first '@' (a literal '@' in a password must be written %40).
_USERINFO = re.compile(r"^(?P<head>[\w+.-]+://[^:/@?]*):(?P<password>[^@]*)@")
# Query parameters that carry a password to the driver (libpq, MySQL drivers).
_SECRET_KEYS = ("password", "passwd", "pwd", "sslpassword")
_SECRET_PARAMS = re.compile(rf"(?i)([?&](?:{'|'.join(_SECRET_KEYS)})=)[^&#]*")


@dataclass(frozen=True)
class StorageSpec:
    """A parsed ``--storage`` value: an RDB URL or a journal file path."""

    kind: Literal["rdb", "journal"]
    url: str
    """The RDB URL, or the journal file path."""

    def build(
        self,
        *,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        failed_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> BaseStorage:
        """The Optuna storage. Heartbeat options apply to RDB storages only (Optuna's
        journal storage has no heartbeat; :mod:`flipsearch.sweep` keeps its own)."""
        if self.kind == "journal":
            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(self.url)
            return optuna.storages.JournalStorage(backend)
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Optuna 4.9 renamed `failed_trial_callback` to `heartbeat_stale_trial_callback`.
        params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
        key = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback"
        )
        callback: dict[str, Any] = {key: failed_trial_callback} if heartbeat_interval else {}
        # Here, not at the top: SQLAlchemy takes ~0.5 s to import and journals never need it.
        from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

        for attempt in range(_SCHEMA_RACE_RETRIES + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        _connectable(self.url),
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period if heartbeat_interval else None,
                        **callback,
                    )
            except ImportError as e:
                raise ConfigError(
                    f"`storage` {mask_storage(self.url)!r} needs a database driver, got none: "
                    f"{e}. For PostgreSQL: pip install 'flipsearch[postgres]'"
                ) from None
            except (IntegrityError, ProgrammingError) as e:
                # Workers starting together on a new database race to create Optuna's
                # tables (PostgreSQL: duplicate key in pg_type, relation already exists);
                # the loser finds them made on its next try.
                if attempt == _SCHEMA_RACE_RETRIES or not _SCHEMA_RACE.search(str(e)):
                    raise ConfigError(self._refused(e)) from None
                time.sleep(0.2 * (attempt + 1))
            except (SQLAlchemyError, ValueError) as e:
                # `from None`: the driver's exception holds the connection arguments.
                raise ConfigError(self._refused(e)) from None
        raise AssertionError("unreachable")

    def _refused(self, e: Exception) -> str:
        why = redact_storage_password(str(e).splitlines()[0] if str(e) else repr(e), self.url)
        return (
            f"`storage` must be a database that accepts the connection, got "
            f"{mask_storage(self.url)!r}: {why}. Passwords can come from PGPASSWORD "
            "or ~/.pgpass instead of the URL."
        )


def mask_storage(spec: str | None) -> str | None:
    """``spec`` as it may be shown, logged or saved: any password replaced by ``***``.

    The password of an RDB URL's user info and ``password=`` style query parameters
    are masked; everything else (journal and SQLite paths included) is kept as written.
    Masking a masked URL changes nothing.

    Example:
        >>> mask_storage("postgresql://ana:s%40cret@db.lab:5432/sweeps?sslmode=require")
        'postgresql://ana:***@db.lab:5432/sweeps?sslmode=require'
        >>> mask_storage("journal:results/s/study.log")
        'journal:results/s/study.log'
    """
    if spec is None or "://" not in spec:
        return spec
    out = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", spec, count=1)
    return _SECRET_PARAMS.sub(lambda m: f"{m[1]}{MASK}", out)


def redact_storage_password(text: str, spec: str | None) -> str:
    """``text`` (a driver's error message, say) with ``spec``'s passwords replaced by
    ``***``, as written and URL-decoded."""
    if not spec or "://" not in spec:
        return text
    found = [m["password"] for m in [_USERINFO.match(spec)] if m]
    found += [v.split("=", 1)[1] for v in (m[0] for m in _SECRET_PARAMS.finditer(spec))]
    for secret in sorted({p for s in found for p in (s, unquote(s))}, key=len, reverse=True):
        if secret and secret != MASK:
            text = text.replace(secret, MASK)
    return text


def storage_identity(spec: str | None) -> str | None:
    """``spec`` with any password dropped: one database's URL compares equal whether its
    password is written in it, masked, or left to ``PGPASSWORD``/``.pgpass``."""
    return None if spec is None else _connectable(mask_storage(spec))  # type: ignore[arg-type]


def _connectable(url: str) -> str:
    # A masked password (a URL read back from config.json) is dropped, so the driver
    # connects without one: libpq then reads PGPASSWORD or ~/.pgpass.
    if "://" not in url:
        return url
    m = _USERINFO.match(url)
    if m and m["password"] == MASK:
        url = f"{m['head']}@{url[m.end() :]}"
    base, sep, query = url.partition("?")
    if not sep:
        return url
    kept = [
        kv
        for kv in query.split("&")
        if not (kv.split("=", 1)[0].lower() in _SECRET_KEYS and kv.split("=", 1)[-1] == MASK)
    ]
    return f"{base}?{'&'.join(kept)}" if kept else base


def study_dir(results_dir: str | Path, study: str) -> Path:
    """``<results_dir>/<study>``: config, storage, pool, plots and summary of a study."""
    return Path(results_dir) / study


def default_storage(results_dir: str | Path, study: str) -> str:
    """The default storage URL: SQLite in the study folder."""
    return f"sqlite:///{study_dir(results_dir, study) / 'study.db'}"


def parse_storage(spec: str | None, *, results_dir: str | Path, study: str) -> StorageSpec:
    """Parse a ``--storage`` value (see the module docstring).

    Raises:
        ConfigError: the value is neither a known URL scheme nor a journal/SQLite path.
    """
    if spec is None or spec == "":
        return StorageSpec("rdb", default_storage(results_dir, study))
    if spec.startswith("journal:"):
        path = spec.removeprefix("journal:")
        if not path:
            raise ConfigError(f"`storage` must name a file after 'journal:', got {spec!r}")
        return StorageSpec("journal", path)
    scheme = spec.split("://", 1)[0].split("+", 1)[0] if "://" in spec else None
    if scheme is not None:
        if scheme not in _RDB_SCHEMES:
            raise ConfigError(
                f"`storage` must be an RDB URL with scheme in {_RDB_SCHEMES}, 'journal:PATH' or "
                f"a .log/.jsonl/.db path, got {mask_storage(spec)!r}"
            )
        return StorageSpec("rdb", spec)
    suffix = Path(spec).suffix.lower()
    if suffix in JOURNAL_SUFFIXES:
        return StorageSpec("journal", spec)
    if suffix in SQLITE_SUFFIXES:
        return StorageSpec("rdb", f"sqlite:///{spec}")
    raise ConfigError(
        f"`storage` must be an RDB URL (sqlite:///..., postgresql://...), 'journal:PATH' or a "
        f"path ending in {JOURNAL_SUFFIXES + SQLITE_SUFFIXES}, got {spec!r}"
    )
