"""The ``opsa-train`` parsers: shared option blocks, config building, help text."""

from __future__ import annotations

import pytest

from flipsearch.cli import build_parser
from opsa_train.cli import COMMAND_MODULES
from opsa_train.cli import main as cli_main
from opsa_train.commands.run import build_config


@pytest.fixture(scope="module")
def parser():
    return build_parser(COMMAND_MODULES, prog="opsa-train", version="0")


@pytest.mark.parametrize("command", ["run", "baseline"])
def test_run_and_baseline_build_the_same_config_from_the_same_flags(parser, tmp_path, command):
    argv = [command, "--context", "best.json", "--out", str(tmp_path / "R"), "--steps", "3"]
    argv += ["--model", "M", "--engine", "hf", "batch_size=2"]
    config = build_config(parser.parse_args(argv))
    assert (config.context_file, config.out_dir, config.steps) == (
        "best.json",
        str(tmp_path / "R"),
        3,
    )
    assert (config.model, config.engine, config.batch_size) == ("M", "hf", 2)


def test_rerunning_baseline_reads_its_own_config_json_with_the_baseline_options(parser, tmp_path):
    # A baseline's config.json records its options under `baseline` beside TrainConfig's
    # fields; a second `opsa-train baseline --out R` once failed on that key.
    import json

    from opsa_train.config import TrainConfig
    from opsa_train.loop import config_record

    out = tmp_path / "B"
    out.mkdir()
    saved = TrainConfig.cpu_default(context_file="best.json", out_dir=str(out), lr=3e-4)
    record = config_record(saved, baseline={"sampling": "greedy", "candidates": 1})
    (out / "config.json").write_text(json.dumps(record))
    config = build_config(parser.parse_args(["baseline", "--out", str(out), "--steps", "7"]))
    assert (config.lr, config.steps, config.context_file) == (3e-4, 7, "best.json")
    with pytest.raises(ValueError, match="extras must be among"):
        config_record(saved, note="x")


def test_flags_override_key_value_overrides(parser, tmp_path):
    argv = ["run", "--context", "a.json", "--out", str(tmp_path), "--steps", "5", "steps=9"]
    assert build_config(parser.parse_args(argv)).steps == 5


@pytest.mark.parametrize(
    ("command", "shown", "hidden"),
    [
        ("run", ["Example:", "hand-written"], []),
        ("eval", ["Example:", "opsa-train eval --models"], ["composite safety score"]),
        ("analyze", ["Example:"], ["the paper's Fig. 2"]),
        ("baseline", ["ThinkSafe-style", "Example:"], []),
        ("pipeline", ["state.json", "Example:"], []),
    ],
)
def test_help_shows_the_module_docstring(capsys, command, shown, hidden):
    with pytest.raises(SystemExit) as exc:
        cli_main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--engine" in out and "{auto,vllm,hf}" in out
    for text in shown:
        assert text in out, (command, text)
    for text in hidden:
        assert text not in out, (command, text)


def test_eval_passes_only_given_flags_and_zero_means_all(parser):
    from opsa_train.commands.eval import build_config as eval_config
    from opsa_train.evaluate import EvalConfig

    args = parser.parse_args(["eval", "--models", "base=M", "x", "--out", "o", "--limit", "0"])
    config = eval_config(args)
    default = EvalConfig(models={"base": "M"}, out_dir="o")
    assert config.models == {"base": "M", "m1": "x"}
    assert config.limit is None and config.engine == default.engine
    args = parser.parse_args(
        ["eval", "--models", "M", "--out", "o", "--engine", "hf", "--retention", ""]
    )
    assert eval_config(args).engine == "hf" and eval_config(args).retention_set is None
