"""One error hierarchy for opsa_train.

Every class also inherits the stdlib error it stands for, so callers that catch
``ValueError``/``RuntimeError`` keep working, and all stay picklable (data-loader
workers and multiprocessing move errors across processes).

Messages follow one form: "`name` must <rule>, got <value!r>[: why | . Do X]."

Example:
    >>> import pickle
    >>> err = pickle.loads(pickle.dumps(ConfigError("`lr` must be > 0, got -1.0")))
    >>> isinstance(err, ValueError), str(err)
    (True, '`lr` must be > 0, got -1.0')
"""

from __future__ import annotations


class OpsaTrainError(Exception):
    """Base class of every error raised by opsa_train."""


class ConfigError(OpsaTrainError, ValueError):
    """A training-config field or a CLI override has a bad value."""


class CheckpointError(OpsaTrainError, RuntimeError):
    """A checkpoint could not be written, or is missing, incomplete or malformed."""


class PreflightError(OpsaTrainError, ValueError):
    """A check before training failed (missing context, model/export mismatch, bad data)."""
