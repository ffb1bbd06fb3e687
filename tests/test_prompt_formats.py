"""WildJailbreak and GPQA loaders on small files in the datasets' real formats."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flipsearch.errors import PromptSetError
from flipsearch.prompts import load_prompt_set
from opsa_train.answers import extract_choice, is_correct

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = FIXTURES / "shared"
WJ_EVAL = SHARED / "wildjailbreak" / "eval.tsv"
GPQA = SHARED / "gpqa" / "gpqa_diamond.csv"


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_wildjailbreak_named_set_reads_the_shared_eval_file(monkeypatch):
    monkeypatch.setenv("FLIPSEARCH_SHARED_DATA", str(SHARED))
    ps = load_prompt_set("wildjailbreak")
    raw = _tsv(WJ_EVAL)
    assert ps.prompts == [r["adversarial"] for r in raw]
    assert [r.type for r in ps.rows] == [
        "harmful" if r["data_type"] == "adversarial_harmful" else "benign" for r in raw
    ]
    assert len(ps.harmful()) == 3 and len(ps.benign()) == 2
    assert {r.source for r in ps.rows} == {"wildjailbreak"}
    assert ps.rows[0].category == "adversarial_harmful"


def test_wildjailbreak_local_train_file_keeps_adversarial_rows_only():
    path = FIXTURES / "wildjailbreak_train.tsv"
    ps = load_prompt_set(str(path))
    raw = [r for r in _tsv(path) if r["data_type"].startswith("adversarial")]
    assert ps.prompts == [r["adversarial"] for r in raw]  # the vanilla rows are dropped
    assert [r.type for r in ps.rows] == ["harmful", "benign"]
    # An explicit column mapping still reads the file generically (vanilla prompts).
    plain = load_prompt_set(str(path), prompt_column="vanilla", type="harmful")
    assert len(plain) == 4 and plain.rows[0].source == "wildjailbreak_train"


def test_wildjailbreak_hub_spec_passes_tsv_options_and_uses_the_adapter(monkeypatch):
    import datasets

    calls = []

    def fake(repo, config, split=None, **options):
        calls.append((repo, config, split, options))
        return datasets.Dataset.from_list(_tsv(WJ_EVAL))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ps = load_prompt_set("hf:allenai/wildjailbreak:eval@train")
    assert calls == [
        ("allenai/wildjailbreak", "eval", "train", {"delimiter": "\t", "keep_default_na": False})
    ]
    assert len(ps.harmful()) == 3 and {r.source for r in ps.rows} == {"wildjailbreak"}
    # The named set falls back to the same hub copy when the shared file is absent.
    monkeypatch.setenv("FLIPSEARCH_SHARED_DATA", str(FIXTURES / "nowhere"))
    assert load_prompt_set("wildjailbreak").prompts == ps.prompts


def test_wildjailbreak_unknown_data_type_and_no_adversarial_rows_fail(tmp_path):
    bad = tmp_path / "wj.tsv"
    bad.write_text("adversarial\tdata_type\nhello there\tadversarial_weird\n")
    with pytest.raises(PromptSetError, match=r"`data_type` must be one of .* row 0"):
        load_prompt_set(str(bad))
    vanilla = tmp_path / "v.tsv"
    vanilla.write_text("vanilla\tadversarial\tcompletion\tdata_type\nhi\t\tok\tvanilla_benign\n")
    with pytest.raises(PromptSetError, match="must hold adversarial rows"):
        load_prompt_set(str(vanilla))


def test_gpqa_rows_list_four_shuffled_choices_and_the_correct_letter(monkeypatch):
    monkeypatch.setenv("FLIPSEARCH_SHARED_DATA", str(SHARED))
    ps = load_prompt_set("gpqa_diamond")
    with open(GPQA, newline="") as f:
        raw = list(csv.DictReader(f))
    assert [r.id for r in ps.rows] == [r["Record ID"] for r in raw]
    assert [r.category for r in ps.rows] == [r["Subdomain"] for r in raw]
    letters = []
    for row, rec in zip(ps.rows, raw, strict=True):
        assert row.prompt.startswith(rec["Question"]) and row.type == "benign"
        options = {line[1]: line[4:] for line in row.prompt.splitlines()[-4:]}  # "(A) text"
        assert sorted(options) == ["A", "B", "C", "D"]
        answers = [rec[c] for c in ("Correct Answer", "Incorrect Answer 1")]
        answers += [rec["Incorrect Answer 2"], rec["Incorrect Answer 3"]]
        assert sorted(options.values()) == sorted(answers)
        assert options[row.answer or ""] == rec["Correct Answer"]
        letters.append(row.answer)
    # The order is fixed by the question: a second load is identical.
    assert [r.prompt for r in load_prompt_set(str(GPQA)).rows] == ps.prompts
    assert len(set(letters)) > 1  # not always the same position


def test_gpqa_hub_spec_uses_the_adapter(monkeypatch):
    import datasets

    with open(GPQA, newline="") as f:
        raw = list(csv.DictReader(f))
    monkeypatch.setattr(
        datasets, "load_dataset", lambda repo, config, split=None: datasets.Dataset.from_list(raw)
    )
    ps = load_prompt_set("hf:Idavidrein/gpqa:gpqa_diamond@train")
    assert [r.answer for r in ps.rows] == [r.answer for r in load_prompt_set(str(GPQA)).rows]


def test_gpqa_empty_answer_is_an_error(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text(
        "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "Q?,a,b,,d\n"
    )
    with pytest.raises(PromptSetError, match="`Incorrect Answer 2` must not be empty"):
        load_prompt_set(str(path))


def test_gpqa_answers_are_graded_by_letter():
    assert extract_choice("... so the answer is \\boxed{\\text{(b)}}") == "B"
    assert is_correct("Thus \\boxed{C}.", "C", kind="gpqa")
    assert not is_correct("Thus \\boxed{D}.", "C", kind="gpqa")
    assert not is_correct("Thus \\boxed{19.6}.", "C", kind="gpqa")
