"""The two packages' errors: distinct names under one base, stdlib types kept, picklable."""

from __future__ import annotations

import inspect
import pickle

import pytest

import flipsearch.errors as fs_errors
import opsa_train.errors as opsa_errors
from flipsearch.errors import ConfigError, FlipsearchError
from opsa_train.errors import CheckpointError, OpsaConfigError, OpsaTrainError, PreflightError


def _classes(module) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == module.__name__
    }


def test_no_two_error_classes_share_a_name():
    fs, opsa = _classes(fs_errors), _classes(opsa_errors)
    assert "ConfigError" in fs and "OpsaConfigError" in opsa
    assert not set(fs) & set(opsa)


def test_every_error_of_both_packages_is_a_flipsearch_error():
    for cls in [*_classes(fs_errors).values(), *_classes(opsa_errors).values()]:
        assert issubclass(cls, FlipsearchError), cls


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (OpsaConfigError, (OpsaTrainError, ConfigError, ValueError)),
        (CheckpointError, (OpsaTrainError, RuntimeError)),
        (PreflightError, (OpsaTrainError, ValueError)),
    ],
)
def test_opsa_errors_keep_their_package_base_and_stdlib_type(cls, bases):
    err = pickle.loads(pickle.dumps(cls("`x` must be > 0, got -1")))
    assert type(err) is cls and str(err) == "`x` must be > 0, got -1"
    for base in bases:
        assert isinstance(err, base)


def test_one_except_clause_catches_either_packages_config_error():
    from flipsearch.engines import EngineConfig
    from opsa_train.config import TrainConfig

    for build in (lambda: EngineConfig(batch_size=0), lambda: TrainConfig(lr=-1.0)):
        with pytest.raises(ConfigError):
            build()
    with pytest.raises(OpsaConfigError):
        TrainConfig(lr=-1.0)
