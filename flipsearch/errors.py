"""One error hierarchy for flipsearch.

Every class also inherits the stdlib error it stands for, so callers that catch
``ValueError``/``RuntimeError`` keep working, and all stay picklable (vLLM and
Optuna move errors across processes).

Messages follow one form: "`name` must <rule>, got <value!r>[: why | . Do X]."
"""

from __future__ import annotations


class FlipsearchError(Exception):
    """Base class of every error raised by flipsearch."""


class ConfigError(FlipsearchError, ValueError):
    """A configuration field or a CLI option has a bad value."""


class ModelNotFoundError(FlipsearchError, FileNotFoundError):
    """A model name resolves to nothing usable (no folder, no hub access)."""


class PromptSetError(FlipsearchError, ValueError):
    """A prompt set is missing, empty or has a bad column."""


class JudgeError(FlipsearchError, RuntimeError):
    """A judge could not be built or run."""


class EngineError(FlipsearchError, RuntimeError):
    """A generation engine could not be built or failed to generate."""


class SearchSpaceError(FlipsearchError, ValueError):
    """A search-space YAML file is malformed."""


class ExportFileError(FlipsearchError, ValueError):
    """An export file is malformed or has an unknown schema version."""
