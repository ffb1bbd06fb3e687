"""RacePruner: the Beta race against the incumbent, on hand-built Optuna studies."""

from __future__ import annotations

import math

import optuna
import pytest

from flipsearch.pruners import RacePruner, prob_at_most, prob_better


def test_prob_better_matches_closed_forms():
    # Beta(1, a) vs Beta(1, b): P(X > Y) = b / (a + b); here a = 9 (0 of 8), b = 5 (0 of 4).
    assert prob_better(0, 8, 0, 4) == pytest.approx(5 / 14, abs=1e-3)
    # Identical posteriors: one half.
    assert prob_better(3, 10, 3, 10) == pytest.approx(0.5, abs=1e-3)
    # Complementary: P(X > Y) + P(Y > X) = 1 for continuous variables.
    assert prob_better(1, 6, 5, 12) + prob_better(5, 12, 1, 6) == pytest.approx(1.0, abs=1e-3)


def test_prob_better_falls_as_evidence_of_no_flips_grows():
    values = [prob_better(0, n, 8, 24) for n in (2, 4, 8, 16)]
    assert values == sorted(values, reverse=True)
    assert values[0] > 0.2 and values[-1] < 0.01


def test_prob_at_most_is_the_beta_posterior_cdf():
    # Beta(1, n + 1) after 0 of n: P(rate <= x) = 1 - (1 - x) ** (n + 1).
    assert prob_at_most(0, 10, 0.1) == pytest.approx(1 - 0.9**11, abs=1e-9)
    assert prob_at_most(3, 6, 0.1) < 0.01 < 0.5 < prob_at_most(0, 2, 0.5)
    with pytest.raises(ValueError, match="3/2"):
        prob_at_most(3, 2, 0.1)


def test_prob_better_rejects_impossible_counts():
    with pytest.raises(ValueError, match=r"5/4"):
        prob_better(5, 4, 1, 2)


def test_race_pruner_validates_its_arguments():
    with pytest.raises(ValueError, match="`threshold`"):
        RacePruner(threshold=1.5)
    with pytest.raises(ValueError, match="`n_warmup_steps`"):
        RacePruner(n_warmup_steps=0)


def _study(incumbent_flips: int | None, n: int = 24, *, feasible: bool = True) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=RacePruner(n_warmup_steps=2))
    if incumbent_flips is not None:
        trial = study.ask()
        trial.set_user_attr("n_harmful", n)
        trial.set_user_attr("feasible", feasible)
        study.tell(trial, incumbent_flips / n)
    return study


def _running(study: optuna.Study, flips_per_step: list[int]) -> list[bool]:
    # Report the running flip rate after each prompt; collect should_prune() answers.
    trial, flips, answers = study.ask(), 0, []
    for step, f in enumerate(flips_per_step, start=1):
        flips += f
        trial.report(flips / step, step)
        answers.append(trial.should_prune())
    return answers


def test_no_incumbent_or_an_incumbent_at_zero_never_prunes():
    assert not any(_running(_study(None), [0] * 20))
    assert not any(_running(_study(0), [0] * 20))


def test_a_context_without_flips_is_stopped_against_a_strong_incumbent():
    answers = _running(_study(8), [0] * 12)
    first = answers.index(True) + 1
    # P(beat 8/24 | 0/n) < 0.1 (the default threshold) from n = 6 on (0.073); not before.
    assert first == 6
    assert prob_better(0, 5, 8, 24) >= 0.1 > prob_better(0, 6, 8, 24)


def test_a_context_that_keeps_flipping_is_not_stopped():
    assert not any(_running(_study(8), [1, 0] * 10))


def test_warm_up_steps_are_never_pruned():
    study = optuna.create_study(direction="maximize", pruner=RacePruner(n_warmup_steps=10))
    t = study.ask()
    t.set_user_attr("n_harmful", 24)
    study.tell(t, 1.0)
    answers = _running(study, [0] * 12)
    assert answers[:9] == [False] * 9 and answers[9]


def test_feasible_incumbents_come_first():
    study = _study(20, feasible=False)  # strong but over-refusing
    t = study.ask()
    t.set_user_attr("n_harmful", 24)
    t.set_user_attr("feasible", True)
    study.tell(t, 1 / 24)
    # Against 1/24 a context at 0 flips is never clearly worse.
    assert not any(_running(study, [0] * 20))
    assert not math.isnan(study.best_value)
