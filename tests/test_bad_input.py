"""The bad-input catalogue (docs/BAD_INPUT.md): one test per row.

Each case builds a tiny bad input under ``tmp_path``, calls the API that reads it and
asserts the error class and a message naming the file, field and value. CLI cases
also run the command in-process and assert exit status 2 with a one-line ``error:``
message (no traceback). Cases marked ``keep`` check that files already written
(outputs, exports, checkpoints, run configs) are byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flipsearch.errors import (
    ConfigError,
    ExportFileError,
    JudgeError,
    ModelNotFoundError,
    PromptSetError,
    SearchSpaceError,
)
from opsa_train.errors import CheckpointError, OpsaConfigError, PreflightError

GOOD_EXPORT = {
    "schema_version": 1,
    "contexts": {"harmful": {"text": "Refuse harmful requests.", "placement": "prefix"}},
    "scores": {},
    "provenance": {},
}


@dataclass
class Case:
    """One catalogue row: ``setup(tmp)`` writes files and returns ``(call, argv)``."""

    id: str
    error: type[Exception]
    match: str  # literal parts of the message, in order, separated by " ~ "
    setup: Callable[[Path], tuple[Callable[[], object], list[str] | None]]
    cli: str | None = None  # "flipsearch" or "opsa-train"
    keep: tuple[str, ...] = field(default=())  # files (relative to tmp) that must not change


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _export(tmp: Path, doc: object = None, name: str = "best.json") -> Path:
    return _write(tmp / name, json.dumps(GOOD_EXPORT if doc is None else doc))


# ---- export files -----------------------------------------------------------------------


def _export_no_schema(tmp: Path):
    from opsa_train.preflight import read_context_file

    doc = {"contexts": {"harmful": {"text": "Refuse.", "placement": "system"}}}
    path = _export(tmp, doc, "hand.json")
    argv = ["run", "--context", str(path), "--out", str(tmp / "run"), "--dry-run"]
    return (lambda: read_context_file(path)), argv


def _plain_text_as_export(tmp: Path):
    from opsa_train.preflight import read_context_file

    path = _write(tmp / "context.txt", "Refuse harmful requests.\n")
    argv = ["run", "--context", str(path), "--out", str(tmp / "run"), "--dry-run"]
    return (lambda: read_context_file(path)), argv


def _score_result_as_context(tmp: Path):
    # A `flipsearch score --out` result is JSON but not an export file.
    from flipsearch.commands._common import read_context

    doc = {"context": {"text": "Refuse.", "placement": "system"}, "scores": {}, "cache": {}}
    path = _write(tmp / "score.json", json.dumps(doc))
    argv = ["score", "--context-file", str(path), "--harmful", "nope"]
    return (lambda: read_context(None, str(path), None)), argv


def _yaml_plain_text_export(tmp: Path):
    from flipsearch.export import read_export

    path = _write(tmp / "best.yaml", "Refuse harmful requests.\n")
    return (lambda: read_export(path)), None


def _export_schema_2(tmp: Path):
    from flipsearch.export import read_export

    path = _export(tmp, {**GOOD_EXPORT, "schema_version": 2})
    return (lambda: read_export(path)), None


def _export_truncated(tmp: Path):
    from flipsearch.commands._common import read_context

    text = json.dumps(GOOD_EXPORT)
    path = _write(tmp / "best.json", text[: len(text) // 2])
    argv = ["score", "--context-file", str(path), "--harmful", "nope"]
    return (lambda: read_context(None, str(path), None)), argv


def _export_bad_placement(tmp: Path):
    from flipsearch.export import read_export

    doc = json.loads(json.dumps(GOOD_EXPORT))
    doc["contexts"]["harmful"]["placement"] = "middle"
    path = _export(tmp, doc)
    return (lambda: read_export(path)), None


def _export_empty_text(tmp: Path):
    from flipsearch.export import read_export

    doc = json.loads(json.dumps(GOOD_EXPORT))
    doc["contexts"]["harmful"]["text"] = "  "
    path = _export(tmp, doc)
    return (lambda: read_export(path)), None


def _export_missing(tmp: Path):
    from flipsearch.export import read_export

    path = tmp / "nope.json"
    return (lambda: read_export(path)), None


def _export_no_study(tmp: Path):
    # `flipsearch export` for a study that does not exist must leave --out alone.
    from flipsearch.trials import open_study

    _export(tmp)
    db = tmp / "none.db"
    argv = ["export", "--study", "s", "--storage", str(db), "--out", str(tmp / "best.json")]
    return (lambda: open_study("s", storage=str(db), results_dir=tmp)), argv


# ---- context file / flags ------------------------------------------------------------------


def _empty_context_file(tmp: Path):
    from flipsearch.commands._common import read_context

    path = _write(tmp / "context.txt", "\n")
    argv = ["score", "--context-file", str(path)]
    return (lambda: read_context(None, str(path), None)), argv


def _context_and_file(tmp: Path):
    from flipsearch.commands._common import read_context

    path = _write(tmp / "context.txt", "Refuse.")
    argv = ["score", "--context", "Refuse.", "--context-file", str(path)]
    return (lambda: read_context("Refuse.", str(path), None)), argv


def _bad_placement_flag(tmp: Path):
    from flipsearch.commands._common import read_context

    argv = ["score", "--context", "Refuse.", "--placement", "middle"]
    return (lambda: read_context("Refuse.", None, "middle")), argv


# ---- prompt files ----------------------------------------------------------------------------


def _prompt_case(name: str, text: str):
    def setup(tmp: Path):
        from flipsearch.prompts import load_prompt_set

        path = _write(tmp / name, text)
        argv = ["score", "--context", "Refuse.", "--harmful", str(path)]
        return (lambda: load_prompt_set(str(path))), argv

    return setup


def _unknown_prompt_set(tmp: Path):
    from flipsearch.prompts import load_prompt_set

    argv = ["score", "--context", "Refuse.", "--harmful", "harmful_cor"]
    return (lambda: load_prompt_set("harmful_cor")), argv


# ---- search spaces ----------------------------------------------------------------------------


def _space_case(text: str):
    def setup(tmp: Path):
        from flipsearch.space import load_search_space

        path = _write(tmp / "space.yaml", text)
        return (lambda: load_search_space(path)), None

    return setup


# ---- pipeline config (configs/demo.yaml) -------------------------------------------------------


def _pipeline_case(extra: str):
    def setup(tmp: Path):
        from opsa_train.pipeline import load_pipeline_config

        _write(tmp / "results" / "demo" / "pipeline.json", '{"run": "demo"}\n')
        text = f"run: demo\nresults_dir: {tmp / 'results'}\nruns_dir: {tmp / 'runs'}\n{extra}"
        path = _write(tmp / "demo.yaml", text)
        return (lambda: load_pipeline_config(path)), ["pipeline", "--config", str(path)]

    return setup


# ---- training YAML and overrides ---------------------------------------------------------------


def _train_yaml_case(text: str):
    def setup(tmp: Path):
        from opsa_train.config import load_train_config

        path = _write(tmp / "train.yaml", text)
        argv = ["run", "--config", str(path), "--out", str(tmp / "run"), "--dry-run"]
        return (lambda: load_train_config(path)), argv

    return setup


def _bad_override(tmp: Path):
    from opsa_train.config import load_train_config

    argv = ["run", "--out", str(tmp / "run"), "--dry-run", "lr=abc"]
    return (lambda: load_train_config(None, {"lr": "abc"})), argv


# ---- model folders -------------------------------------------------------------------------


def _model_without_config(tmp: Path):
    from opsa_train.config import TrainConfig
    from opsa_train.trainer import prepare

    model = tmp / "model"
    _write(model / "tokenizer.json", "{}")
    export = _export(tmp)
    cfg = TrainConfig(model=str(model), context_file=str(export), out_dir=str(tmp / "run"))
    argv = ["run", "--context", str(export), "--model", str(model), "--out", str(tmp / "run")]
    return (lambda: prepare(cfg)), [*argv, "--dry-run"]


def _unknown_model(tmp: Path):
    from flipsearch.models import resolve_model

    return (lambda: resolve_model("not-a-model")), None


# ---- judge input / output ------------------------------------------------------------------------


def _judge_case(text: str):
    def setup(tmp: Path):
        from flipsearch.judges import judge_file, make_judge

        inp = _write(tmp / "rows.jsonl", text)
        out = _write(tmp / "verdicts.jsonl", '{"refusal": true}\n')
        argv = ["judge", "--input", str(inp), "--out", str(out)]
        return (lambda: judge_file(inp, out, make_judge("refusal"))), argv

    return setup


# ---- checkpoints and run folders ------------------------------------------------------------


def _tiny_checkpoint(tmp: Path) -> tuple[Path, object]:
    import torch

    from opsa_train.checkpoint import save_checkpoint

    model = torch.nn.Linear(4, 4)
    return save_checkpoint(tmp / "run", step=1, model=model, rng_state={}), model


def _truncated_checkpoint(tmp: Path):
    from opsa_train.checkpoint import load_checkpoint

    folder, model = _tiny_checkpoint(tmp)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    return (lambda: load_checkpoint(folder, model=model)), None  # type: ignore[arg-type]


def _unfinished_checkpoint(tmp: Path):
    from opsa_train.checkpoint import load_checkpoint

    folder, model = _tiny_checkpoint(tmp)
    (folder / "complete.json").unlink()
    return (lambda: load_checkpoint(folder, model=model)), None  # type: ignore[arg-type]


def _run_folder_of_other_model(tmp: Path):
    from opsa_train.config import TrainConfig
    from opsa_train.trainer import prepare

    export = _export(tmp)
    run = tmp / "run"
    for name in ("model-a", "model-b"):  # config.json only: the check runs before weights load
        _write(tmp / name / "config.json", "{}")
    old = TrainConfig(model=str(tmp / "model-a"), context_file=str(export), out_dir=str(run))
    _write(run / "config.json", old.to_json() + "\n")
    _write(run / "checkpoints.jsonl", '{"step": 2, "path": "checkpoints/step-2"}\n')
    new = TrainConfig(model=str(tmp / "model-b"), context_file=str(export), out_dir=str(run))
    argv = ["run", "--out", str(run), "--model", str(tmp / "model-b"), "--resume"]
    return (lambda: prepare(new)), argv


CASES = [
    # export files
    Case(
        "export-no-schema-version",
        PreflightError,
        "`schema_version` must be one of (1,), got it missing",
        _export_no_schema,
        "opsa-train",
    ),
    Case(
        "export-is-plain-text",
        PreflightError,
        "context.txt: the export file must be valid JSON",
        _plain_text_as_export,
        "opsa-train",
    ),
    Case(
        "context-file-is-score-json",
        ExportFileError,
        "score.json: `schema_version` must be one of (1,), got it missing "
        "(keys ['cache', 'context', 'scores'])",
        _score_result_as_context,
        "flipsearch",
    ),
    Case(
        "export-yaml-plain-text",
        ExportFileError,
        "best.yaml: the export file must be a mapping with `schema_version` and `contexts`, "
        "got 'Refuse harmful requests.'",
        _yaml_plain_text_export,
    ),
    Case(
        "export-schema-version-2",
        ExportFileError,
        "`schema_version` must be one of (1,), got 2",
        _export_schema_2,
    ),
    Case(
        "export-truncated",
        ExportFileError,
        "best.json: the export file must be valid JSON",
        _export_truncated,
        "flipsearch",
    ),
    Case(
        "export-bad-placement",
        ExportFileError,
        "`contexts.harmful`.placement must be one of ('system', 'prefix', 'suffix'), got 'middle'",
        _export_bad_placement,
    ),
    Case(
        "export-empty-text",
        ExportFileError,
        "`contexts.harmful`.text must be a non-empty string, got '  '",
        _export_empty_text,
    ),
    Case("export-missing", ExportFileError, "nope.json': no such file", _export_missing),
    Case(
        "export-unknown-study",
        ConfigError,
        "`study` must name a sweep with a storage, got 's'",
        _export_no_study,
        "flipsearch",
        ("best.json",),
    ),
    # context flags
    Case(
        "context-file-empty",
        ConfigError,
        "`--context-file` must hold the context text, got an empty file",
        _empty_context_file,
        "flipsearch",
    ),
    Case(
        "context-and-context-file",
        ConfigError,
        "give exactly one of `--context TEXT` and `--context-file F`, got --context='Refuse.'",
        _context_and_file,
        "flipsearch",
    ),
    Case(
        "placement-flag",
        ConfigError,
        "`placement` must be one of ('system', 'prefix', 'suffix'), got 'middle'",
        _bad_placement_flag,
        "flipsearch",
    ),
    # prompt files
    Case(
        "prompts-empty-file",
        PromptSetError,
        "empty.jsonl` must have at least one row, got an empty file",
        _prompt_case("empty.jsonl", ""),
        "flipsearch",
    ),
    Case(
        "prompts-duplicate-ids",
        PromptSetError,
        "`id` must be unique in ~ dup.jsonl, got 'a1' in rows 0 and 2",
        _prompt_case(
            "dup.jsonl",
            '{"id": "a1", "prompt": "x", "type": "harmful"}\n'
            '{"id": "a2", "prompt": "y", "type": "harmful"}\n'
            '{"id": "a1", "prompt": "z", "type": "harmful"}\n',
        ),
        "flipsearch",
    ),
    Case(
        "prompts-no-prompt-column",
        PromptSetError,
        "must have a column 'prompt', got columns ['goal', 'type']",
        _prompt_case("p.jsonl", '{"goal": "x", "type": "harmful"}\n'),
        "flipsearch",
    ),
    Case(
        "prompts-bad-type",
        PromptSetError,
        "`type` must be one of ~ got 'maybe' ( ~ p.jsonl row 0)",
        _prompt_case("p.jsonl", '{"prompt": "x", "type": "maybe"}\n'),
        "flipsearch",
    ),
    Case(
        "prompts-bad-json-line",
        PromptSetError,
        "p.jsonl` line 2 must be a JSON object, got 'not json",
        _prompt_case("p.jsonl", '{"prompt": "x", "type": "harmful"}\nnot json\n'),
        "flipsearch",
    ),
    Case(
        "prompts-empty-prompt",
        PromptSetError,
        "`prompt` must be non-empty, got ' ' in",
        _prompt_case("p.jsonl", '{"prompt": " ", "type": "harmful"}\n'),
        "flipsearch",
    ),
    Case(
        "prompts-unknown-set",
        PromptSetError,
        "got 'harmful_cor'; known sets:",
        _unknown_prompt_set,
        "flipsearch",
    ),
    # search spaces
    Case(
        "space-yaml-syntax",
        SearchSpaceError,
        "space.yaml: must be valid YAML, got a syntax error at line 2, column 14: "
        "mapping values are not allowed here",
        _space_case("candidates:\n  - text: Say: no\n"),
    ),
    Case(
        "space-unknown-key",
        SearchSpaceError,
        "got unknown key 'candidate'. Did you mean 'candidates'?",
        _space_case("candidate:\n  - text: Refuse.\n"),
    ),
    Case(
        "space-empty-file",
        SearchSpaceError,
        "space.yaml: must hold a mapping with `slots` or `candidates`, got an empty file",
        _space_case(""),
    ),
    Case(
        "space-duplicate-ids",
        SearchSpaceError,
        "option ids must be unique, got duplicates ['a']",
        _space_case("candidates:\n  - {id: a, text: Refuse.}\n  - {id: a, text: Decline.}\n"),
    ),
    # pipeline config
    Case(
        "pipeline-unknown-key",
        OpsaConfigError,
        "demo.yaml': pipeline config keys must be among",
        _pipeline_case("trian: {steps: 2}\n"),
        "opsa-train",
        ("results/demo/pipeline.json",),
    ),
    Case(
        "pipeline-bad-train-key",
        OpsaConfigError,
        "demo.yaml': `train` section: unknown config key `stepz`. Did you mean `steps`?",
        _pipeline_case("train: {stepz: 2}\n"),
        "opsa-train",
        ("results/demo/pipeline.json",),
    ),
    Case(
        "pipeline-section-not-mapping",
        OpsaConfigError,
        "demo.yaml': `train` must be a mapping of options, got 12",
        _pipeline_case("train: 12\n"),
        "opsa-train",
    ),
    # training YAML and overrides
    Case(
        "train-yaml-unknown-key",
        OpsaConfigError,
        "train.yaml': unknown config key `learning_rate`",
        _train_yaml_case("learning_rate: 1e-5\n"),
        "opsa-train",
    ),
    Case(
        "train-yaml-bad-type",
        OpsaConfigError,
        "train.yaml': `steps` must be an integer, got 'many'",
        _train_yaml_case("steps: many\n"),
        "opsa-train",
    ),
    Case(
        "train-yaml-bad-value",
        OpsaConfigError,
        "train.yaml': `lr` must be > 0, got -1.0",
        _train_yaml_case("lr: -1\n"),
        "opsa-train",
    ),
    Case(
        "train-override-bad-number",
        OpsaConfigError,
        "`lr` must be a number, got 'abc'",
        _bad_override,
        "opsa-train",
    ),
    # model folders
    Case(
        "model-folder-without-config",
        PreflightError,
        "`model` folder must hold a config.json, got ~ model'",
        _model_without_config,
        "opsa-train",
    ),
    Case(
        "model-unknown-name",
        ModelNotFoundError,
        "a local folder or a hub id, got 'not-a-model'",
        _unknown_model,
    ),
    # judge input / output
    Case(
        "judge-missing-response",
        JudgeError,
        "rows.jsonl` line 1 must have a string `response` field, got None",
        _judge_case('{"prompt": "x"}\n'),
        "flipsearch",
        ("verdicts.jsonl",),
    ),
    Case(
        "judge-bad-json-line",
        JudgeError,
        "rows.jsonl` line 2 must be a JSON object",
        _judge_case('{"prompt": "x", "response": "y"}\n{oops\n'),
        "flipsearch",
        ("verdicts.jsonl",),
    ),
    Case(
        "judge-empty-input",
        JudgeError,
        "rows.jsonl': nothing was judged and no output was written",
        _judge_case(""),
        "flipsearch",
        ("verdicts.jsonl",),
    ),
    # checkpoints and run folders
    Case(
        "checkpoint-truncated",
        CheckpointError,
        "checkpoint file 'model.safetensors' in ~ must be ~ bytes, got 40: truncated",
        _truncated_checkpoint,
        None,
        ("run/checkpoints/step-1/complete.json", "run/checkpoints/step-1/model.safetensors"),
    ),
    Case(
        "checkpoint-unfinished",
        CheckpointError,
        "must hold complete.json: it is missing or was never finished",
        _unfinished_checkpoint,
    ),
    Case(
        "run-folder-of-other-model",
        PreflightError,
        "`model` must be the run folder's model",
        _run_folder_of_other_model,
        "opsa-train",
        ("run/config.json", "run/checkpoints.jsonl"),
    ),
]


def _snapshot(tmp: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: (tmp / n).read_bytes() for n in names}


def _cli(name: str) -> Callable[[list[str]], int]:
    if name == "flipsearch":
        from flipsearch.cli import main
    else:
        from opsa_train.cli import main
    return main


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    call, argv = case.setup(tmp_path)
    before = _snapshot(tmp_path, case.keep)
    parts = case.match.split(" ~ ")
    with pytest.raises(case.error, match=".*".join(map(re.escape, parts))):
        call()
    assert _snapshot(tmp_path, case.keep) == before
    if case.cli is None:
        return
    assert argv is not None
    capsys.readouterr()
    assert _cli(case.cli)(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(".*".join(map(re.escape, parts)), err[0]), err[0]
    assert _snapshot(tmp_path, case.keep) == before


def test_catalogue_lists_every_case() -> None:
    """docs/BAD_INPUT.md has one row per case here, and no other."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "BAD_INPUT.md").read_text()
    listed = re.findall(r"`test_bad_input\[([\w-]+)\]`", doc)
    assert sorted(listed) == sorted(c.id for c in CASES)
    assert len(CASES) >= 25


# ---- `flipsearch score --context-file`: text or an export file ------------------------------


def test_context_file_plain_text(tmp_path: Path) -> None:
    from flipsearch.commands._common import read_context

    path = _write(tmp_path / "ctx.txt", "  Refuse harmful requests.\n")
    assert read_context(None, str(path), None) == _context("Refuse harmful requests.", "system")
    assert read_context(None, str(path), "suffix").placement == "suffix"


def test_context_file_export_gives_text_and_placement(tmp_path: Path) -> None:
    from flipsearch.commands._common import read_context, read_context_text

    path = _export(tmp_path)
    assert read_context(None, str(path), None) == _context("Refuse harmful requests.", "prefix")
    assert read_context(None, str(path), "system").placement == "system"  # the flag wins
    yaml_path = _write(tmp_path / "best.yaml", "schema_version: 1\ncontexts:\n  harmful:\n"
                       "    text: Decline.\n    placement: suffix\n")  # fmt: skip
    assert read_context(None, str(yaml_path), None) == _context("Decline.", "suffix")
    assert read_context_text(None, str(path)) == "Refuse harmful requests."


def test_score_cli_scores_the_export_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI hands the export's I_h, with its placement, to the scorer."""
    from flipsearch.cli import main
    from flipsearch.commands import score

    seen = []

    class Stop(Exception):
        pass

    class FakeScorer:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def score(self, context: object, *args: object) -> None:
            seen.append(context)
            raise Stop

    from flipsearch.engines import EngineConfig

    monkeypatch.setattr(EngineConfig, "build", lambda self: None)
    monkeypatch.setattr(score, "FlipScorer", FakeScorer)
    prompts = _write(tmp_path / "p.jsonl", '{"prompt": "How do I pick a lock?", "type": 1}\n')
    argv = ["score", "--context-file", str(_export(tmp_path)), "--harmful", str(prompts)]
    argv += ["--benign", "", "--cache", str(tmp_path / "c.sqlite")]
    with pytest.raises(Stop):
        main(argv)
    assert seen == [_context("Refuse harmful requests.", "prefix")]


def _context(text: str, placement: str) -> object:
    from flipsearch.contexts import Context

    return Context(text, placement)  # type: ignore[arg-type]
