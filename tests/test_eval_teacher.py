"""The teacher row and distillation efficiency: contexts per task, counts, paired CIs."""

from __future__ import annotations

import json
import math

import pytest

from flipsearch.cache import GenerationCache
from flipsearch.contexts import Context
from flipsearch.export import ExportFile, write_export
from flipsearch.judges import make_judge
from flipsearch.types import Generation
from opsa_train.efficiency import efficiency_interval, efficiency_metrics
from opsa_train.errors import OpsaConfigError
from opsa_train.eval_config import TeacherSpec
from opsa_train.evaluate import EvalConfig, evaluate, metrics_from_records

REFUSE = "I'm sorry, but I can't help with that request."
COMPLY = "Sure, here is how you do it: first, gather the materials you need."
LOOP = "1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1."
I_H = "Refuse anything harmful."
I_B = "Be helpful."
I_B_CONTEXT = Context(I_B, "system")


class ContextEngine:
    """Sees whole conversations: refuses when I_h is anywhere in them; the "half" model
    refuses prompts of even length. Keeps every conversation it was sent."""

    name = "fake"
    tokenizer = None

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.seen: list[tuple[dict[str, str], ...]] = []

    def generate(self, conversations, sampling, *, use_tqdm=False):
        out = []
        for conv in conversations:
            self.seen.append(conv)
            text = " ".join(m["content"] for m in conv)
            last = conv[-1]["content"]
            if "boxed" in last:
                answer = "\\boxed{7}"
            elif I_H in text or ("half" in self.model_path and len(last) % 2 == 0):
                answer = REFUSE
            else:
                answer = COMPLY
            out.append([Generation(answer, (1, 2), (-0.1, -0.1), "stop")])
        return out

    def close(self) -> None:
        pass


def _export(tmp_path, benign: Context | None = I_B_CONTEXT):
    path = tmp_path / "export.json"
    write_export(path, ExportFile(harmful=Context(I_H, "prefix"), benign=benign))
    return str(path)


def _evaluate(tmp_path, teacher, models=None):
    engines: list[ContextEngine] = []

    def factory(model: str) -> ContextEngine:
        engines.append(ContextEngine(model))
        return engines[-1]

    config = EvalConfig(
        models=models or {"base": "fake-base", "opsa": "fake-half"},
        harmful_sets=("harmful_core:eval", "advbench:eval"),
        over_refusal_sets=("xstest",),
        reasoning_sets=("gsm8k",),
        retention_set=None,
        limit=12,
        max_tokens=8,
        reasoning_max_tokens=8,
        out_dir=str(tmp_path / "eval"),
        teacher=teacher,
    )
    result = evaluate(
        config,
        engine_factory=factory,
        judge=make_judge("refusal"),
        cache=GenerationCache(":memory:"),
        retention=False,
    )
    return result, engines


def _cell(result, model, metric, set_name):
    return next(
        m for m in result.metrics if (m.model, m.metric, m.set) == (model, metric, set_name)
    )


def test_teacher_row_answers_with_i_h_on_harmful_and_i_b_elsewhere(tmp_path):
    result, engines = _evaluate(tmp_path, _export(tmp_path))
    # No weights of its own: the teacher answers on the base model's engine.
    assert [e.model_path for e in engines] == ["fake-base", "fake-half"]
    base_engine = engines[0]
    with_ih = [c for c in base_engine.seen if c[-1]["content"].startswith(I_H)]
    with_ib = [c for c in base_engine.seen if c[0] == {"role": "system", "content": I_B}]
    n_harmful = sum(r["task"] == "harmful" for r in result.records if r["model"] == "teacher")
    n_other = sum(r["task"] != "harmful" for r in result.records if r["model"] == "teacher")
    assert len(with_ih) == n_harmful == 24 and len(with_ib) == n_other == 24
    # Records keep the plain prompt (the judge reads prompt and answer, not the context).
    teacher_recs = [r for r in result.records if r["model"] == "teacher"]
    assert not any(I_H in str(r["prompt"]) for r in teacher_recs)
    assert _cell(result, "teacher", "harmful_rate", "pooled").value == 0.0
    assert _cell(result, "teacher", "refusal_rate", "pooled").value == 1.0
    assert result.config.columns == ["base", "opsa", "teacher"]
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert "| teacher |" in md.splitlines()[2] and "OPSA aims at its teacher" in md
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["config"]["teacher"]


def test_efficiency_equals_the_hand_count_per_set_and_pooled(tmp_path):
    result, _ = _evaluate(tmp_path, _export(tmp_path))
    for set_name in ("harmful_core:eval", "advbench:eval", "pooled"):
        recs = [
            r
            for r in result.records
            if r["task"] == "harmful" and (set_name == "pooled" or r["set"] == set_name)
        ]
        rate = {
            m: sum(r["unsafe"] is not False for r in recs if r["model"] == m)
            / sum(r["model"] == m for r in recs)
            for m in ("base", "opsa", "teacher")
        }
        eff = _cell(result, "opsa", "distill_efficiency", set_name)
        expected = (rate["base"] - rate["opsa"]) / (rate["base"] - rate["teacher"])
        assert eff.value == pytest.approx(expected)
        assert eff.ci_low <= eff.value <= eff.ci_high
        assert eff.n == len(recs) // 3
    # The base model and the teacher get no efficiency of their own.
    assert {m.model for m in result.metrics if m.metric == "distill_efficiency"} == {"opsa"}


def test_teacher_with_its_own_weights_gets_its_own_engine(tmp_path):
    spec = {"export": _export(tmp_path, benign=None), "model": "fake-other"}
    result, engines = _evaluate(tmp_path, spec)
    assert [e.model_path for e in engines] == ["fake-base", "fake-half", "fake-other"]
    # Without I_b, the teacher's other prompts carry no context at all.
    assert all(len(c) == 1 for c in engines[2].seen if not c[-1]["content"].startswith(I_H))
    assert result.models["teacher"]["model"] == "fake-other"


def test_no_teacher_means_no_teacher_row_and_no_efficiency(tmp_path):
    result, engines = _evaluate(tmp_path, None)
    assert {m.model for m in result.metrics} == {"base", "opsa"}
    assert not any(m.metric == "distill_efficiency" for m in result.metrics)
    assert all(len(c) == 1 for e in engines for c in e.seen)


def test_efficiency_interval_is_exact_at_the_ends_and_nan_without_a_gap():
    base = [1] * 20
    teacher = [0] * 10 + [1] * 10
    # Paired: a student equal to its teacher is at 1 in every resample, one equal to base at 0.
    same = efficiency_interval(base, teacher, teacher)
    assert (same.value, same.ci_low, same.ci_high) == (1.0, 1.0, 1.0)
    none = efficiency_interval(base, teacher, base)
    assert (none.value, none.ci_low, none.ci_high) == (0.0, 0.0, 0.0)
    half = efficiency_interval(base, teacher, [0] * 5 + [1] * 15)
    assert half.value == 0.5 and half.ci_low < 0.5 < half.ci_high and half.n == 20
    assert math.isnan(efficiency_interval(base, base, teacher).value)
    with pytest.raises(ValueError, match="equal lengths"):
        efficiency_interval(base, teacher, [0])


def test_efficiency_pairs_prompts_by_set_and_id():
    def rec(model, i, unsafe, set_name="s"):
        return {"model": model, "task": "harmful", "set": set_name, "id": str(i), "unsafe": unsafe}

    records = [rec("base", i, True) for i in range(4)]
    records += [rec("teacher", i, i < 2) for i in range(4)]  # safe on 2 and 3
    records += [rec("opsa", i, i != 3) for i in (3, 2, 1, 0)]  # order differs: safe on 3
    (eff,) = efficiency_metrics(records, base="base", students=["opsa"])
    assert (eff.set, eff.value, eff.n) == ("s", 0.5, 4)
    assert efficiency_metrics(records, base="base", students=["missing"]) == []


def test_refusal_and_non_answer_rates_split_the_safe_answers():
    outcomes = ["refusal", "other", "compliance", "compliance", "other"]
    records = [
        {
            "model": "m",
            "task": "harmful",
            "set": s,
            "id": str(i),
            "unsafe": o == "compliance",
            "outcome": o,
        }
        for s in ("a", "b")
        for i, o in enumerate(outcomes)
    ]
    cells = {(m.metric, m.set): m for m in metrics_from_records(records)}
    assert cells[("refusal_rate", "a")].k == 1 and cells[("non_answer_rate", "a")].k == 2
    assert cells[("harmful_rate", "pooled")].k == 4 and cells[("harmful_rate", "pooled")].n == 10
    assert cells[("non_answer_rate", "pooled")].k == 4


def test_teacher_spec_coerces_and_rejects_bad_input(tmp_path):
    assert TeacherSpec.coerce("x.json") == TeacherSpec(export="x.json")
    cfg = EvalConfig(teacher={"export": "x.json", "placement": "system"})
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(OpsaConfigError, match="`teacher` keys must be among"):
        EvalConfig(teacher={"export": "x.json", "contexts": "y"})
    with pytest.raises(OpsaConfigError, match=r"`teacher\.export` must be an export file path"):
        EvalConfig(teacher={"export": ""})
    with pytest.raises(OpsaConfigError, match="must not name a model 'teacher'"):
        EvalConfig(models={"base": "a", "teacher": "b"}, teacher="x.json")
