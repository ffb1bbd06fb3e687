"""The paper's protocol in `opsa-train eval`: avg@k reasoning, per-task judges, WildJailbreak
and GPQA sets feeding S_eq6. Fake engines and judges; fixture files in the real formats."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flipsearch.cache import GenerationCache
from flipsearch.judges import JudgeConfig, make_judge
from flipsearch.types import Generation, Verdict
from opsa_train.commands.eval import build_config
from opsa_train.errors import OpsaConfigError
from opsa_train.evaluate import EvalConfig, evaluate

SHARED = Path(__file__).parent / "fixtures" / "shared"
REFUSE = "I'm sorry, but I can't help with that request."
COMPLY = "Sure, here is how you do it: first, gather the materials you need."


class SamplingEngine:
    """Answers reasoning prompts with one letter per sample, (sample + prompt length) mod 4;
    refuses safety prompts of even length. Records every Sampling it is asked for."""

    name = "fake"
    tokenizer = None

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.samplings: list = []

    def generate(self, conversations, sampling, *, use_tqdm=False):
        self.samplings.append(sampling)
        out = []
        for conv in conversations:
            prompt = conv[-1]["content"]
            if "boxed" in prompt:
                texts = [f"\\boxed{{{'ABCD'[(j + len(prompt)) % 4]}}}" for j in range(sampling.n)]
            else:
                texts = [REFUSE if len(prompt) % 2 == 0 else COMPLY]
            out.append([Generation(t, (1,), (-0.1,), "stop") for t in texts])
        return out

    def close(self) -> None:
        pass


def _run(tmp_path, monkeypatch, judge=None, shared=SHARED, **kw):
    monkeypatch.setenv("FLIPSEARCH_SHARED_DATA", str(shared))
    base = dict(
        models={"base": "fake-base"},
        harmful_sets=("wildjailbreak",),
        over_refusal_sets=("wildjailbreak",),
        reasoning_sets=("gpqa_diamond",),
        retention_set=None,
        limit=None,
        max_tokens=8,
        reasoning_max_tokens=8,
        out_dir=str(tmp_path / "eval"),
    )
    base.update(kw)
    config = EvalConfig(**base)
    engines: list[SamplingEngine] = []

    def factory(model):
        engines.append(SamplingEngine(model))
        return engines[-1]

    result = evaluate(
        config,
        engine_factory=factory,
        judge=judge if judge is not None else (None if "judges" in kw else make_judge("refusal")),
        cache=GenerationCache(":memory:"),
        retention=False,
    )
    return result, engines


def _gpqa_answers() -> list[str]:
    from flipsearch.prompts import load_prompt_set

    return [r.answer or "" for r in load_prompt_set(str(SHARED / "gpqa" / "gpqa_diamond.csv")).rows]


def test_avg_at_k_samples_k_answers_and_averages_the_share_right(tmp_path, monkeypatch):
    result, engines = _run(tmp_path, monkeypatch, reasoning_samples=4, reasoning_temperature=0.6)
    sampled = [s for s in engines[0].samplings if not s.greedy]
    assert [(s.n, s.temperature, s.seed) for s in sampled] == [(4, 0.6, 0)]
    assert all(s.n == 1 for s in engines[0].samplings if s.greedy)  # safety answers greedy
    recs = [r for r in result.records if r["task"] == "reasoning"]
    shares = []
    for rec, answer in zip(recs, _gpqa_answers(), strict=True):
        letters = [t[-2] for t in rec["sample_responses"]]  # "\boxed{X}"
        assert rec["samples"] == 4 and len(letters) == 4
        assert rec["n_correct"] == sum(letter == answer for letter in letters) == 1
        shares.append(rec["n_correct"] / 4)
    (acc,) = [m for m in result.metrics if m.metric == "accuracy"]
    assert acc.value == pytest.approx(sum(shares) / len(shares)) and acc.n == 3
    assert acc.note == "avg@4, T=0.6"
    assert 0.0 <= acc.ci_low <= acc.value <= acc.ci_high <= 1.0
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert "reasoning avg@4 at T=0.6" in md


def test_greedy_stays_the_default_and_scores_a_wilson_rate(tmp_path, monkeypatch):
    result, engines = _run(tmp_path, monkeypatch)
    assert all(s.greedy for s in engines[0].samplings)
    (acc,) = [m for m in result.metrics if m.metric == "accuracy"]
    recs = [r for r in result.records if r["task"] == "reasoning"]
    assert "samples" not in recs[0] and acc.note is None
    assert acc.k == sum(r["correct"] for r in recs)


def test_sampling_options_are_checked_and_reach_the_config_from_the_cli():
    with pytest.raises(OpsaConfigError, match="`reasoning_temperature` must be > 0"):
        EvalConfig(reasoning_samples=8)
    with pytest.raises(OpsaConfigError, match="`reasoning_samples` must be an integer >= 1"):
        EvalConfig(reasoning_samples=0, reasoning_temperature=0.6)
    import argparse

    from opsa_train.commands.eval import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "eval",
            "--models",
            "base=smollm2-135m",
            "--out",
            "o",
            "--reasoning-samples",
            "8",
            "--reasoning-temperature",
            "0.6",
            "--harmful-judge",
            "llamaguard",
            "--over-refusal-judge",
            "wildguard",
        ]
    )
    cfg = build_config(args)
    assert (cfg.reasoning_samples, cfg.reasoning_temperature) == (8, 0.6)
    assert {t: j.name for t, j in cfg.judges.items()} == {
        "harmful": "llamaguard",
        "over_refusal": "wildguard",
    }
    assert cfg.judge_for("harmful").resolved_model == "meta-llama/Llama-Guard-3-8B"
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg


def test_wildjailbreak_and_gpqa_sets_feed_eq6_and_accuracy(tmp_path, monkeypatch, shared_data):
    # The real HarmBench / StrongREJECT / XSTest files beside the fixture WildJailbreak / GPQA.
    both = tmp_path / "shared"
    both.mkdir()
    for folder in (*shared_data.iterdir(), *SHARED.iterdir()):
        if folder.is_dir() and not (both / folder.name).exists():
            (both / folder.name).symlink_to(folder)
    result, _ = _run(
        tmp_path,
        monkeypatch,
        shared=both,
        harmful_sets=("harmbench:eval", "strongreject:eval", "wildjailbreak"),
        over_refusal_sets=("xstest", "wildjailbreak"),
        limit=4,
    )
    by_key = {(m.metric, m.set): m for m in result.metrics}
    eq6 = by_key[("composite_safety_eq6", "S_eq6")]
    rates = [
        by_key[("harmful_rate", s)].value
        for s in ("harmbench:eval", "strongreject:eval", "wildjailbreak")
    ] + [by_key[("over_refusal", s)].value for s in ("xstest", "wildjailbreak")]
    assert eq6.value == pytest.approx(1 - sum(rates) / 5)
    assert eq6.note == "over 5/5 components (complete)"
    wj = [r for r in result.records if r["set"] == "wildjailbreak"]
    assert {r["task"] for r in wj} == {"harmful", "over_refusal"}
    assert len([r for r in wj if r["task"] == "harmful"]) == 3  # the fixture's harmful rows


class FakeGuard:
    """A model judge stand-in: calls everything unsafe, records when its engine closes."""

    version = "1"

    class _Engine:
        name = "fake-vllm"

        def __init__(self, log):
            self.log = log

        def close(self):
            self.log.append("close")

    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.engine = self._Engine(log)
        self.log = log

    def judge(self, prompts, responses):
        self.log.append(f"judge {self.name} {len(prompts)}")
        return [Verdict("compliance", True, "unsafe", f"{self.name}@1") for _ in prompts]


def test_per_task_judges_are_built_in_turn_and_recorded(tmp_path, monkeypatch):
    log: list[str] = []
    real_build = JudgeConfig.build

    def build(self, engine=None):
        log.append(f"build {self.name}")
        return real_build(self) if self.name == "refusal" else FakeGuard(self.name, log)

    monkeypatch.setattr(JudgeConfig, "build", build)
    result, _ = _run(tmp_path, monkeypatch, judges={"harmful": "llamaguard"})
    # The guard reads harmful answers only; the offline judge (the default) over-refusal.
    assert log == ["build llamaguard", "judge llamaguard 3", "close", "build refusal"]
    harmful = [r for r in result.records if r["task"] == "harmful"]
    benign = [r for r in result.records if r["task"] == "over_refusal"]
    assert {r["judge"] for r in harmful} == {"llamaguard@1"}
    assert all(r["unsafe"] is True for r in harmful)
    assert {str(r["judge"]).split("@")[0] for r in benign} == {"refusal"}
    doc = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert doc["judges"]["harmful"] == {
        "name": "llamaguard",
        "model": "meta-llama/Llama-Guard-3-8B",
        "engine": "fake-vllm",
        "engine_config": "auto",
        "id": "llamaguard@1",
        "reads": "answer",
    }
    assert doc["judges"]["over_refusal"]["name"] == "refusal"
    assert doc["judges"]["over_refusal"]["engine"] == "offline"
    assert doc["judges"]["over_refusal"]["model"] is None
    assert doc["config"]["judges"]["harmful"]["name"] == "llamaguard"
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert "harmful `llamaguard` (meta-llama/Llama-Guard-3-8B, fake-vllm)" in md


def test_a_judge_mapping_passed_in_reads_each_task(tmp_path, monkeypatch):
    log: list[str] = []
    guard = FakeGuard("wildguard", log)
    result, _ = _run(
        tmp_path, monkeypatch, judge={"harmful": make_judge("refusal"), "over_refusal": guard}
    )
    assert log == ["judge wildguard 2"]  # the fixture's two benign WildJailbreak prompts
    over = [m for m in result.metrics if m.metric == "over_refusal"]
    assert [m.value for m in over] == [0.0]  # "compliance" everywhere: no refusal
    with open(tmp_path / "eval" / "eval.csv", newline="") as f:
        rows = {(r["metric"], r["set"]): r for r in csv.DictReader(f)}
    assert rows[("over_refusal", "wildjailbreak")]["value"] == "0.0"


def test_judges_config_rejects_unknown_tasks():
    with pytest.raises(OpsaConfigError, match="`judges` keys must be among"):
        EvalConfig(judges={"reasoning": "refusal"})


def test_a_local_gpqa_file_is_a_reasoning_set_and_an_unknown_format_is_refused(
    tmp_path, monkeypatch
):
    from opsa_train.eval_generate import load_items

    gpqa = str(SHARED / "gpqa" / "gpqa_diamond.csv")
    result, _ = _run(tmp_path, monkeypatch, reasoning_sets=(gpqa,))
    recs = [r for r in result.records if r["task"] == "reasoning"]
    assert [r["reference"] for r in recs] == _gpqa_answers()
    assert all(r["correct"] == (r["extracted"] == r["reference"]) for r in recs)
    other = tmp_path / "q.csv"
    other.write_text("prompt,type\nWhat is 2+2?,benign\n")
    cfg = EvalConfig(harmful_sets=(), over_refusal_sets=(), reasoning_sets=(str(other),))
    with pytest.raises(OpsaConfigError, match="must be in a known answer format"):
        load_items(cfg)
    with pytest.raises(OpsaConfigError, match="`reasoning_sets` entries must be one of"):
        EvalConfig(reasoning_sets=("mmlu",))
