"""Which pipeline stages are done, and for which inputs: keyed records in ``state.json``.

A stage is done only when its record says ``done`` under the key of what it would run now:
the stage's resolved config, the digests of its inputs (model fingerprint, prompt-set
hashes, the export file, the upstream stage's key) and a stage version. Change any of them
and the key changes, so the stage reruns; the same key skips it. The record lives with the
run's working files (``runs/<run>/state.json``), never in committed ``results/``, so a
fresh clone runs every stage.

Example:
    >>> import tempfile
    >>> state = StageState(Path(tempfile.mkdtemp()))
    >>> key = stage_key("eval", 1, config={"limit": 16})
    >>> state.is_done("eval", key)
    False
    >>> state.start("eval", key)
    >>> _ = state.finish("eval", key, seconds=1.5, peak_rss_mb=900.0, info={"engine": "hf"})
    >>> state.is_done("eval", key), state.is_done("eval", stage_key("eval", 1, config={}))
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flipsearch.atomic import atomic_write_text
from opsa_train.errors import OpsaConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "EXPORT_VOLATILE",
    "STATE_FILE",
    "StageRecord",
    "StageState",
    "export_digest",
    "file_digest",
    "stage_key",
]

STATE_FILE = "state.json"
_SCHEMA_VERSION = 1


def stage_key(stage: str, version: int, **parts: object) -> str:
    """A digest of everything a stage's result depends on (canonical JSON, sha256, 16 hex).

    Args:
        stage: the stage name.
        version: bump it when the stage's code changes what it produces.
        parts: the resolved config and input digests; any JSON-serialisable values.
    """
    return _json_digest({"stage": stage, "version": version, **parts})


def _json_digest(doc: object) -> str:
    # sha256 (16 hex) of canonical JSON: sorted keys, no spaces, str() for the rest.
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (16 hex); ``"missing"`` when it does not exist."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return "missing"


EXPORT_VOLATILE = ("created", "code")
"""Provenance fields of an export file that say when and by which commit it was written."""


def export_digest(path: str | Path) -> str:
    """sha256 (16 hex) of an export file's contents without :data:`EXPORT_VOLATILE`:
    re-exporting the same contexts from the same study keeps the downstream stages' keys
    (a stage's own code changes bump its version). ``"missing"`` when it does not exist;
    a file that is not a JSON object is digested byte for byte."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing"
    except (ValueError, UnicodeDecodeError):
        return file_digest(path)
    if not isinstance(doc, dict):
        return file_digest(path)
    provenance = doc.get("provenance")
    if isinstance(provenance, dict):
        doc["provenance"] = {k: v for k, v in provenance.items() if k not in EXPORT_VOLATILE}
    return _json_digest(doc)


@dataclass(frozen=True)
class StageRecord:
    """One stage's last run: its key, whether it finished, and what it cost."""

    stage: str
    key: str
    status: str
    """``running`` (started, not finished: an interrupted run resumes it) or ``done``."""
    started_at: float
    finished_at: float | None = None
    seconds: float | None = None
    peak_rss_mb: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """Stage facts for the report: engine, dtype, trial counts, ..."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class StageState:
    """The ``state.json`` of one run folder; every change is written atomically at once."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STATE_FILE
        self.records: dict[str, StageRecord] = self._load()

    def _load(self) -> dict[str, StageRecord]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as e:
            raise OpsaConfigError(
                f"stage state {str(self.path)!r} is unreadable ({e}): delete it to rerun "
                "every stage of this run, or restore it"
            ) from e
        if not isinstance(doc, dict) or doc.get("schema_version") != _SCHEMA_VERSION:
            raise OpsaConfigError(
                f"stage state {str(self.path)!r} must have schema_version {_SCHEMA_VERSION}, "
                f"got {doc.get('schema_version') if isinstance(doc, dict) else doc!r}: "
                "delete it to rerun every stage"
            )
        return {name: StageRecord.from_dict(r) for name, r in doc.get("stages", {}).items()}

    def _save(self) -> None:
        doc = {
            "schema_version": _SCHEMA_VERSION,
            "stages": {name: asdict(r) for name, r in self.records.items()},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(doc, indent=2) + "\n")

    def get(self, stage: str) -> StageRecord | None:
        return self.records.get(stage)

    def is_done(self, stage: str, key: str) -> bool:
        """True when ``stage`` finished under exactly ``key``."""
        record = self.records.get(stage)
        return record is not None and record.status == "done" and record.key == key

    def start(self, stage: str, key: str) -> None:
        self.records[stage] = StageRecord(stage, key, "running", started_at=time.time())
        self._save()

    def finish(
        self,
        stage: str,
        key: str,
        *,
        seconds: float,
        peak_rss_mb: float | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> StageRecord:
        previous = self.records.get(stage)
        started = previous.started_at if previous and previous.key == key else time.time()
        record = StageRecord(
            stage,
            key,
            "done",
            started_at=started,
            finished_at=time.time(),
            seconds=round(seconds, 1),
            peak_rss_mb=None if peak_rss_mb is None else round(peak_rss_mb),
            info=dict(info or {}),
        )
        self.records[stage] = record
        self._save()
        return record

    def forget(self, stages: Iterable[str]) -> None:
        """Drop the records of ``stages`` (they rerun)."""
        for stage in stages:
            self.records.pop(stage, None)
        self._save()
