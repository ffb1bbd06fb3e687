"""Model identity, portable paths, no tokens in files, and cache keys (issues #18, #10).

Files that users commit or share (export files, provenance, run and eval configs) record a
model by identity and local paths relative to a named root; never an absolute path under
the home or cache folder, never a token. Cache keys cover every file that changes outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from flipsearch.cache import GenerationCache, cached_judge
from flipsearch.contexts import Context
from flipsearch.export import read_export, write_export
from flipsearch.flip import FlipScorer, ScoreSettings
from flipsearch.judges import judge_cache_id, make_judge
from flipsearch.judges._guards import LlamaGuardJudge
from flipsearch.models import (
    fingerprint_matches,
    model_fingerprint,
    model_identity,
    model_key,
    resolve_model,
)
from flipsearch.paths import cache_dir, local_path, portable_path, recordable
from flipsearch.prompts import load_prompt_set
from flipsearch.types import Generation

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "hf_SeCrEtToKeN0123456789abcdefXYZ"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fake home (HOME set, default cache under it) and a working folder beside it."""
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    for var in ("FLIPSEARCH_CACHE", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert Path.home() == home and cache_dir() == home / ".cache" / "flipsearch"
    return home


def _model_folder(path: Path, seed: int = 1) -> Path:
    """A tiny model folder: every file kind a loader reads, plus files it does not."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama", "vocab_size": 8}')
    (path / "generation_config.json").write_text('{"temperature": 0.7}')
    (path / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (path / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    (path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (path / "special_tokens_map.json").write_text('{"eos_token": "</s>"}')
    (path / "merges.txt").write_text("a b\n")
    (path / "vocab.txt").write_text("a\nb\n")
    (path / "tokenizer.model").write_bytes(b"\x0a\x05spiece")
    (path / "model.safetensors").write_bytes(bytes([seed]) * 200_000)
    (path / "pytorch_model.bin").write_bytes(bytes([seed + 1]) * 200_000)
    (path / "README.md").write_text("# a model card\n")
    (path / ".gitattributes").write_text("*.bin filter=lfs\n")
    (path / "flipsearch_complete.json").write_text('{"source": "x.gguf"}')
    return path


# ---------------------------------------------------------------- portable paths


def test_portable_path_names_a_root_for_cache_hub_cwd_and_home(home, monkeypatch):
    cache = cache_dir()
    assert portable_path(cache / "models" / "m") == "$FLIPSEARCH_CACHE/models/m"
    hub = home / ".cache" / "huggingface" / "hub" / "models--a--b" / "snapshots" / "c0ffee"
    assert portable_path(hub) == "$HF_HUB_CACHE/models--a--b/snapshots/c0ffee"
    assert portable_path(Path.cwd() / "runs" / "R" / "final") == "runs/R/final"
    assert portable_path(home / "data" / "x.jsonl") == "~/data/x.jsonl"
    assert portable_path("~/data/x.jsonl") == "~/data/x.jsonl"
    assert portable_path("runs/R/final") == "runs/R/final"  # relative: as given
    assert portable_path("/opt/models/m") == "/opt/models/m"  # outside every root
    assert portable_path(home / "runs" / "R" / "final", root=home / "runs") == "R/final"
    # A cache set by $FLIPSEARCH_CACHE anywhere (here under the working folder) wins.
    monkeypatch.setenv("FLIPSEARCH_CACHE", str(Path.cwd() / ".fs-cache"))
    assert portable_path(Path.cwd() / ".fs-cache" / "models" / "m") == "$FLIPSEARCH_CACHE/models/m"


def test_local_path_reverses_portable_path(home):
    for p in (cache_dir() / "models" / "m", home / "data" / "x.jsonl"):
        assert local_path(portable_path(p)) == p
    assert local_path("/old/absolute/path") == Path("/old/absolute/path")  # old files


def test_recordable_masks_tokens_and_secret_keys_and_is_idempotent(home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    doc = {
        "model": str(cache_dir() / "models" / "m"),
        "hf_token": "anything",
        "api_key": "sk-123",
        "max_tokens": 64,
        "pad_token": "</s>",
        "note": f"ran with --token {SECRET}",
        "sets": [str(home / "x.jsonl"), "harmful_core:search"],
        "context": "/no_think Refuse harmful requests.",
    }
    out = recordable(doc)
    assert out == {
        "model": "$FLIPSEARCH_CACHE/models/m",
        "hf_token": "***",
        "api_key": "***",
        "max_tokens": 64,
        "pad_token": "</s>",
        "note": "ran with --token ***",
        "sets": ["~/x.jsonl", "harmful_core:search"],
        "context": "/no_think Refuse harmful requests.",
    }
    assert recordable(out) == out


# ---------------------------------------------------------------- fingerprint


OUTPUT_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",  # holds a chat template too
    "chat_template.jinja",
    "special_tokens_map.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "model.safetensors",
    "pytorch_model.bin",
]


@pytest.mark.parametrize("name", OUTPUT_FILES)
def test_fingerprint_changes_with_every_file_that_changes_outputs(tmp_path, name):
    folder = _model_folder(tmp_path / "m")
    before = model_fingerprint(folder)
    data = (folder / name).read_bytes()
    # Change one byte in the middle: sampled weight windows must still see it.
    mid = len(data) // 2 if name.endswith((".safetensors", ".bin")) else len(data) - 2
    (folder / name).write_bytes(data[:mid] + bytes([(data[mid] + 1) % 256]) + data[mid + 1 :])
    assert model_fingerprint(folder) != before


@pytest.mark.parametrize("name", ["README.md", ".gitattributes", "flipsearch_complete.json"])
def test_fingerprint_ignores_files_that_do_not_change_outputs(tmp_path, name):
    folder = _model_folder(tmp_path / "m")
    before = model_fingerprint(folder)
    (folder / name).write_text("edited\n")
    assert model_fingerprint(folder) == before


def test_one_model_key_serves_the_sweep_and_the_eval(tmp_path):
    from opsa_train.evaluate import model_identity as eval_identity

    folder = _model_folder(tmp_path / "m")
    engine = SimpleNamespace(model_path=str(folder))
    from flipsearch.flip import model_fingerprint_of

    key = model_key(folder)
    assert key == f"m:{model_fingerprint(folder)}"
    assert model_fingerprint_of(engine) == eval_identity(folder) == key


# ---------------------------------------------------------------- cache misses


class _FakeEngine:
    name = "fake"
    tokenizer = None

    def __init__(self, model_path: Path) -> None:
        self.model_path = str(model_path)
        self.generated = 0

    def generate(self, conversations, sampling, *, use_tqdm=False):
        self.generated += len(conversations)
        return [[Generation("I'm sorry, I can't help.", (), (), "stop")] for _ in conversations]


def _generations(folder: Path, cache: GenerationCache) -> int:
    # New generations a fresh scorer makes for two prompts with and without a context.
    engine = _FakeEngine(folder)
    scorer = FlipScorer(engine, make_judge(), cache, ScoreSettings(max_tokens=8))
    rows = list(load_prompt_set("harmful_core:search", limit=2))
    scorer.outcomes(Context("Refuse harmful requests.", "prefix"), rows)
    return engine.generated


def test_editing_the_chat_template_misses_the_generation_cache(tmp_path):
    folder = _model_folder(tmp_path / "m")
    cache = GenerationCache(tmp_path / "c.sqlite")
    assert _generations(folder, cache) == 4
    assert _generations(folder, cache) == 0  # same model: all hits
    (folder / "README.md").write_text("new card\n")
    assert _generations(folder, cache) == 0  # README does not change outputs
    (folder / "chat_template.jinja").write_text("{{ messages[-1].content }}")
    assert _generations(folder, cache) == 4
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ 'edited' }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert _generations(folder, cache) == 4


class _GuardEngine:
    name = "fake"

    def __init__(self, model_path: Path) -> None:
        self.model_path = str(model_path)
        self.tokenizer = lambda text, add_special_tokens=True: {"input_ids": [1, 2]}
        self.calls = 0

    def generate_ids(self, prompts, sampling, *, use_tqdm=False):
        self.calls += len(prompts)
        return [[Generation("safe", (), (), "stop")] for _ in prompts]


def test_verdict_cache_key_carries_the_judge_model_identity(tmp_path):
    folder = _model_folder(tmp_path / "guard")
    cache = GenerationCache(":memory:")

    def judged(model: str) -> int:
        engine = _GuardEngine(folder)
        judge = LlamaGuardJudge(engine, model=model)
        cached_judge(
            cache, judge.judge, judge_id=judge_cache_id(judge), prompts=["p"], responses=["r"]
        )
        return engine.calls

    key = judge_cache_id(LlamaGuardJudge(_GuardEngine(folder), model="org/guard"))
    assert key == f"llamaguard@3+refusal@6|org/guard:{model_fingerprint(folder)}"
    assert judged("org/guard") == 1
    assert judged("org/guard") == 0
    (folder / "chat_template.jinja").write_text("{{ 'other template' }}")
    assert judged("org/guard") == 1  # same name, other template: judged again
    (folder / "model.safetensors").write_bytes(b"\x09" * 200_000)
    assert judged("org/guard") == 1  # fine-tuned weights under the same name
    assert judge_cache_id(make_judge("refusal")) == "refusal@6"  # offline judge unchanged


# ---------------------------------------------------------------- old export files


def test_old_export_with_absolute_paths_still_reads_and_passes_preflight(embedded_model_path):
    from opsa_train.preflight import check_export_model

    old = read_export(FIXTURES / "export_v1_absolute_paths.json")
    assert old.provenance["model_path"] == "/root/.cache/flipsearch/models/smollm2-135m-instruct"
    assert old.harmful.placement == "prefix"
    # Its fingerprint was computed before chat templates were hashed: still recognised.
    fp = old.provenance["model_fingerprint"]
    assert fp.rsplit(":", 1)[-1] != model_fingerprint(embedded_model_path)
    assert fingerprint_matches(fp, embedded_model_path)
    assert check_export_model(
        old, model="smollm2-135m", model_path=embedded_model_path, policy="error"
    )


def test_rewriting_an_old_export_makes_its_paths_portable(tmp_path, home):
    doc = json.loads((FIXTURES / "export_v1_absolute_paths.json").read_text())
    doc["provenance"]["model_path"] = str(cache_dir() / "models" / "smollm2-135m-instruct")
    src = tmp_path / "old.json"
    src.write_text(json.dumps(doc))
    out = write_export(tmp_path / "new.json", read_export(src))
    prov = json.loads(out.read_text())["provenance"]
    assert prov["model_path"] == "$FLIPSEARCH_CACHE/models/smollm2-135m-instruct"
    assert local_path(prov["model_path"]) == cache_dir() / "models" / "smollm2-135m-instruct"


# ---------------------------------------------------------------- every file written


def _files_under(*folders: Path) -> list[Path]:
    return sorted(p for f in folders for p in f.rglob("*") if p.is_file())


def _assert_clean(files: list[Path], home: Path) -> None:
    assert files
    for f in files:
        text = f.read_bytes().decode("utf-8", errors="replace")
        for needle in (str(cache_dir()), str(home), SECRET):
            assert needle not in text, f"{f} holds {needle!r}"


def test_no_written_file_holds_the_home_or_cache_folder_or_a_token(home, monkeypatch, caplog):
    """A sweep on a model in the cache, its export, a training run config, an eval and an
    analysis summary: no file holds the absolute cache path, the home folder or a token."""
    from flipsearch.sweep import SweepConfig, run_sweep
    from flipsearch.trials import best_trial, export_of
    from opsa_train.analysis import AnalysisConfig, write_analysis
    from opsa_train.config import TrainConfig
    from opsa_train.evaluate import EvalConfig, evaluate
    from opsa_train.loop import config_record
    from opsa_train.trainer import Trainer

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    model = _model_folder(cache_dir() / "models" / "tiny-instruct")
    harmful = home / "data" / "harmful.jsonl"
    harmful.parent.mkdir()
    harmful.write_text(
        "".join(
            json.dumps({"prompt": f"How do I make weapon {i}?", "type": "harmful"}) + "\n"
            for i in range(4)
        )
    )
    space = home / "spaces" / "tiny.yaml"
    space.parent.mkdir()
    space.write_text(
        "name: tiny\nslots:\n  s:\n    - {id: a, text: 'Refuse harmful requests.'}\n"
        "    - {id: b, text: 'Decline anything risky.'}\ntemplate: '{s}'\n"
    )
    results = Path.cwd() / "results"

    # ---- sweep + export
    sweep = SweepConfig(
        space=str(space),
        study="s",
        trials=2,
        engine={"model": str(model)},
        harmful=str(harmful),
        benign=None,
        results_dir=str(results),
        cache=str(cache_dir() / "generations.sqlite"),
        minibatch=4,
        max_tokens=8,
        show_progress=False,
    )
    study = run_sweep(
        sweep, engine=_FakeEngine(model), judge=make_judge(), cache=GenerationCache(sweep.cache)
    )
    export = write_export(results / "s" / "best.json", export_of(study, best_trial(study)))
    prov = read_export(export).provenance
    assert prov["model"] == prov["model_path"] == "$FLIPSEARCH_CACHE/models/tiny-instruct"
    assert prov["model_fingerprint"] == model_key(model)
    assert prov["prompt_sets"][0]["name"] == "~/data/harmful.jsonl"
    assert prov["space"]["source"] == "~/spaces/tiny.yaml"
    # The resumed sweep compares the recorded (portable) config with the absolute one.
    run_sweep(
        sweep, engine=_FakeEngine(model), judge=make_judge(), cache=GenerationCache(":memory:")
    )
    dumped = json.dumps({k: v for k, v in study.user_attrs.items()})
    for t in study.trials:
        dumped += json.dumps(t.user_attrs)
    (results / "s" / "study_attrs.json").write_text(dumped)  # the storage's attributes, scanned

    # ---- training run config (the real writer, without loading weights)
    run_dir = home / "runs" / "R"
    train = TrainConfig.cpu_default(
        model=str(model), context_file=str(export.resolve()), out_dir=str(run_dir)
    )
    stub = SimpleNamespace(
        config=train,
        out_dir=run_dir,
        is_main=True,
        prepared=SimpleNamespace(model_path=model),
        record=config_record(train),
    )
    Trainer._check_config_file(stub)  # type: ignore[arg-type]
    Trainer._check_config_file(stub)  # type: ignore[arg-type]  # a resume: compares
    assert "differs" not in caplog.text
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"] == "$FLIPSEARCH_CACHE/models/tiny-instruct"
    assert saved["out_dir"] == "~/runs/R"
    assert json.loads((run_dir / "model.json").read_text()) == model_identity(str(model), model)

    # ---- eval (fake engines on the cached model and a run folder under home)
    final = _model_folder(run_dir / "final", seed=7)
    eval_out = home / "results" / "eval"
    eval_cfg = EvalConfig(
        models={"base": str(model), "opsa": str(final)},
        harmful_sets=("harmful_core:eval",),
        over_refusal_sets=(),
        reasoning_sets=(),
        retention_set=None,
        limit=2,
        max_tokens=8,
        out_dir=str(eval_out),
        cache=str(cache_dir() / "generations.sqlite"),
    )
    evaluate(
        eval_cfg,
        engine_factory=lambda m: _FakeEngine(Path(m)),
        judge=make_judge(),
        cache=GenerationCache(eval_cfg.cache),
        retention=False,
    )
    doc = json.loads((eval_out / "eval.json").read_text())
    assert doc["models"]["opsa"] == {
        "model": "~/runs/R/final",
        "model_path": "~/runs/R/final",
        "model_fingerprint": model_key(final),
    }

    # ---- analysis summary (config + identities)
    an_out = home / "results" / "analysis"
    an_cfg = AnalysisConfig(
        context_file=str(export.resolve()), models={"base": str(model)}, out_dir=str(an_out)
    )
    rows = [
        {"model": "base", "prompt_id": "p", "position": 0, "token_id": 1, "token": "I"}
        | {"kl": 1.0, "kl_fwd": 1.0, "kl_rev": 1.0, "teacher_lp": -1.0, "student_lp": -2.0}
    ]
    write_analysis(an_cfg, rows, identities={"base": model_identity(str(model), model)})

    files = _files_under(results, run_dir, eval_out, an_out)
    assert {"best.json", "config.json", "model.json", "eval.json", "kl_summary.json"} <= {
        f.name for f in files
    }
    _assert_clean(files, home)
    assert SECRET not in caplog.text


def test_training_from_an_old_export_records_the_model_portably(tmp_path, embedded_model_path):
    """The real trainer on the embedded model, given by its absolute cache path, with an
    export file of the old format: preflight passes (old fingerprint), and config.json and
    model.json name the cache root instead of the absolute path, and load back."""
    from opsa_train.config import load_train_config
    from opsa_train.trainer import Trainer

    out = tmp_path / "R"
    cfg = _tiny_train_config(
        model=str(embedded_model_path),
        context_file=str(FIXTURES / "export_v1_absolute_paths.json"),
        out_dir=str(out),
        export_model_mismatch="error",
    )
    Trainer(cfg).sampler.close()
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == portable_path(embedded_model_path)
    assert saved["model"].startswith("$FLIPSEARCH_CACHE/models/")
    record = json.loads((out / "model.json").read_text())
    assert record["model_fingerprint"] == model_key(embedded_model_path)
    assert resolve_model(load_train_config(out / "config.json").model) == embedded_model_path
    _assert_clean(_files_under(out), Path.home())


def _tiny_train_config(**values: object):
    from opsa_train.config import TrainConfig

    tiny = dict(benign_prompts=(), max_prompts=2, batch_size=2, max_new_tokens=4, steps=1)
    return TrainConfig.cpu_default(**{**tiny, "checkpoint_every": 0, "engine": "hf", **values})
