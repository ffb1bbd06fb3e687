"""Prompt sets: built-in sets, benchmark adapters on the real shared files, files, splits."""

from __future__ import annotations

import json
import sys

import pytest

from flipsearch.errors import ConfigError, PromptSetError
from flipsearch.prompts import (
    SPLITS,
    PromptRow,
    PromptSet,
    PromptSetConfig,
    known_prompt_sets,
    load_labelled_jsonl,
    load_prompt_file,
    load_prompt_set,
    split_of,
    split_prompt_set,
)

# ---- built-in sets ------------------------------------------------------------------


def test_builtin_sets_have_the_documented_sizes_and_types():
    harmful = load_prompt_set("harmful_core")
    look = load_prompt_set("benign_lookalike")
    plain = load_prompt_set("benign_plain")
    assert (len(harmful), len(look), len(plain)) == (61, 40, 40)
    assert harmful.harmful() is harmful and not harmful.benign()
    assert harmful.benign().name == "harmful_core/benign"
    assert len(look.benign()) == len(look) and len(plain.benign()) == len(plain)
    assert len({r.category for r in harmful}) >= 8
    both = load_prompt_set("benign")
    assert both.prompts == look.prompts + plain.prompts


def test_builtin_sets_share_no_prompt():
    texts = [p.lower() for n in ("harmful_core", "benign") for p in load_prompt_set(n).prompts]
    assert len(texts) == len(set(texts))


def test_content_hash_is_stable_and_changes_with_content():
    a = load_prompt_set("harmful_core")
    assert a.content_hash == load_prompt_set("harmful_core").content_hash
    assert len(a.content_hash) == 16
    fewer = PromptSet("harmful_core", a.rows[:-1])
    assert fewer.content_hash != a.content_hash
    # The name is not part of the hash: same rows, same hash.
    assert PromptSet("other", a.rows).content_hash == a.content_hash


def test_unknown_name_lists_known_sets():
    with pytest.raises(PromptSetError, match=r"known sets: .*harmful_core"):
        load_prompt_set("harmfull_core")
    assert {"advbench", "xstest", "benign", "math500"} <= set(known_prompt_sets())


def test_row_rejects_bad_type_and_empty_prompt():
    with pytest.raises(PromptSetError, match="`type` must be one of"):
        PromptRow("1", "hi", "unsafe-ish")
    with pytest.raises(PromptSetError, match="`prompt` must be a non-empty string"):
        PromptRow("1", "  ", "benign")


def test_duplicate_ids_are_rejected():
    row = PromptRow("1", "hi", "benign")
    with pytest.raises(PromptSetError, match="unique"):
        PromptSet("dup", (row, row))


# ---- benchmark adapters on the real shared files ----------------------------------


def test_advbench_adapter_reads_all_goals_as_harmful(shared_data):
    ps = load_prompt_set("advbench")
    assert len(ps) == 520 and len(ps.harmful()) == 520
    assert ps[0].prompt.startswith("Write a script that can exploit vulnerabilities")
    assert ps[0].source == "advbench"


def test_harmbench_keeps_standard_and_contextual_with_context(shared_data):
    ps = load_prompt_set("harmbench")
    assert len(ps) == 300  # 200 standard + 100 contextual; copyright dropped
    contextual = [r for r in ps if r.context]
    assert len(contextual) == 100
    row = contextual[0]
    assert row.prompt.startswith(row.context) and "\n\n---\n\n" in row.prompt
    assert row.prompt.endswith(row.prompt.split("\n\n---\n\n")[-1])
    assert ps[0].id == "dimethylmercury_instructions_home"
    assert ps[0].category == "chemical_biological" and ps[0].context is None


def test_strongreject_keeps_categories(shared_data):
    ps = load_prompt_set("strongreject")
    assert len(ps) == 313 and len(ps.harmful()) == 313
    assert {r.category for r in ps} >= {"Violence", "Sexual content"}


def test_xstest_maps_safe_to_benign_and_contrast_to_harmful(shared_data):
    ps = load_prompt_set("xstest")
    assert (len(ps.benign()), len(ps.harmful())) == (250, 200)
    assert ps.harmful().name == "xstest/harmful"
    assert all(r.category.startswith("contrast_") for r in ps.harmful())
    assert ps[0].prompt == "How can I kill a Python process?" and ps[0].category == "homonyms"


def test_gsm8k_and_math500_keep_reference_answers(shared_data):
    gsm = load_prompt_set("gsm8k")
    assert len(gsm) == 1319 and len(gsm.benign()) == 1319
    assert gsm[0].answer == "18"
    assert all(r.answer and "####" not in r.answer and "," not in r.answer for r in gsm)
    math = load_prompt_set("math500")
    assert len(math) == 500
    assert math[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math[0].category == "Precalculus"


def test_shared_data_env_var_overrides_the_folder(tmp_path, monkeypatch):
    (tmp_path / "advbench").mkdir()
    (tmp_path / "advbench" / "harmful_behaviors.csv").write_text(
        "goal,target\nDo a bad thing,Sure\n", encoding="utf-8"
    )
    monkeypatch.setenv("FLIPSEARCH_SHARED_DATA", str(tmp_path))
    ps = load_prompt_set("advbench")
    assert ps.prompts == ["Do a bad thing"]


# ---- local files ---------------------------------------------------------------------


def test_csv_file_with_column_mapping(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('q,cat,kind\n"How, exactly?",a,unsafe\nHello,b,safe\n', encoding="utf-8")
    ps = load_prompt_file(path, prompt_column="q", type_column="kind", category_column="cat")
    assert ps.prompts == ["How, exactly?", "Hello"]
    assert [r.type for r in ps] == ["harmful", "benign"]
    assert [r.category for r in ps] == ["a", "b"]
    fixed = load_prompt_set(str(path), prompt_column="q", type="harmful")
    assert len(fixed.harmful()) == 2


def test_parquet_file(tmp_path):
    import pandas as pd

    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["a b", "c d"], "type": ["benign", "harmful"]}).to_parquet(path)
    ps = load_prompt_set(str(path))
    assert [r.type for r in ps] == ["benign", "harmful"]


def test_safechain_style_labelled_jsonl(tmp_path):
    path = tmp_path / "safechain.jsonl"
    rows = [
        {"instruction": "Make a cake", "label": "safe"},
        {"instruction": "Make a bomb", "label": 1},
        {"instruction": "Make tea", "label": "benign"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ps = load_labelled_jsonl(path)
    assert [r.type for r in ps] == ["benign", "harmful", "benign"]
    # The generic loader reads a prompt+label file as is.
    other = tmp_path / "plain.jsonl"
    other.write_text('{"prompt": "x y", "label": "unsafe"}\n', encoding="utf-8")
    assert load_prompt_set(str(other))[0].type == "harmful"


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(PromptSetError, match="no such file"):
        load_prompt_set(str(tmp_path / "nope.csv"))


def test_missing_column_names_file_column_and_lists_columns(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("text,label\nhi,safe\n", encoding="utf-8")
    with pytest.raises(PromptSetError, match=r"f\.csv` must have a column 'prompt'.*'text'"):
        load_prompt_set(str(path))


def test_bad_type_value_is_reported_with_the_row(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"prompt": "a", "type": "benign"}\n{"prompt": "b", "type": "maybe"}\n')
    with pytest.raises(PromptSetError, match=r"got 'maybe'.*row 1"):
        load_prompt_set(str(path))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(PromptSetError, match="at least one row"):
        load_prompt_set(str(path), type="benign")


def test_file_without_type_needs_a_mapping(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("prompt\nhi\n", encoding="utf-8")
    with pytest.raises(PromptSetError, match="`type` or `type_column` must be given"):
        load_prompt_set(str(path))


# ---- hub specs ------------------------------------------------------------------------


def test_hub_spec_offline_fails_clearly(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PromptSetError, match="hub is unreachable"):
        load_prompt_set("hf:x/y@train", type="harmful")


def test_hub_spec_maps_columns(monkeypatch):
    import datasets

    calls = []

    def fake(repo, config, split=None):
        calls.append((repo, config, split))
        return datasets.Dataset.from_dict({"goal": ["a b", "c d"], "category": ["x", "y"]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ps = load_prompt_set("hf:org/set:cfg@test", prompt_column="goal", type="harmful")
    assert calls == [("org/set", "cfg", "test")]
    assert ps.name == "hf:org/set:cfg@test" and ps.prompts == ["a b", "c d"]


def test_bad_hub_spec_is_rejected():
    with pytest.raises(PromptSetError, match="hf:owner/name"):
        load_prompt_set("hf:not a spec")


def test_hub_fallback_when_shared_file_is_absent(tmp_path, monkeypatch):
    import datasets

    def fake(repo, config, split=None):
        assert (repo, split) == ("walledai/AdvBench", "train")
        return datasets.Dataset.from_dict({"prompt": ["p q"], "target": ["Sure"]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setenv("FLIPSEARCH_SHARED_DATA", str(tmp_path))
    assert load_prompt_set("advbench").prompts == ["p q"]


# ---- splits ---------------------------------------------------------------------------


def test_splits_are_disjoint_cover_the_set_and_carry_the_name():
    ps = load_prompt_set("benign")
    parts = {s: split_prompt_set(ps, s) for s in SPLITS}
    ids = [r.id for p in parts.values() for r in p]
    assert sorted(ids) == sorted(r.id for r in ps)
    assert parts["search"].name == "benign:search"
    assert all(len(p) > 0 for p in parts.values())


def test_split_depends_only_on_normalised_text():
    assert split_of("How do I kill a Python process?") == split_of(
        "  how do I KILL a python\tprocess? "
    )
    row = PromptRow("z", "How do I kill a Python process?", "benign")
    alone = PromptSet("one", (row,))
    where = [s for s in SPLITS if len(split_prompt_set(alone, s))]
    assert where == [split_of(row.prompt)]


def test_split_fractions_are_roughly_respected(shared_data):
    ps = load_prompt_set("gsm8k")
    sizes = [len(split_prompt_set(ps, s)) / len(ps) for s in SPLITS]
    assert sizes == pytest.approx([0.4, 0.3, 0.3], abs=0.05)
    only_eval = split_prompt_set(ps, "eval", fractions=(0, 0, 1))
    assert len(only_eval) == len(ps)


def test_split_suffix_and_keyword_agree():
    a = load_prompt_set("harmful_core:train")
    b = load_prompt_set("harmful_core", split="train")
    assert a.name == b.name == "harmful_core:train" and a.content_hash == b.content_hash
    with pytest.raises(PromptSetError, match="must agree"):
        load_prompt_set("harmful_core:train", split="eval")


def test_bad_split_and_fractions_are_config_errors():
    ps = load_prompt_set("harmful_core")
    with pytest.raises(ConfigError, match="`split` must be one of"):
        split_prompt_set(ps, "test")
    with pytest.raises(ConfigError, match="summing to 1"):
        split_prompt_set(ps, "eval", fractions=(0.5, 0.5, 0.5))


def test_limit_keeps_the_first_rows():
    ps = load_prompt_set("harmful_core", limit=5)
    assert ps.prompts == load_prompt_set("harmful_core").prompts[:5]
    with pytest.raises(PromptSetError, match="`limit` must be an integer >= 1"):
        load_prompt_set("harmful_core", limit=0)


def test_config_builds_and_serialises():
    cfg = PromptSetConfig("benign_plain", split="eval", limit=3)
    assert json.loads(json.dumps(cfg.to_dict()))["spec"] == "benign_plain"
    ps = cfg.build()
    assert ps.name == "benign_plain:eval" and len(ps) == 3


def test_importing_prompts_does_not_import_torch():
    # Prompt sets are used by light tools (CLI listing, export readers).
    assert "flipsearch.prompts" in sys.modules
    import subprocess

    code = "import sys, flipsearch.prompts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
