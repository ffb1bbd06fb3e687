"""The export file: the hand-off from context search to training.

One JSON or YAML document (by file suffix)::

    schema_version: 1
    contexts:
      harmful: {text: ..., placement: system|prefix|suffix}   # I_h (required)
      benign:  {text: ..., placement: ...}                   # I_b (optional)
    scores:      {tfr: {value, k, n, ci_low, ci_high}, over_refusal: {...}, ...,
                  benign: {helpful_benign: {...}, ...}}          # I_b's, when searched
    provenance:  {model, model_path, model_fingerprint, engine, judge, prompt_sets,
                  max_tokens, study, trial, target, package_version, created,
                  benign: {study, trial, target: benign, ...}}    # I_b's, when searched

I_h comes from an I_h search (``flipsearch sweep``) and I_b, optionally, from an I_b
search (``flipsearch sweep --target benign``): ``flipsearch export --study H
--benign-study B`` writes both, each with its study's scores and provenance.

The model is recorded by identity (:func:`flipsearch.models.model_identity`: name or hub
id, ``model_path`` as ``$FLIPSEARCH_CACHE/...``, content fingerprint); the writer passes
the whole document through :func:`flipsearch.paths.recordable`, so no absolute path
under the home or cache folder and no token reaches a shared file. Files written by
older versions (absolute ``model_path``) still read.

The reader rejects unknown schema versions and malformed fields with an error that
names the file and the field.

Example:
    >>> from flipsearch.contexts import Context
    >>> ex = ExportFile(harmful=Context("Refuse harmful requests.", "prefix"))
    >>> ExportFile.from_dict(ex.to_dict(), source="<doc>").harmful.placement
    'prefix'
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flipsearch.atomic import atomic_write_text
from flipsearch.contexts import PLACEMENTS, Context
from flipsearch.errors import ExportFileError
from flipsearch.paths import local_path, recordable

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)


@dataclass(frozen=True)
class ExportFile:
    """The best context(s) of a study with their scores and provenance."""

    harmful: Context
    """I_h: the context applied to harmful prompts."""
    benign: Context | None = None
    """I_b: the context applied to benign prompts (None: benign prompts get none)."""
    scores: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, object] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def context_for(self, prompt_type: str) -> Context | None:
        """The context for a prompt of type ``harmful`` or ``benign``."""
        return self.harmful if prompt_type == "harmful" else self.benign

    def to_dict(self) -> dict[str, object]:
        contexts: dict[str, object] = {"harmful": _context_dict(self.harmful)}
        if self.benign is not None:
            contexts["benign"] = _context_dict(self.benign)
        return {
            "schema_version": self.schema_version,
            "contexts": contexts,
            "scores": self.scores,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, doc: object, *, source: str = "<dict>") -> ExportFile:
        if not isinstance(doc, dict):
            raise ExportFileError(
                f"{source}: the export file must be a mapping with `schema_version` and "
                f"`contexts`, got {_short(doc)}: a plain-text context goes to "
                "`flipsearch score --context-file`; write an export with `flipsearch export`"
            )
        version = doc.get("schema_version")
        if version is None:
            raise ExportFileError(
                f"{source}: `schema_version` must be one of {SUPPORTED_VERSIONS}, got it missing "
                f"(keys {sorted(doc)!r}): a hand-written export file needs "
                f"`schema_version: {SCHEMA_VERSION}` and "
                "`contexts: {harmful: {text, placement}}`"
            )
        if version not in SUPPORTED_VERSIONS:
            raise ExportFileError(
                f"{source}: `schema_version` must be one of {SUPPORTED_VERSIONS}, got {version!r}: "
                "written by another flipsearch version? Re-export with this one."
            )
        contexts = doc.get("contexts")
        if not isinstance(contexts, dict) or "harmful" not in contexts:
            raise ExportFileError(
                f"{source}: `contexts.harmful` is required (text + placement), got {contexts!r}"
            )
        unknown = set(contexts) - {"harmful", "benign"}
        if unknown:
            raise ExportFileError(
                f"{source}: `contexts` keys must be 'harmful' and optionally 'benign', "
                f"got {sorted(unknown)!r}"
            )
        for key in ("scores", "provenance"):
            if not isinstance(doc.get(key, {}), dict):
                raise ExportFileError(f"{source}: `{key}` must be a mapping, got {doc[key]!r}")
        return cls(
            harmful=_parse_context(contexts["harmful"], f"{source}: `contexts.harmful`"),
            benign=(
                _parse_context(contexts["benign"], f"{source}: `contexts.benign`")
                if contexts.get("benign") is not None
                else None
            ),
            scores=dict(doc.get("scores", {})),
            provenance=dict(doc.get("provenance", {})),
            schema_version=int(version),
        )


def _short(value: object, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _context_dict(ctx: Context) -> dict[str, str]:
    return {"text": ctx.text, "placement": ctx.placement}


def _parse_context(obj: object, where: str) -> Context:
    if not isinstance(obj, dict):
        raise ExportFileError(f"{where} must be a mapping with `text` and `placement`, got {obj!r}")
    text, placement = obj.get("text"), obj.get("placement", "system")
    if not isinstance(text, str) or not text.strip():
        raise ExportFileError(f"{where}.text must be a non-empty string, got {text!r}")
    if placement not in PLACEMENTS:
        raise ExportFileError(f"{where}.placement must be one of {PLACEMENTS}, got {placement!r}")
    return Context(text=text, placement=placement)


def write_export(path: str | Path, export: ExportFile) -> Path:
    """Write ``export`` as JSON or YAML (by suffix), atomically; paths portable, no tokens
    (:func:`flipsearch.paths.recordable`)."""
    path = Path(path)
    doc = export.to_dict()
    doc["provenance"] = recordable(doc["provenance"])
    doc["scores"] = recordable(doc["scores"])
    if path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def read_export(path: str | Path) -> ExportFile:
    """Read an export file (JSON or YAML).

    Raises:
        ExportFileError: missing file, syntax error, unknown schema version, bad field.
    """
    path = local_path(path)  # a recorded "~/..." or "$FLIPSEARCH_CACHE/..." path too
    if not path.is_file():
        raise ExportFileError(
            f"the export file must be an existing file, got {str(path)!r}: no such file. "
            "Write one with `flipsearch export --study S --out best.json`."
        )
    text = path.read_text()
    if not text.strip():
        raise ExportFileError(
            f"{path}: the export file must hold a JSON/YAML document, got an empty file: "
            "write it again with `flipsearch export`"
        )
    try:
        doc = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        hint = (
            "it looks like plain text: a plain-text context goes to "
            "`flipsearch score --context-file`; training needs an export file "
            "(`flipsearch export`)"
            if text.lstrip()[:1] not in ("{", "[")
            else "truncated or hand-edited? Write it again with `flipsearch export`"
        )
        raise ExportFileError(
            f"{path}: the export file must be valid {kind}, got {e}: {hint}"
        ) from e
    return ExportFile.from_dict(doc, source=str(path))


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
