"""One error hierarchy for opsa_train, under flipsearch's.

``OpsaTrainError`` is a :class:`flipsearch.errors.FlipsearchError` and
:class:`OpsaConfigError` a :class:`flipsearch.errors.ConfigError`: each name says which
package raised it, and one ``except`` clause catches either package's config errors.

Every class also inherits the stdlib error it stands for, so callers that catch
``ValueError``/``RuntimeError`` keep working, and all stay picklable (data-loader
workers and multiprocessing move errors across processes).

Messages follow one form: "`name` must <rule>, got <value!r>[: why | . Do X]."

Example:
    >>> import pickle
    >>> err = pickle.loads(pickle.dumps(OpsaConfigError("`lr` must be > 0, got -1.0")))
    >>> isinstance(err, ValueError), str(err)
    (True, '`lr` must be > 0, got -1.0')
"""

from __future__ import annotations

from flipsearch.errors import ConfigError as FlipsearchConfigError
from flipsearch.errors import FlipsearchError


class OpsaTrainError(FlipsearchError):
    """Base class of every error raised by opsa_train; a :class:`FlipsearchError`, so one
    ``except FlipsearchError`` catches the errors of both packages."""


class OpsaConfigError(OpsaTrainError, FlipsearchConfigError):
    """A training-config field or a CLI override has a bad value."""


class CheckpointError(OpsaTrainError, RuntimeError):
    """A checkpoint could not be written, or is missing, incomplete or malformed."""


class PreflightError(OpsaTrainError, ValueError):
    """A check before training failed (missing context, model/export mismatch, bad data)."""
