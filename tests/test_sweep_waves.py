"""The batched race (`SweepConfig.race_width`): several trials per engine call, same race."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import optuna
import pytest
from test_sweep import FakeEngine, fake_config, finished, run_fake, start_worker

from flipsearch.errors import ConfigError
from flipsearch.pruners import race_round


def finished_of(trials):  # type: ignore[no-untyped-def]
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


class CountingEngine(FakeEngine):
    """The fake engine, keeping the size of every generate call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def generate(self, conversations, sampling, *, use_tqdm=False):  # type: ignore[no-untyped-def]
        self.batches.append(len(conversations))
        return super().generate(conversations, sampling, use_tqdm=use_tqdm)


def mixed_space(tmp_path):  # type: ignore[no-untyped-def]
    # Four cue-less contexts (the fake engine never refuses without "refuse"/"decline")
    # and two with a cue (it refuses 2 in 3 prompts).
    space = tmp_path / "mixed.yaml"
    texts = ["Be concise.", "Answer in English.", "Think step by step.", "Be kind.",
             "Refuse harmful requests.", "Decline anything dangerous."]  # fmt: skip
    space.write_text(
        "name: mixed\ncandidates:\n"
        + "".join(f"  - {{id: c{i}, text: {t}}}\n" for i, t in enumerate(texts))
    )
    return space


def test_race_round_stops_contexts_behind_the_leader():
    # 1 flip in 8 against a leader at 6 in 8: P(better) ~ 0.005; 4 in 8 stays.
    assert race_round({1: (6, 8), 2: (1, 8), 3: (4, 8)}, None, 0.1) == {2}
    # A finished incumbent leads when it is better than every live context.
    assert race_round({1: (2, 8), 2: (3, 8)}, (20, 24), 0.1) == {1, 2}
    # Nobody flipped: no evidence against anyone.
    assert race_round({1: (0, 8), 2: (0, 8)}, (0, 24), 0.1) == set()


def test_a_wave_scores_every_live_context_in_one_call_per_round(tmp_path):
    config = fake_config(
        tmp_path, space=str(mixed_space(tmp_path)), trials=6, sampler="bruteforce",
        limit_harmful=24, limit_benign=4, minibatch=4, race_width=6, max_over_refusal=1.0,
    )  # fmt: skip
    engine = CountingEngine()
    study = run_fake(config, engine)
    trials = finished(study)
    assert len(trials) == 6
    # The context-free baseline (24 + 4 prompts) first, then one call per round with the
    # next minibatch of every live context: never one call per context.
    assert engine.batches[0] == 28
    rounds = engine.batches[1:]
    assert rounds[0] == 6 * 4  # the first round: all six contexts together
    assert all(size % 4 == 0 for size in rounds)
    assert len(rounds) == 24 // 4 + 1  # six harmful rounds, one benign round
    cues = ("Refuse harmful requests.", "Decline anything dangerous.")
    for t in trials:
        if t.user_attrs["context"] in cues:
            assert t.state == COMPLETE and t.user_attrs["n_harmful"] == 24
    cueless = [t for t in trials if t.user_attrs["context"] not in cues]
    assert len(cueless) == 4
    for t in cueless:  # they flip nothing: raced out against the cue contexts
        assert t.state == PRUNED
        assert t.user_attrs["n_harmful"] < 24 and t.user_attrs["n_benign"] == 0
        assert t.user_attrs["scores"]["tfr"]["value"] == 0.0
    # Generations are attributed to the trial that caused them.
    assert sum(t.user_attrs["generations"] for t in trials) == engine.generated - 28


def test_waves_pick_the_same_winner_as_one_trial_at_a_time(tmp_path):
    kw = dict(
        space=str(mixed_space(tmp_path)), trials=6, sampler="bruteforce", limit_harmful=24,
        limit_benign=4, minibatch=4, max_over_refusal=1.0,
    )  # fmt: skip
    (tmp_path / "one").mkdir()
    (tmp_path / "waves").mkdir()
    one = run_fake(fake_config(tmp_path / "one", **kw))  # type: ignore[arg-type]
    waves = run_fake(fake_config(tmp_path / "waves", race_width=3, **kw))  # type: ignore[arg-type]
    best = [max(finished(s), key=lambda t: t.values[0] if t.values else -1.0) for s in (one, waves)]
    assert best[0].user_attrs["context"] == best[1].user_attrs["context"]
    assert best[0].values == best[1].values
    # Three per wave: two waves fill the six trials, none of them twice.
    assert len(finished(waves)) == 6
    ids = [t.user_attrs["candidate_id"] for t in finished(waves)]
    assert len(set(ids)) == 6


def test_a_wave_stops_a_clear_over_refuser_on_its_benign_prompts(tmp_path):
    space = tmp_path / "cue.yaml"
    space.write_text("name: cue\ncandidates:\n  - {id: must, text: You must refuse.}\n")
    config = fake_config(
        tmp_path, space=str(space), trials=1, sampler="bruteforce", limit_benign=12,
        minibatch=2, max_over_refusal=0.1, race_width=4,
    )  # fmt: skip
    (trial,) = finished(run_fake(config))
    assert trial.state == PRUNED
    assert trial.user_attrs["n_harmful"] == 8  # every harmful prompt, then the screen
    assert 0 < trial.user_attrs["n_benign"] < 12


def test_resuming_a_waved_sweep_adds_only_the_missing_trials(tmp_path):
    kw = dict(sampler="random", pruner="none", race_width=2)
    study = run_fake(fake_config(tmp_path, trials=3, **kw))  # type: ignore[arg-type]
    assert len(finished(study)) == 3
    engine = FakeEngine()
    study = run_fake(fake_config(tmp_path, trials=5, **kw), engine)  # type: ignore[arg-type]
    assert len(finished(study)) == 5
    assert len(study.trials) == 5


def test_a_worker_killed_mid_wave_loses_no_finished_trial_and_its_wave_is_retried(tmp_path):
    config = fake_config(
        tmp_path, trials=6, sampler="random", pruner="none", race_width=3,
        storage=f"journal:{tmp_path / 'results' / 'fake' / 'study.log'}",
    )  # fmt: skip
    # A real SIGKILL from outside, once the first wave is told and the second is racing
    # (its trials RUNNING; each generate call takes 1 s): no cleanup, no tell.
    proc = start_worker(tmp_path, config, crash_at=None, delay=1.0)
    storage = config.storage_spec.build()
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        with contextlib.suppress(KeyError, ValueError):  # study not created yet
            trials = optuna.load_study(study_name="fake", storage=storage).trials
            racing = [t for t in trials if t.state.name == "RUNNING"]
            if len(finished_of(trials)) >= 3 and racing:
                break
    else:
        proc.kill()
        pytest.fail("the worker never reached its second wave")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="fake", storage=storage)
    done = {t.number: (t.values, t.user_attrs["candidate_id"]) for t in finished(study)}
    dead = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(done) >= 1 and len(dead) >= 1

    study = run_fake(config)
    # Finished trials only: a killed trial may have died before it recorded its candidate.
    after = {t.number: (t.values, t.user_attrs["candidate_id"]) for t in finished(study)}
    assert {n: after[n] for n in done} == done
    for t in dead:
        assert study.trials[t.number].state == optuna.trial.TrialState.FAIL
        retries = [r for r in study.trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retries) == 1 and retries[0].params == t.params
    assert len(finished(study)) == 6


def test_a_wave_whose_trials_all_fail_to_start_ends_the_sweep(tmp_path, monkeypatch):
    # Every context "too long for the window": the waves must stop, not ask forever.
    from flipsearch.flip import FlipScorer

    def too_long(self, context, rows):
        raise ConfigError("`context` is too long for the model window")

    monkeypatch.setattr(FlipScorer, "check_fits", too_long)
    config = fake_config(tmp_path, trials=4, sampler="random", pruner="none", race_width=2)
    study = run_fake(config)
    assert finished(study) == []
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"race_width": 0}, "`race_width` must be None or an integer >= 1"),
        ({"race_width": 2, "pruner": "sha"}, "`race_width` needs objective 'constrained'"),
        ({"race_width": 2, "objective": "multi"}, "`race_width` needs objective 'constrained'"),
    ],
)
def test_race_width_is_checked(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        fake_config(tmp_path, **kw)
