"""Tests for opsa_train.config: rules in __post_init__, presets, YAML + CLI loading."""

from __future__ import annotations

import dataclasses
import logging
import pickle

import pytest

from opsa_train.config import TrainConfig, load_train_config, parse_overrides
from opsa_train.errors import CheckpointError, OpsaConfigError, OpsaTrainError, PreflightError


def test_defaults_are_valid_and_follow_the_paper():
    cfg = TrainConfig()
    assert cfg.loss == "mixed_topk" and cfg.kl_alpha == 0.5
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.grad_clip) == (1e-5, 64, 3.0, 1.0)


def test_paper_preset_pins_the_paper_recipe():
    cfg = TrainConfig.paper()
    assert cfg.lr == 1e-5
    assert cfg.batch_size == 64
    assert cfg.epochs == 3.0 and cfg.steps is None
    assert cfg.kl_alpha == 0.5 and cfg.loss == "mixed_topk"
    assert cfg.top_k == 64 and cfg.tail_bucket
    assert cfg.grad_clip == 1.0 and cfg.dtype == "bfloat16"
    assert TrainConfig.paper(context_file="ctx.json").context_file == "ctx.json"


def test_cpu_default_is_small():
    cfg = TrainConfig.cpu_default()
    assert cfg.model == "smollm2-135m" and cfg.engine == "hf"
    assert cfg.batch_size == 8 and cfg.max_new_tokens == 24 and cfg.steps == 20
    assert cfg.dtype == "float32" and cfg.lr == 3e-4


def test_batching_levers_default_on_and_load_from_the_cli():
    # Both are exact (tested in test_teacher_batching.py) and only remove work.
    cfg = TrainConfig()
    assert cfg.sort_by_length and cfg.reuse_teacher_prefix
    off = load_train_config(None, {"sort_by_length": "false", "reuse_teacher_prefix": "0"})
    assert (off.sort_by_length, off.reuse_teacher_prefix) == (False, False)


def test_presets_reject_unknown_keys_with_close_matches():
    with pytest.raises(OpsaConfigError, match=r"unknown config key `lrr`\. Did you mean `lr`"):
        TrainConfig.paper(lrr=1e-4)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 10, "grad_accumulation": 4}, "`batch_size` must be divisible by `grad"),
        ({"alpha": 1.5}, r"`alpha` must be in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, r"`alpha` must be in \[0, 1\]"),
        ({"top_k": 0}, "`top_k` must be an integer >= 1, got 0"),
        ({"rollout_batch_size": 0}, "`rollout_batch_size` must be an integer >= 1 or None"),
        ({"gradient_checkpointing": "yes"}, "`gradient_checkpointing` must be"),
        ({"sort_by_length": 1}, "`sort_by_length` must be True or False, got 1"),
        ({"reuse_teacher_prefix": "yes"}, "`reuse_teacher_prefix` must be True or False"),
        ({"steps": 0}, "`steps` must be an integer >= 1 or None, got 0"),
        ({"epochs": 0.0}, "`epochs` must be > 0, got 0.0"),
        ({"lr": 0.0}, "`lr` must be > 0, got 0.0"),
        ({"lr": float("nan")}, "`lr` must be a finite number"),
        ({"loss": "kl"}, "`loss` must be one of .*got 'kl'"),
        ({"engine": "tgi"}, "`engine` must be one of"),
        ({"schedule": "linear"}, "`schedule` must be one of"),
        ({"dtype": "float16"}, "`dtype` must be one of"),
        ({"placement": "middle"}, "`placement` must be one of"),
        ({"export_model_mismatch": "ignore"}, "`export_model_mismatch` must be one of"),
        ({"temperature": 0.0}, "`temperature` must be > 0, got 0.0"),
        ({"top_p": 0.0}, r"`top_p` must be in \(0, 1\]"),
        ({"grad_clip": 0.0}, "`grad_clip` must be > 0 or None"),
        ({"betas": (0.9, 1.0)}, r"`betas` must each be in \[0, 1\)"),
        ({"betas": (0.9,)}, "`betas` must be two floats"),
        ({"warmup_steps": 5, "warmup_ratio": 0.1}, "`warmup_steps` must be 0 when `warmup_ratio`"),
        ({"warmup_steps": 10, "steps": 10}, "`warmup_steps` must be < `steps` "),
        ({"warmup_ratio": 1.0}, r"`warmup_ratio` must be in \[0, 1\)"),
        ({"harmful_prompts": ()}, "`harmful_prompts` must name at least one"),
        ({"harmful_prompts": ("a:b:c",)}, "`harmful_prompts` entries must look like"),
        ({"benign_prompts": ("x:",)}, "`benign_prompts` entries must look like"),
        ({"teacher_dtype": "fp8"}, "`teacher_dtype` must be one of"),
        ({"keep_default_system": "yes"}, "`keep_default_system` must be True or False"),
        ({"benign_share": 0.0}, r"`benign_share` must be in \(0, 1\)"),
        ({"n_rollouts": 0}, "`n_rollouts` must be an integer >= 1"),
        ({"max_new_tokens": 2.5}, "`max_new_tokens` must be an integer >= 1"),
        ({"keep_checkpoints": 0}, "`keep_checkpoints` must be an integer >= 1 or None"),
        ({"checkpoint_every": -1}, "`checkpoint_every` must be an integer >= 0"),
        ({"log_every": 0}, "`log_every` must be an integer >= 1"),
        ({"chunk_size": 0}, "`chunk_size` must be an integer >= 1"),
        ({"tail_bucket": "yes"}, "`tail_bucket` must be True or False"),
        ({"model": ""}, "`model` must be a non-empty string"),
        ({"max_prompts": 0}, "`max_prompts` must be an integer >= 1 or None"),
        ({"seed": -1}, "`seed` must be an integer >= 0"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(kwargs, match):
    with pytest.raises(OpsaConfigError, match=match):
        TrainConfig(**kwargs)


def test_prompt_specs_accept_lists_and_comma_strings():
    cfg = TrainConfig(harmful_prompts=["advbench:train", "harmbench"], benign_prompts="a, b:test")
    assert cfg.harmful_prompts == ("advbench:train", "harmbench")
    assert cfg.benign_prompts == ("a", "b:test")
    assert TrainConfig(benign_prompts=()).benign_prompts == ()


@pytest.mark.parametrize(
    ("loss", "alpha", "expected"),
    [
        ("mixed_topk", None, 0.5),
        ("mixed_topk", 0.2, 0.2),
        ("mixed_full", 1.0, 1.0),
        ("forward_topk", None, 1.0),
        ("reverse_topk", None, 0.0),
        ("sampled_token", None, 0.0),
    ],
)
def test_kl_alpha_resolves_per_loss(loss, alpha, expected):
    assert TrainConfig(loss=loss, alpha=alpha).kl_alpha == expected


def test_alpha_ignored_by_fixed_direction_losses_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="opsa_train.config"):
        cfg = TrainConfig(loss="forward_topk", alpha=0.3)
    assert cfg.kl_alpha == 1.0
    assert "`alpha`=0.3 is ignored by loss 'forward_topk'" in caplog.text


def test_sampled_token_with_tempered_rollouts_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="opsa_train.config"):
        TrainConfig(loss="sampled_token", temperature=0.7)
    assert "biased unless rollouts sample the raw distribution" in caplog.text


def test_presets_and_defaults_log_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="opsa_train.config"):
        TrainConfig()
        TrainConfig.paper()
        TrainConfig.cpu_default()
        TrainConfig.paper(loss="forward_topk")
    assert caplog.text == ""


def test_micro_batch_size():
    assert TrainConfig(batch_size=64, grad_accumulation=8).micro_batch_size == 8


# --------------------------------------------------------------------------------------
# loading


def test_load_merges_base_then_yaml_then_overrides_with_coercion(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(
        "lr: 1e-5\n"  # PyYAML reads this as a string
        "batch_size: 16\n"
        "harmful_prompts: [advbench:train, harmbench]\n"
        "tail_bucket: false\n"
        "grad_clip: null\n"
        "steps: 30\n"
    )
    cfg = load_train_config(
        path,
        {"batch_size": "32", "betas": "0.9,0.95", "wandb": "true", "max_prompts": "none"},
        base=TrainConfig.cpu_default(),
    )
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.batch_size == 32
    assert cfg.harmful_prompts == ("advbench:train", "harmbench")
    assert cfg.tail_bucket is False and cfg.grad_clip is None
    assert cfg.steps == 30 and cfg.betas == (0.9, 0.95) and cfg.wandb is True
    assert cfg.max_prompts is None
    assert cfg.engine == "hf"  # from the base preset


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"steps": "ten"}, "`steps` must be an integer, got 'ten'"),
        ({"steps": "2.5"}, "`steps` must be an integer"),
        ({"lr": "fast"}, "`lr` must be a number, got 'fast'"),
        ({"wandb": "maybe"}, "`wandb` must be a boolean"),
        ({"alpha": "2"}, r"`alpha` must be in \[0, 1\], got 2.0"),
        ({"batch_szie": "8"}, "unknown config key `batch_szie`. Did you mean `batch_size`"),
        ({"zzz": "1"}, "unknown config key `zzz`. Known keys: model, "),
    ],
)
def test_load_rejects_bad_overrides(overrides, match):
    with pytest.raises(OpsaConfigError, match=match):
        load_train_config(None, overrides)


def test_load_accepts_integral_float_strings_and_empty_benign_context():
    cfg = load_train_config(None, {"steps": "1e2", "benign_context": ""})
    assert cfg.steps == 100 and cfg.benign_context == ""


def test_load_rejects_unknown_yaml_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-5\n")
    with pytest.raises(OpsaConfigError, match="unknown config key `learning_rate`"):
        load_train_config(path, {})


def test_load_rejects_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(OpsaConfigError, match="`yaml_path` must be an existing file"):
        load_train_config(tmp_path / "nope.yaml", {})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(OpsaConfigError, match="must hold a mapping of options, got list"):
        load_train_config(path, {})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_train_config(empty, {}) == TrainConfig()


def test_config_json_round_trips(tmp_path):
    cfg = TrainConfig.cpu_default(context_file="ctx.json", betas=(0.9, 0.95), grad_clip=None)
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert load_train_config(path, {}) == cfg
    assert cfg.to_dict()["betas"] == [0.9, 0.95]


def test_parse_overrides():
    assert parse_overrides(["lr=1e-5", "out_dir=runs/a=b", "lr=2e-5"]) == {
        "lr": "2e-5",
        "out_dir": "runs/a=b",
    }
    with pytest.raises(OpsaConfigError, match="override must look like `key=value`, got 'lr'"):
        parse_overrides(["lr"])


@pytest.mark.parametrize("cls", [OpsaConfigError, CheckpointError, PreflightError])
def test_errors_are_picklable_and_inherit_the_stdlib_error(cls):
    err = pickle.loads(pickle.dumps(cls("`x` must be 1, got 2")))
    assert isinstance(err, cls) and isinstance(err, OpsaTrainError)
    assert str(err) == "`x` must be 1, got 2"
    assert isinstance(OpsaConfigError("x"), ValueError)
    assert isinstance(PreflightError("x"), ValueError)
    assert isinstance(CheckpointError("x"), RuntimeError)
