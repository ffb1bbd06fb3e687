"""The shared field checks (flipsearch.checks, opsa_train.checks) and config coercion
(flipsearch.coerce): hand-written bad values and the exact message each must give."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from flipsearch import checks, coerce
from flipsearch.errors import ConfigError
from opsa_train import checks as opsa_checks
from opsa_train.errors import OpsaConfigError


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: checks.check_int("n", 0), "`n` must be an integer >= 1, got 0"),
        (lambda: checks.check_int("n", True), "`n` must be an integer >= 1, got True"),
        (lambda: checks.check_int("n", 2.0), "`n` must be an integer >= 1, got 2.0"),
        (lambda: checks.check_int("n", "3"), "`n` must be an integer >= 1, got '3'"),
        (lambda: checks.check_int("seed", -1, minimum=0), "`seed` must be an integer >= 0, got -1"),
        (
            lambda: checks.check_int("limit", 0, optional=True),
            "`limit` must be an integer >= 1 or None, got 0",
        ),
        (lambda: checks.check_int("limit", None), "`limit` must be an integer >= 1, got None"),
        (
            lambda: checks.check_choice("engine", "tgi", ("auto", "hf")),
            "`engine` must be one of ('auto', 'hf'), got 'tgi'",
        ),
        (
            lambda: checks.check_choice("name", "x", ["a", "b"]),
            "`name` must be one of ['a', 'b'], got 'x'",
        ),
        (
            lambda: checks.check_choice("split", "", ("train",), optional=True),
            "`split` must be one of ('train',) or None, got ''",
        ),
        (lambda: checks.check_fraction("a", 1.5), "`a` must be in [0, 1], got 1.5"),
        (lambda: checks.check_fraction("a", -0.1), "`a` must be in [0, 1], got -0.1"),
        (
            lambda: checks.check_fraction("p", 0.0, include_0=False),
            "`p` must be in (0, 1], got 0.0",
        ),
        (
            lambda: checks.check_fraction("r", 1.0, include_1=False),
            "`r` must be in [0, 1), got 1.0",
        ),
        (lambda: checks.check_fraction("a", "0.5"), "`a` must be a finite number, got '0.5'"),
        (
            lambda: checks.check_fraction("a", 2, why="1 is pure forward KL"),
            "`a` must be in [0, 1], got 2: 1 is pure forward KL",
        ),
        (lambda: checks.check_number("lr", float("nan")), "`lr` must be a finite number, got nan"),
        (lambda: checks.check_number("lr", False), "`lr` must be a finite number, got False"),
        (lambda: checks.check_number("lr", 0.0, above=0), "`lr` must be > 0, got 0.0"),
        (lambda: checks.check_number("wd", -1e-3, minimum=0), "`wd` must be >= 0, got -0.001"),
        (
            lambda: checks.check_number("clip", 0.0, above=0, optional=True, why="None: no clip"),
            "`clip` must be > 0 or None, got 0.0: None: no clip",
        ),
        (lambda: checks.check_bool("wandb", "yes"), "`wandb` must be True or False, got 'yes'"),
        (lambda: checks.check_bool("wandb", 1), "`wandb` must be True or False, got 1"),
        (lambda: checks.check_str("model", " "), "`model` must be a non-empty string, got ' '"),
        (lambda: checks.check_str("model", 3), "`model` must be a non-empty string, got 3"),
        (
            lambda: checks.check_str("ctx", 3, optional=True, allow_empty=True),
            "`ctx` must be a string or None, got 3",
        ),
    ],
)
def test_bad_values_raise_config_error_with_the_rule_and_value(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


@pytest.mark.parametrize(
    "call",
    [
        lambda: checks.check_int("n", 1),
        lambda: checks.check_int("n", None, optional=True),
        lambda: checks.check_int("seed", 0, minimum=0),
        lambda: checks.check_choice("engine", "hf", ("auto", "hf")),
        lambda: checks.check_choice("split", None, ("train",), optional=True),
        lambda: checks.check_fraction("a", 0),
        lambda: checks.check_fraction("a", 1.0),
        lambda: checks.check_fraction("p", 1.0, include_0=False),
        lambda: checks.check_number("lr", 1e-5, above=0),
        lambda: checks.check_number("clip", None, above=0, optional=True),
        lambda: checks.check_bool("wandb", False),
        lambda: checks.check_str("ctx", "", allow_empty=True),
        lambda: checks.check_str("ctx", None, optional=True),
    ],
)
def test_good_values_pass(call):
    assert call() is None


def test_each_package_gets_its_own_error_class():
    with pytest.raises(OpsaConfigError, match=r"^`top_k` must be an integer >= 1, got 0$"):
        opsa_checks.check_int("top_k", 0)
    with pytest.raises(KeyError, match="`k`"):
        checks.check_int("k", 0, error=KeyError)
    with pytest.raises(ConfigError) as caught:
        checks.check_int("k", 0)
    assert type(caught.value) is ConfigError  # flipsearch's own, not opsa_train's


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ("a", "`sets` must be a list of `name[:split]` strings, got 'a'"),
        (("a:b:c",), "`sets` entries must look like `name` or `name:split`, got 'a:b:c'"),
        ((":train",), "`sets` entries must look like `name` or `name:split`, got ':train'"),
        (("",), "`sets` entries must look like `name` or `name:split`, got ''"),
    ],
)
def test_prompt_specs_are_checked(specs, message):
    with pytest.raises(OpsaConfigError) as info:
        opsa_checks.check_prompt_specs("sets", specs)
    assert str(info.value) == message


# --------------------------------------------------------------------------------------
# coercion


@dataclass(frozen=True)
class _Opts:
    steps: int = 1
    lr: float | None = None
    sets: tuple[str, ...] = ()
    wandb: bool = False
    name: str = "x"

    def __post_init__(self) -> None:
        checks.check_int("steps", self.steps)


def test_load_config_coerces_strings_to_field_types():
    overrides = coerce.parse_overrides(["steps=1e2", "lr=null", "sets=a, b", "wandb=on"])
    assert coerce.load_config(_Opts, None, overrides) == _Opts(100, None, ("a", "b"), True)


def test_load_config_layers_base_then_file_then_overrides(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text("steps: 3\nlr: 1e-5\nname: file\n")
    cfg = coerce.load_config(_Opts, path, {"steps": "4"}, base={"name": "base", "lr": 0.1})
    assert cfg == _Opts(steps=4, lr=1e-5, name="file")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"stpes": "2"},
            "unknown config key `stpes`. Did you mean `steps`, `sets`? Known keys: steps, lr,",
        ),
        ({"steps": "2.5"}, "`steps` must be an integer, got '2.5'"),
        ({"lr": "fast"}, "`lr` must be a number, got 'fast'"),
        ({"wandb": "maybe"}, "`wandb` must be a boolean (true/false), got 'maybe'"),
        ({"sets": 3}, "`sets` must be a list, got 3"),
        ({"name": 3}, "`name` must be a string, got 3"),
    ],
)
def test_bad_overrides_raise_the_given_error(overrides, message):
    with pytest.raises(OpsaConfigError) as info:
        coerce.load_config(_Opts, None, overrides, error=OpsaConfigError)
    assert str(info.value).startswith(message)


def test_a_rule_broken_by_the_file_names_the_file(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text("steps: 0\n")
    with pytest.raises(ConfigError, match=r"o\.yaml': `steps` must be an integer >= 1, got 0"):
        coerce.load_config(_Opts, path)
    path.write_text("lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"^`steps` must be an integer >= 1, got 0$"):
        coerce.load_config(_Opts, path, {"steps": "0"})  # the override, not the file, set it
    path.write_text("- steps\n")
    with pytest.raises(ConfigError, match="must hold a mapping of options, got list"):
        coerce.load_config(_Opts, path)


def test_parse_overrides_rejects_items_without_a_key():
    assert coerce.parse_overrides(["a=b=c", "a=1"]) == {"a": "1"}
    with pytest.raises(ConfigError, match="override must look like `key=value`, got '=1'"):
        coerce.parse_overrides(["=1"])
