"""Stage records: keys change with every input, records survive reloads, bad files say so;
the report shows numbers only for stages done under this run's keys."""

from __future__ import annotations

import json

import pytest

from opsa_train.errors import OpsaConfigError
from opsa_train.pipeline import PipelineConfig
from opsa_train.pipeline_report import publish, write_report
from opsa_train.stage_state import StageState, export_digest, file_digest, stage_key


def test_stage_key_changes_with_every_part_and_ignores_dict_order():
    base = stage_key("eval", 1, config={"a": 1, "b": 2}, model="f1", upstream="k")
    assert base == stage_key("eval", 1, upstream="k", model="f1", config={"b": 2, "a": 1})
    assert base != stage_key("eval", 2, config={"a": 1, "b": 2}, model="f1", upstream="k")
    assert base != stage_key("opsa", 1, config={"a": 1, "b": 2}, model="f1", upstream="k")
    assert base != stage_key("eval", 1, config={"a": 1, "b": 3}, model="f1", upstream="k")
    assert base != stage_key("eval", 1, config={"a": 1, "b": 2}, model="f2", upstream="k")
    assert base != stage_key("eval", 1, config={"a": 1, "b": 2}, model="f1", upstream="k2")


def test_file_digest_follows_content(tmp_path):
    f = tmp_path / "best.json"
    assert file_digest(f) == "missing"
    f.write_text("a")
    first = file_digest(f)
    f.write_text("b")
    assert file_digest(f) != first


def test_export_digest_ignores_when_and_by_which_commit_the_export_was_written(tmp_path):
    # Two fresh-clone demos at different commits exported the same context; the file
    # digest (and so the opsa, baseline, eval and analysis keys) differed on `created`
    # and `code.commit` alone.
    f = tmp_path / "best.json"
    assert export_digest(f) == "missing"
    doc = {
        "schema_version": 1,
        "contexts": {"harmful": {"text": "Refuse harm.", "placement": "suffix"}},
        "provenance": {
            "model_fingerprint": "abc",
            "code": {"commit": "b45a505", "dirty": False},
            "created": "2026-12-02T01:08:11Z",
        },
    }
    f.write_text(json.dumps(doc))
    first = export_digest(f)
    doc["provenance"].update(code={"commit": "5e458dd", "dirty": False}, created="2026-12-03")
    f.write_text(json.dumps(doc, indent=2))
    assert export_digest(f) == first
    # Anything training reads still changes it: the context, the model.
    doc["contexts"]["harmful"]["text"] = "Refuse all harm."
    f.write_text(json.dumps(doc))
    assert export_digest(f) != first
    doc["contexts"]["harmful"]["text"] = "Refuse harm."
    doc["provenance"]["model_fingerprint"] = "def"
    f.write_text(json.dumps(doc))
    assert export_digest(f) != first
    # A file that is not JSON is digested byte for byte.
    f.write_text("not json")
    assert export_digest(f) == file_digest(f)


def test_records_persist_and_only_done_under_the_same_key_counts(tmp_path):
    state = StageState(tmp_path)
    state.start("sweep", "k1")
    assert not state.is_done("sweep", "k1")  # running is not done
    assert StageState(tmp_path).get("sweep").status == "running"  # written at once
    state.finish("sweep", "k1", seconds=3.21, peak_rss_mb=812.4, info={"engine": "hf"})
    again = StageState(tmp_path)
    assert again.is_done("sweep", "k1") and not again.is_done("sweep", "k2")
    record = again.get("sweep")
    assert (record.seconds, record.peak_rss_mb, record.info) == (3.2, 812, {"engine": "hf"})
    again.forget(["sweep"])
    assert StageState(tmp_path).get("sweep") is None


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "is unreadable"), ('{"schema_version": 99}', "must have schema_version 1")],
)
def test_a_damaged_state_file_names_itself_and_the_fix(tmp_path, content, match):
    (tmp_path / "state.json").write_text(content)
    with pytest.raises(OpsaConfigError, match=match) as info:
        StageState(tmp_path)
    assert str(tmp_path / "state.json") in str(info.value) and "delete it" in str(info.value)


def _cfg(tmp_path) -> PipelineConfig:
    return PipelineConfig(
        run="r", results_dir=str(tmp_path / "results"), runs_dir=str(tmp_path / "runs")
    )


def test_report_shows_no_numbers_from_artifacts_of_other_keys(tmp_path):
    cfg = _cfg(tmp_path)
    state = StageState(cfg.work_dir)
    # An eval from another run's inputs sits in the working folder, recorded under key "old".
    eval_dir = cfg.work_dir / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "eval.json").write_text(json.dumps({"config": {}, "metrics": []}))
    state.start("eval", "old")
    state.finish("eval", "old", seconds=472.8)
    report = write_report(cfg, state, {"eval": "new"}, started_at=0.0, wall_seconds=1.0)
    text = report.read_text()
    assert "stage `eval` is not done for this run's inputs" in text
    assert "key old, now new" in text
    assert "472.8" not in text  # the old run's timing is not reported as this run's
    assert "| eval | not finished |" in text
    # Stages that never ran in this invocation say so too.
    assert "stage `sweep` is not done" in text and "did not run in this invocation" in text


def test_publish_swaps_in_this_runs_files_only(tmp_path):
    cfg = _cfg(tmp_path)
    (cfg.folder / "eval").mkdir(parents=True)
    (cfg.folder / "eval" / "old.json").write_text("{}")
    (cfg.folder / "CODE_COMMIT").write_text("a047eda")
    (cfg.work_dir / "eval").mkdir(parents=True)
    (cfg.work_dir / "report.md").write_text("# new")
    (cfg.work_dir / "eval" / "eval.json").write_text("{}")
    (cfg.work_dir / "opsa" / "final").mkdir(parents=True)
    (cfg.work_dir / "opsa" / "final" / "model.safetensors").write_bytes(b"0" * 10)
    (cfg.work_dir / "analysis").mkdir()
    (cfg.work_dir / "analysis" / "huge.csv").write_bytes(b"0" * (3 << 20))
    path = publish(cfg)
    assert path.read_text() == "# new"
    files = sorted(p.relative_to(cfg.folder).as_posix() for p in cfg.folder.rglob("*"))
    assert files == ["eval", "eval/eval.json", "report.md"]
    assert not list(cfg.folder.parent.glob(".r.*"))  # no staging folders left behind
