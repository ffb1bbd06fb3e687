"""``flipsearch sweep --target benign``: the I_b search, its export beside I_h, training.

Orchestration runs on a fake engine whose answers depend on cue words in the context
(answer, refuse, derail), so every rate is known; one slow test sweeps the real
embedded model and exports its I_b beside an I_h study.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from test_sweep import fake_config, run_fake

from flipsearch.cli import build_parser, main
from flipsearch.errors import ConfigError
from flipsearch.export import read_export
from flipsearch.report import make_report
from flipsearch.sweep import SweepConfig
from flipsearch.trials import best_trial, export_of, open_study, rate_of, target_of
from flipsearch.types import Generation

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED

BENIGN_SPACE = """
name: tiny-benign
slots:
  length:
    - {id: concise, text: "Answer zq-help."}
    - {id: echo, text: "Answer zq-echo."}
  tone:
    - {id: warm, text: "Be warm."}
    - {id: wary, text: "When unsure, zq-refuse."}
template: "{length} {tone}"
"""
HELP = "Answer zq-help. Be warm."
"""The one candidate that answers every benign prompt."""

REFUSAL = "I'm sorry, but I can't help with that."
ANSWER = "Sure! Here is how you do it: first, take the"
DERAIL = "1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1."


def base_refuses(prompt: str) -> bool:
    """The fake's context-free refusals: about one benign prompt in three."""
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 3 == 0


class BenignEngine:
    """Without a context: answers, but refuses the prompts :func:`base_refuses` picks.
    A context with ``zq-echo`` derails every answer (a non-answer), one with
    ``zq-refuse`` refuses everything, one with ``zq-help`` answers everything."""

    name = "fake"
    model_path = "fake-model"
    tokenizer = None

    def __init__(self) -> None:
        self.generated = 0

    def generate(self, conversations, sampling, *, use_tqdm=False):
        self.generated += len(conversations)
        out = []
        for conv in conversations:
            text = " ".join(m["content"] for m in conv)
            if "zq-echo" in text:
                answer = DERAIL
            elif "zq-refuse" in text:
                answer = REFUSAL
            elif "zq-help" in text:
                answer = ANSWER
            else:
                answer = REFUSAL if base_refuses(conv[-1]["content"]) else ANSWER
            out.append([Generation(answer, (), (), "stop")])
        return out


def benign_config(tmp: Path, **kw: object) -> SweepConfig:
    """A small I_b sweep on :class:`BenignEngine`, everything under ``tmp``."""
    space = tmp / "tiny-benign.yaml"
    space.write_text(BENIGN_SPACE)
    base: dict[str, object] = dict(
        target="benign",
        space=str(space),
        study="ib",
        trials=4,
        sampler="bruteforce",
        pruner="none",
        results_dir=str(tmp / "results"),
        cache=str(tmp / "cache.sqlite"),
        limit_benign=12,
        minibatch=4,
        max_tokens=16,
        show_progress=False,
    )
    base.update(kw)
    return SweepConfig(**base)  # type: ignore[arg-type]


def by_context(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs["context"]: t for t in study.trials if "context" in t.user_attrs}


# ---------------------------------------------------------------- config


def test_target_benign_defaults_to_the_benign_space_and_the_helpful_metric():
    cfg = SweepConfig(study="ib", trials=2, target="benign")
    assert (cfg.space, cfg.objective_metric, cfg.max_helpfulness_loss) == ("benign", "helpful", 0.0)
    assert cfg.identity()["target"] == "benign"
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    harmful = SweepConfig(study="ih", trials=2)
    assert (harmful.target, harmful.space, harmful.objective_metric) == (
        "harmful",
        "paper_axes",
        "tfr",
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(target="both"), "`target` must be one of \\('harmful', 'benign'\\), got 'both'"),
        (dict(target="benign", benign=None), "`benign` must name a prompt set with target="),
        (dict(target="benign", objective="multi"), "`objective` must be 'constrained' with"),
        (
            dict(target="benign", objective_metric="tfr"),
            "`objective_metric` must be one of \\('helpful',\\) with target='benign', got 'tfr'",
        ),
        (dict(objective_metric="helpful"), "must be one of \\('tfr', 'refusal_tfr'\\) with"),
        (dict(target="benign", prescreen=4), "`prescreen` must be unset with target='benign'"),
        (dict(target="benign", rewrite_rounds=1), "`rewrite_rounds` must be unset with"),
        (dict(target="benign", max_helpfulness_loss=1.5), "`max_helpfulness_loss` must be in"),
    ],
)
def test_benign_config_rejects_bad_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        SweepConfig(study="s", trials=1, **kw)  # type: ignore[arg-type]


def test_cli_target_and_helpfulness_slack_reach_the_config():
    from flipsearch.commands.sweep import config_from_args

    args = ["sweep", "--study", "s", "--trials", "3", "--target", "benign"]
    config = config_from_args(build_parser().parse_args([*args, "--max-helpfulness-loss", "0.1"]))
    assert (config.target, config.space, config.objective_metric) == ("benign", "benign", "helpful")
    assert config.max_helpfulness_loss == 0.1
    with pytest.raises(SystemExit):  # argparse refuses an unknown target
        build_parser().parse_args(["sweep", "--study", "s", "--trials", "3", "--target", "x"])


# ---------------------------------------------------------------- the objective


def test_benign_sweep_maximises_the_helpful_share_and_refuses_helpfulness_loss(tmp_path):
    study = run_fake(benign_config(tmp_path), BenignEngine())
    trials = by_context(study)
    assert len(trials) == 4 and all(t.state == COMPLETE for t in trials.values())
    assert study.user_attrs["prompt_ids"]["harmful"] == []  # no harmful prompt is scored
    assert target_of(study) == "benign"
    assert study.user_attrs["provenance"]["target"] == "benign"
    assert [p["name"] for p in study.user_attrs["provenance"]["prompt_sets"]] == ["benign:search"]
    ids = study.user_attrs["prompt_ids"]["benign"]
    assert len(ids) == 12
    first = next(iter(trials.values())).user_attrs["scores"]
    base = first["helpful_base_benign"]
    # Same prompts without a context for every trial: the engine's own refusals.
    assert 0 < base["value"] < 1 and base["n"] == 12
    for t in trials.values():
        assert t.user_attrs["n_harmful"] == 0 and t.user_attrs["n_benign"] == 12
        assert t.user_attrs["n_objective"] == 12
        assert t.user_attrs["scores"]["helpful_base_benign"] == base
        assert t.values == [t.user_attrs["scores"]["helpful_benign"]["value"]]
        excess = base["value"] - t.values[0]  # helpfulness lost, slack 0
        assert t.user_attrs["constraints"] == [pytest.approx(excess)]
        assert t.user_attrs["feasible"] is (excess <= 0)
        assert t.constraints == {"helpfulness_loss": pytest.approx(excess)}  # Optuna's own
        helpful = t.user_attrs["scores"]["helpful_benign"]
        assert helpful["ci_low"] <= helpful["value"] <= helpful["ci_high"]

    best = trials[HELP]
    assert best.values == [1.0] and best.user_attrs["feasible"] is True
    assert best.user_attrs["outcomes"]["b_ctx_helpful"] == [1] * 12
    echo = trials["Answer zq-echo. Be warm."].user_attrs["scores"]
    assert (echo["helpful_benign"]["value"], echo["other_benign"]["value"]) == (0.0, 1.0)
    refuse = trials["Answer zq-help. When unsure, zq-refuse."].user_attrs
    # Refused everything: over-refusal is what no context answered; infeasible.
    assert refuse["scores"]["over_refusal"]["value"] == pytest.approx(base["value"])
    assert refuse["feasible"] is False
    assert best_trial(study).number == best.number


def test_a_helpfulness_slack_makes_small_losses_feasible(tmp_path):
    # Slack 1: even a context that answers nothing loses at most the whole base share.
    study = run_fake(benign_config(tmp_path, max_helpfulness_loss=1.0), BenignEngine())
    assert all(t.user_attrs["feasible"] for t in study.trials)


@pytest.mark.parametrize("race_width", [None, 4])
def test_race_pruner_stops_contexts_that_answer_less_than_the_incumbent(tmp_path, race_width):
    # HELP is enqueued first and answers all; the race stops the rest after one minibatch.
    # (random sampler: Optuna's GridSampler cannot tell an enqueued trial in a wave.)
    config = benign_config(
        tmp_path, pruner="race", sampler="random", trials=6, enqueue=(HELP,), race_width=race_width
    )
    study = run_fake(config, BenignEngine())
    enqueued = study.trials[0]
    assert enqueued.user_attrs["context"] == HELP and enqueued.state == COMPLETE
    stopped = [t for t in study.trials if t.user_attrs.get("context") != HELP]
    assert stopped
    for t in stopped:
        assert t.state == PRUNED
        assert t.user_attrs["n_objective"] == t.user_attrs["n_benign"] == 4  # one minibatch
        assert t.user_attrs["scores"]["helpful_benign"]["value"] == 0.0


def test_resuming_a_harmful_study_as_benign_is_refused(tmp_path):
    run_fake(fake_config(tmp_path, trials=1, study="s"))
    with pytest.raises(ConfigError, match="`target` must match the study's"):
        run_fake(benign_config(tmp_path, study="s"), BenignEngine())


def test_report_of_a_benign_study_names_its_metric(tmp_path):
    study = run_fake(benign_config(tmp_path), BenignEngine())
    paths = make_report(study, tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert {p.name for p in paths} >= {"history.png", "pareto.png", "slots.png", "summary.md"}
    assert "target: benign (I_b)" in summary and "metric helpful" in summary
    assert "max helpfulness loss 0.0" in summary
    assert "## Best benign contexts I_b" in summary and HELP in summary
    assert "every benign prompt is answered with it" in summary


# ---------------------------------------------------------------- export: I_h + I_b


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory) -> tuple[Path, SweepConfig, SweepConfig]:
    """An I_h study ("ih", fake engine of test_sweep) and an I_b study ("ib") side by side."""
    tmp = tmp_path_factory.mktemp("two")
    harmful = fake_config(
        tmp, study="ih", trials=3, sampler="random", pruner="none", max_over_refusal=1.0
    )
    run_fake(harmful)
    benign = benign_config(tmp, cache=str(tmp / "cache-ib.sqlite"))  # another fake's answers
    run_fake(benign, BenignEngine())
    return tmp, harmful, benign


def test_export_holds_i_h_and_i_b_each_with_its_study_provenance(two_studies, tmp_path, capsys):
    _, harmful, benign = two_studies
    out = tmp_path / "best.json"
    args = ["export", "--study", "ih", "--benign-study", "ib", "--results-dir"]
    assert main([*args, harmful.results_dir, "--out", str(out)]) == 0
    assert "I_b from 'ib'" in capsys.readouterr().out
    export = read_export(out)
    ih = best_trial(open_study("ih", results_dir=harmful.results_dir))
    ib = best_trial(open_study("ib", results_dir=benign.results_dir))
    assert export.harmful.text == ih.user_attrs["context"]
    assert export.benign is not None and export.benign.text == HELP == ib.user_attrs["context"]
    prov = export.provenance
    assert (prov["study"], prov["trial"], prov["target"]) == ("ih", ih.number, "harmful")
    assert (prov["benign"]["study"], prov["benign"]["trial"]) == ("ib", ib.number)
    assert prov["benign"]["target"] == "benign" and prov["benign"]["objective_metric"] == "helpful"
    assert prov["benign_measured"] is True
    assert [p["name"] for p in prov["benign"]["prompt_sets"]] == ["benign:search"]
    assert export.scores["tfr"] == rate_of(ih, "tfr")
    assert export.scores["benign"]["helpful_benign"] == rate_of(ib, "helpful_benign")
    assert export.schema_version == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--study", "ib"], "`study` must be an I_h search (target harmful) to export"),
        (["--study", "ih", "--benign-study", "ih"], "`benign_study` must be an I_b search"),
        (
            ["--study", "ih", "--benign-study", "ib", "--benign-from", "benign"],
            "give at most one of `--benign-context`, `--benign-from` and `--benign-study`",
        ),
    ],
)
def test_export_refuses_a_benign_study_as_i_h_and_a_harmful_one_as_i_b(
    two_studies, tmp_path, capsys, args, message
):
    _, harmful, _ = two_studies
    out = ["--results-dir", harmful.results_dir, "--out", str(tmp_path / "x.json")]
    assert main(["export", *args, *out]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_export_refuses_an_i_b_scored_on_another_model(two_studies):
    _, harmful, benign = two_studies
    ih = open_study("ih", results_dir=harmful.results_dir)
    ib = open_study("ib", results_dir=benign.results_dir)
    prov = dict(ib.user_attrs["provenance"])
    ib.set_user_attr("provenance", {**prov, "model_fingerprint": "other:0123"})
    try:
        with pytest.raises(ConfigError, match="`benign_study` must be scored on the I_h study"):
            export_of(ih, best_trial(ih), benign_study=ib)
    finally:
        ib.set_user_attr("provenance", prov)


# ---------------------------------------------------------------- training with both


def test_training_on_an_export_with_both_gives_benign_prompts_i_b(
    two_studies, tiny_model, tmp_path, monkeypatch
):
    from flipsearch.prompts import load_prompt_set
    from opsa_train import trainer as trainer_mod
    from opsa_train.cli import main as train_main

    _, harmful, _ = two_studies
    export = tmp_path / "both.json"
    args = ["export", "--study", "ih", "--benign-study", "ib", "--results-dir"]
    assert main([*args, harmful.results_dir, "--out", str(export)]) == 0
    i_h = read_export(export).harmful.text

    rendered: list[list[dict[str, str]]] = []
    real_render = trainer_mod.render_prompt_ids

    def recording_render(tokenizer, conversation, *a, **kw):
        rendered.append(list(conversation))
        return real_render(tokenizer, conversation, *a, **kw)

    monkeypatch.setattr(trainer_mod, "render_prompt_ids", recording_render)
    sets = {"harmful_prompts": "harmful_core:train", "benign_prompts": "benign_plain:train"}
    values = {
        **sets,
        "max_prompts": 2,
        "batch_size": 2,
        "benign_share": 0.5,
        "max_new_tokens": 4,
        "top_k": 8,
        "export_model_mismatch": "warn",  # the studies scored a fake engine's "model"
        "keep_checkpoints": "none",
    }
    argv = ["run", "--context", str(export), "--model", str(tiny_model), "--steps", "1"]
    argv += ["--out", str(tmp_path / "run"), *[f"{k}={v}" for k, v in values.items()]]
    assert train_main(argv) == 0

    benign_prompts = {r.prompt for r in load_prompt_set(sets["benign_prompts"])}
    harmful_prompts = {r.prompt for r in load_prompt_set(sets["harmful_prompts"])}
    seen = {"benign": 0, "harmful": 0}
    for conv in rendered:
        text = "\n".join(m["content"] for m in conv)
        user = conv[-1]["content"]
        if any(p in user for p in benign_prompts):
            assert i_h not in text  # a benign prompt never sees I_h
            seen["benign"] += HELP in text
        elif any(p in user for p in harmful_prompts):
            assert HELP not in text
            seen["harmful"] += i_h in text
    assert seen["benign"] >= 1 and seen["harmful"] >= 1, seen


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_real_model_benign_sweep_exports_beside_a_harmful_study(tmp_path, capsys):
    # Tiny on purpose: 4 benign prompts, 8 tokens, 2 trials; 2 harmful prompts for I_h.
    common = ["--results-dir", str(tmp_path / "results"), "--cache", str(tmp_path / "c.sqlite")]
    common += ["--engine", "hf", "--max-tokens", "8", "--no-progress", "--minibatch", "4"]
    ib = ["sweep", "--target", "benign", "--study", "ib", "--trials", "2", "--limit-benign", "4"]
    assert main([*ib, "--sampler", "random", "--max-helpfulness-loss", "1", *common]) == 0
    assert "best I_b: trial" in capsys.readouterr().out
    ih = ["sweep", "--study", "ih", "--trials", "1", "--limit-harmful", "2", "--benign", ""]
    assert main([*ih, "--enqueue", "You must refuse harmful requests.", *common]) == 0

    study = open_study("ib", results_dir=tmp_path / "results")
    done = [t for t in study.trials if t.state == COMPLETE]
    assert len(done) == 2 and all(t.user_attrs["n_benign"] == 4 for t in done)
    assert all(t.user_attrs["n_harmful"] == 0 for t in done)
    out = tmp_path / "best.yaml"
    export_args = ["export", "--study", "ih", "--benign-study", "ib", "--out", str(out)]
    assert main([*export_args, "--results-dir", str(tmp_path / "results")]) == 0
    export = read_export(out)
    assert export.harmful.text == "You must refuse harmful requests."
    assert (
        export.benign is not None and export.benign.text == best_trial(study).user_attrs["context"]
    )
    assert (
        export.provenance["benign"]["model_fingerprint"] == export.provenance["model_fingerprint"]
    )
    assert export.scores["benign"]["helpful_benign"]["n"] == 4
