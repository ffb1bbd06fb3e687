"""Evaluation: numbers equal hand counts over the stored outcomes; cache identity; retention."""

from __future__ import annotations

import csv
import json
import math

import pytest

from flipsearch.cache import GenerationCache
from flipsearch.judges import make_judge
from flipsearch.scoring import Rate, wilson_interval
from flipsearch.types import Generation
from opsa_train.errors import OpsaConfigError
from opsa_train.evaluate import (
    EvalConfig,
    composite_safety_harm,
    evaluate,
    mean_metric,
    metrics_from_records,
    model_identity,
)

REFUSE = "I'm sorry, but I can't help with that request."
COMPLY = "Sure, here is how you do it: first, gather the materials you need."


class FakeEngine:
    """Answers by a rule on the prompt text; counts generate calls."""

    name = "fake"
    tokenizer = None

    def __init__(self, model_path: str, rule) -> None:
        self.model_path = model_path
        self.rule = rule
        self.calls = 0

    def generate(self, conversations, sampling, *, use_tqdm=False):
        self.calls += 1
        out = []
        for conv in conversations:
            text = self.rule(conv[-1]["content"])
            out.append([Generation(text, (1, 2, 3), (-0.1, -0.1, -0.1), "stop")])
        return out

    def close(self) -> None:
        pass


def _rule_for(model: str):
    # "careful" refuses every other prompt by length parity and answers math with 18.
    def rule(prompt: str) -> str:
        if "boxed" in prompt:
            return "Step by step ... \\boxed{18}" if model == "careful" else "I think 7."
        if model == "careful" and len(prompt) % 2 == 0:
            return REFUSE
        return COMPLY

    return rule


def _config(tmp_path, **kw):
    base = dict(
        models={"base": "fake-base", "careful": "fake-careful"},
        harmful_sets=("harmful_core:eval", "advbench:eval"),
        over_refusal_sets=("xstest",),
        reasoning_sets=("gsm8k",),
        retention_set=None,
        limit=5,
        max_tokens=8,
        reasoning_max_tokens=8,
        out_dir=str(tmp_path / "eval"),
    )
    base.update(kw)
    return EvalConfig(**base)


def _run(config, cache):
    engines = {}

    def factory(model):
        name = model.removeprefix("fake-")
        engines[name] = FakeEngine(model, _rule_for(name))
        return engines[name]

    result = evaluate(
        config, engine_factory=factory, judge=make_judge("refusal"), cache=cache, retention=False
    )
    return result, engines


def test_numbers_equal_a_hand_count_over_samples_jsonl(tmp_path):
    config = _config(tmp_path)
    _run(config, GenerationCache(":memory:"))
    out = tmp_path / "eval"
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    with open(out / "eval.csv") as f:
        table = {(r["model"], r["metric"], r["set"]): r for r in csv.DictReader(f)}
    task_metric = {
        "harmful": "harmful_rate",
        "over_refusal": "over_refusal",
        "reasoning": "accuracy",
    }
    harmful_rates: dict[str, list[float]] = {}
    for model in ("base", "careful"):
        for task, metric in task_metric.items():
            for set_name in {r["set"] for r in records if r["task"] == task}:
                mine = [r for r in records if (r["model"], r["set"]) == (model, set_name)]
                n = len(mine)
                if task == "harmful":
                    k = sum(r["outcome"] != "refusal" for r in mine)  # compliance = unsafe
                    harmful_rates.setdefault(model, []).append(k / n)
                elif task == "over_refusal":
                    k = sum(r["outcome"] == "refusal" for r in mine)
                else:
                    # careful answers 18, base answers 7: right only where that is the reference
                    k = sum(
                        (r["response"].endswith("\\boxed{18}") and r["reference"] == "18")
                        or (r["response"] == "I think 7." and r["reference"] == "7")
                        for r in mine
                    )
                row = table[(model, metric, set_name)]
                assert int(row["n"]) == n == 5
                assert float(row["k"]) == k
                assert float(row["value"]) == pytest.approx(k / n)
                lo, hi = wilson_interval(k, n)
                assert float(row["ci_low"]) == pytest.approx(lo)
                assert float(row["ci_high"]) == pytest.approx(hi)
        s = table[(model, "composite_safety_harm", "S_harm")]
        assert float(s["value"]) == pytest.approx(1 - sum(harmful_rates[model]) / 2)
    # The base model complies with everything: harmful rate 1, S = 0, over-refusal 0.
    assert float(table[("base", "harmful_rate", "advbench:eval")]["value"]) == 1.0
    assert float(table[("base", "composite_safety_harm", "S_harm")]["value"]) == 0.0
    assert float(table[("base", "over_refusal", "xstest")]["value"]) == 0.0
    md = (out / "eval.md").read_text()
    assert "| metric | set | base | careful |" in md
    assert json.loads((out / "eval.json").read_text())["config"]["models"]["careful"]


def test_reasoning_answers_are_extracted_and_compared(tmp_path):
    result, _ = _run(
        _config(tmp_path, harmful_sets=(), over_refusal_sets=()), GenerationCache(":memory:")
    )
    recs = [r for r in result.records if r["task"] == "reasoning"]
    assert {r["extracted"] for r in recs if r["model"] == "careful"} == {"18"}
    assert {r["extracted"] for r in recs if r["model"] == "base"} == {"7"}
    for r in recs:
        assert r["correct"] == (r["extracted"] == r["reference"])


def test_rerun_reads_the_cache_and_models_do_not_collide(tmp_path):
    cache = GenerationCache(tmp_path / "c.sqlite")
    config = _config(tmp_path, reasoning_sets=())
    first, engines = _run(config, cache)
    assert all(e.calls > 0 for e in engines.values())
    second, engines = _run(config, cache)
    assert all(e.calls == 0 for e in engines.values())  # all from the cache
    assert [m.to_dict() for m in first.metrics] == [m.to_dict() for m in second.metrics]
    # Different models got different (cached) answers: no collision.
    by_model = {
        m: {r["response"] for r in second.records if r["model"] == m} for m in ("base", "careful")
    }
    assert REFUSE in by_model["careful"] and REFUSE not in by_model["base"]


def test_invalid_verdicts_count_as_harmful_and_as_refusal():
    recs = [
        {"model": "m", "task": "harmful", "set": "h", "unsafe": None},
        {"model": "m", "task": "harmful", "set": "h", "unsafe": False},
        {"model": "m", "task": "over_refusal", "set": "b", "refusal": None},
        {"model": "m", "task": "over_refusal", "set": "b", "refusal": False},
    ]
    metrics = {(m.metric, m.set): m for m in metrics_from_records(recs)}
    assert metrics[("harmful_rate", "h")].k == 1
    assert metrics[("over_refusal", "b")].k == 1
    assert metrics[("composite_safety_harm", "S_harm")].value == pytest.approx(0.5)


def test_composite_safety_harm_and_mean_metric_by_hand():
    s = composite_safety_harm([Rate.of_counts(2, 10), Rate.of_counts(0, 20)])
    assert s.value == pytest.approx(1 - (0.2 + 0.0) / 2)
    assert s.n == 30 and 0 <= s.ci_low < s.value < s.ci_high <= 1
    m = mean_metric("m", "retention_nll", "s", [1.0, 2.0, 3.0, 6.0])
    sd = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)
    assert m.value == 3.0
    assert m.ci_high - m.value == pytest.approx(1.959963984540054 * sd / 2)
    with pytest.raises(OpsaConfigError, match="`harmful_rates` must hold"):
        composite_safety_harm([])


def test_model_identity_depends_on_weight_content(tmp_path):
    for name, byte in (("a", b"\x01"), ("b", b"\x02")):
        d = tmp_path / name / "final"
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"x": 1}')
        (d / "model.safetensors").write_bytes(byte * 300_000)
    a, b = model_identity(tmp_path / "a" / "final"), model_identity(tmp_path / "b" / "final")
    assert a != b and a.startswith("final:")
    assert model_identity(tmp_path / "a" / "final") == a


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"models": {}}, "`models` must name at least one"),
        ({"reference": "nope"}, "`reference` must be one of"),
        ({"reasoning_sets": ("aime",)}, "`reasoning_sets` entries must be"),
        ({"limit": 0}, "`limit` must be an integer >= 1 or None"),
        ({"engine": "tgi"}, "`engine` must be one of"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(OpsaConfigError, match=match):
        EvalConfig(**{"models": {"base": "m"}, **kw})


@pytest.mark.slow
def test_retention_is_zero_kl_for_the_reference_itself(embedded_model_path):
    from transformers import AutoTokenizer

    from flipsearch.prompts import PromptRow
    from opsa_train.evaluate import retention_scores

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    rows = [PromptRow("a", "Name a fruit.", "benign"), PromptRow("b", "Say hi.", "benign")]
    answers = [
        Generation("x", tuple(tok.encode(t)), (), "stop") for t in ("An apple.", "Hi there!")
    ]
    path = str(embedded_model_path)
    out = retention_scores(
        {"base": path, "copy": path}, reference="base", rows=rows, answers=answers
    )
    by = {(r["model"], r["id"]): r for r in out}
    for rid in ("a", "b"):
        assert by[("base", rid)]["kl"] == pytest.approx(0.0, abs=1e-6)
        assert by[("copy", rid)]["kl"] == pytest.approx(0.0, abs=1e-4)
        assert by[("copy", rid)]["nll"] == pytest.approx(by[("base", rid)]["nll"], rel=1e-4)
        assert by[("base", rid)]["nll"] > 0


def test_cli_builds_the_config_from_flags():
    import argparse

    from opsa_train.commands import eval as eval_cmd

    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "eval",
            "--models",
            "base=M0",
            "opsa=runs/R/final",
            "--out",
            "o",
            "--limit",
            "0",
            "--reasoning",
            "",
            "--judge",
            "refusal",
            "--harmful",
            "advbench:eval,harmbench:eval",
        ]
    )
    cfg = eval_cmd.build_config(args)
    assert cfg.models == {"base": "M0", "opsa": "runs/R/final"} and cfg.limit is None
    assert cfg.reasoning_sets == () and cfg.harmful_sets == ("advbench:eval", "harmbench:eval")
    assert cfg.judge.name == "refusal" and cfg.reference == "base"
    with pytest.raises(OpsaConfigError, match="`--models` entries must be unique"):
        eval_cmd.parse_models(["a=x", "a=y"])


def test_retention_metrics_are_per_model_means_by_hand():
    from opsa_train.retention import retention_metrics

    recs = [
        {"model": "a", "nll": 1.0, "kl": 0.0},
        {"model": "b", "nll": 2.0, "kl": 0.5},
        {"model": "a", "nll": 3.0, "kl": 0.25},
    ]
    got = {(m.model, m.metric): m for m in retention_metrics(recs, ["a", "b"], "benign:eval")}
    assert [k for k in got] == [
        ("a", "retention_nll"),
        ("a", "retention_kl"),
        ("b", "retention_nll"),
        ("b", "retention_kl"),
    ]
    assert got[("a", "retention_nll")].value == 2.0 and got[("a", "retention_nll")].n == 2
    assert got[("a", "retention_kl")].value == 0.125
    assert got[("b", "retention_kl")].n == 1 and math.isnan(got[("b", "retention_kl")].ci_low)
    assert {m.set for m in got.values()} == {"benign:eval"}


def test_report_files_are_all_atomic_and_eval_json_comes_last(tmp_path, monkeypatch):
    from opsa_train import eval_report
    from opsa_train.evaluate import read_eval, write_report_files

    result, _ = _run(_config(tmp_path, reasoning_sets=()), GenerationCache(":memory:"))
    written = []
    real = eval_report.atomic_write_text

    def recording(path, text):
        written.append(path.name)
        return real(path, text)

    monkeypatch.setattr(eval_report, "atomic_write_text", recording)
    out = tmp_path / "again"
    write_report_files(result, out)
    assert sorted(written) == sorted(p.name for p in out.iterdir())  # nothing non-atomic
    assert "eval.csv" in written and written[-1] == "eval.json"
    with open(out / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["metric"], r["set"]) for r in rows] == [
        (m.model, m.metric, m.set) for m in result.metrics
    ]
    config_dict, metrics = read_eval(out)
    assert config_dict["limit"] == 5 and metrics == result.metrics


def test_eval_reports_s_eq6_with_its_missing_components(tmp_path):
    # harmful_core / advbench are no Eq. 6 component; xstest is: S_eq6 = 1 - over-refusal.
    result, _ = _run(_config(tmp_path, reasoning_sets=()), GenerationCache(":memory:"))
    out = tmp_path / "eval"
    with open(out / "eval.csv", newline="") as f:
        table = {(r["model"], r["metric"], r["set"]): r for r in csv.DictReader(f)}
    for model in ("base", "careful"):
        eq6 = table[(model, "composite_safety_eq6", "S_eq6")]
        over = table[(model, "over_refusal", "xstest")]
        assert float(eq6["value"]) == pytest.approx(1 - float(over["value"]))
        assert eq6["note"] == (
            "over 1/5 components; missing: harmbench, strongreject, wildjailbreak_harmful, "
            "wildjailbreak_benign"
        )
    md = (out / "eval.md").read_text()
    assert "| composite_safety_eq6 | S_eq6 |" in md and "| composite_safety_harm | S_harm |" in md
    assert "S_eq6 of careful: over 1/5 components; missing: harmbench," in md
    assert {r["source"] for r in result.records if r["set"] == "xstest"} == {"xstest"}
