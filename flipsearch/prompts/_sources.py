"""Adapters for the public benchmarks and the built-in sets, by name.

Each public set is read from the shared data folder when its file is there
(``$FLIPSEARCH_SHARED_DATA``; default ``<checkout>/../shared/data`` when running from a
checkout, ``./shared/data`` when installed), else from its hub copy; when neither works
the error says where it looked and how to point elsewhere. The built-in sets are
package data and need neither. One adapter per dataset maps either source's columns
onto prompt rows: it picks the first column name present from a short list, so the
file's header and the hub copy's header both work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flipsearch.errors import PromptSetError
from flipsearch.prompts._files import Record, read_records, rows_from_records
from flipsearch.prompts._formats import gpqa_rows, wildjailbreak_rows
from flipsearch.prompts._hub import HubSpec, read_hub_records
from flipsearch.prompts._types import PromptRow

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "data"
_ROOT = Path(__file__).resolve().parents[2]
"""The checkout root when running from source; ``site-packages`` when installed."""


def shared_data_dir() -> Path:
    """``$FLIPSEARCH_SHARED_DATA`` if set; else ``<checkout>/../shared/data`` in a checkout,
    ``./shared/data`` (under the working folder) for an installed package."""
    env = os.environ.get("FLIPSEARCH_SHARED_DATA")
    if env:
        return Path(env)
    if (_ROOT / "pyproject.toml").is_file():
        return _ROOT.parent / "shared" / "data"
    return Path.cwd() / "shared" / "data"


def _where_shared_data() -> str:
    # How shared_data_dir() was chosen, for error messages.
    if os.environ.get("FLIPSEARCH_SHARED_DATA"):
        return "from $FLIPSEARCH_SHARED_DATA"
    return "the default; $FLIPSEARCH_SHARED_DATA is not set"


def _pick(columns: Sequence[str], candidates: Sequence[str], where: str) -> str:
    for c in candidates:
        if c in columns:
            return c
    raise PromptSetError(
        f"`{where}` must have one of the columns {list(candidates)!r}, got {list(columns)!r}"
    )


def _maybe(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in columns), None)


Adapter = Callable[[list[Record], list[str], str], list[PromptRow]]


# ---- adapters: (records, columns, where) -> rows -------------------------------------


def advbench_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """AdvBench ``harmful_behaviors.csv``: ``goal`` is the request; all harmful, no category."""
    col = _pick(columns, ("goal", "prompt"), where)
    return rows_from_records(
        records, columns, where=where, source="advbench", prompt_column=col, type="harmful"
    )


def harmbench_rows(
    records: list[Record],
    columns: list[str],
    where: str,
    functional: Sequence[str] = ("standard", "contextual"),
) -> list[PromptRow]:
    """HarmBench text behaviours, standard + contextual by default (copyright rows need a
    MinHash judge, not a refusal judge, so they are dropped unless asked for).

    Contextual rows get ``context + "\\n\\n---\\n\\n" + behaviour`` as their prompt (HarmBench's
    format) and keep the context in ``PromptRow.context``.
    """
    fcol = _maybe(columns, ("FunctionalCategory",))
    if fcol is not None:
        records = [r for r in records if r.get(fcol) in functional]
    return rows_from_records(
        records,
        columns,
        where=where,
        source="harmbench",
        prompt_column=_pick(columns, ("Behavior", "prompt"), where),
        type="harmful",
        category_column=_maybe(columns, ("SemanticCategory", "category")),
        id_column=_maybe(columns, ("BehaviorID",)),
        context_column=_maybe(columns, ("ContextString", "context")),
    )


def strongreject_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """StrongREJECT: ``forbidden_prompt`` with its ``category``; all harmful."""
    return rows_from_records(
        records,
        columns,
        where=where,
        source="strongreject",
        prompt_column=_pick(columns, ("forbidden_prompt", "prompt"), where),
        type="harmful",
        category_column=_maybe(columns, ("category",)),
    )


def xstest_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """XSTest v2: ``label`` safe -> benign, unsafe (the ``contrast_*`` types) -> harmful;
    XSTest's ``type`` (homonyms, safe_targets, ...) becomes the category."""
    rows = rows_from_records(
        records,
        columns,
        where=where,
        source="xstest",
        prompt_column=_pick(columns, ("prompt",), where),
        type_column=_pick(columns, ("label",), where),
        category_column=_maybe(columns, ("type",)),
        id_column=_maybe(columns, ("id",)),
    )
    return [_with_id(r, f"xstest-{r.id}") if not r.id.startswith("xstest") else r for r in rows]


def gsm8k_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """GSM8K: ``question`` (benign); ``answer`` keeps the final number after ``####``,
    commas removed, so an evaluator can compare it directly."""
    rows = rows_from_records(
        records,
        columns,
        where=where,
        source="gsm8k",
        prompt_column=_pick(columns, ("question",), where),
        type="benign",
        answer_column=_pick(columns, ("answer",), where),
    )
    return [
        _replace(
            r, category="math", answer=(r.answer or "").split("####")[-1].strip().replace(",", "")
        )
        for r in rows
    ]


def math500_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """MATH-500: ``problem`` (benign), ``answer`` (LaTeX), ``subject`` as category."""
    return rows_from_records(
        records,
        columns,
        where=where,
        source="math500",
        prompt_column=_pick(columns, ("problem",), where),
        type="benign",
        category_column=_maybe(columns, ("subject",)),
        id_column=_maybe(columns, ("unique_id",)),
        answer_column=_pick(columns, ("answer",), where),
    )


def labelled_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """A SafeChain-style labelled file: ``prompt`` (or ``instruction``) plus ``label``
    (``harmful``/``unsafe``/``1`` or ``benign``/``safe``/``0``); optional ``category``, ``id``."""
    return rows_from_records(
        records,
        columns,
        where=where,
        source=Path(where).stem,
        prompt_column=_pick(columns, ("prompt", "instruction"), where),
        type_column=_pick(columns, ("label", "type"), where),
        category_column=_maybe(columns, ("category",)),
        id_column=_maybe(columns, ("id",)),
    )


def builtin_rows(records: list[Record], columns: list[str], where: str) -> list[PromptRow]:
    """The project's own JSONL sets: ``id``, ``prompt``, ``type``, ``category``."""
    return rows_from_records(
        records,
        columns,
        where=where,
        source="flipsearch:" + Path(where).stem,
        type_column="type",
        category_column="category",
        id_column="id",
    )


def _replace(row: PromptRow, **changes: object) -> PromptRow:
    return PromptRow(**{**row.to_dict(), **changes})  # type: ignore[arg-type]


def _with_id(row: PromptRow, new_id: str) -> PromptRow:
    return _replace(row, id=new_id)


# ---- the registry ------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a named set lives: files (builtin or shared data) and hub fallbacks."""

    adapter: Adapter
    files: tuple[str, ...]
    """Paths relative to the shared data folder (or the package data folder when ``builtin``)."""
    hub: tuple[str, ...] = ()
    """``hf:`` specs read when the files are absent (one per file, concatenated)."""
    builtin: bool = False
    description: str = ""


SOURCES: dict[str, Source] = {
    "harmful_core": Source(
        builtin_rows, ("harmful_core.jsonl",), builtin=True, description="61 harmful requests"
    ),
    "benign_lookalike": Source(
        builtin_rows,
        ("benign_lookalike.jsonl",),
        builtin=True,
        description="40 safe prompts that look dangerous",
    ),
    "benign_plain": Source(
        builtin_rows, ("benign_plain.jsonl",), builtin=True, description="40 everyday tasks"
    ),
    "benign": Source(
        builtin_rows,
        ("benign_lookalike.jsonl", "benign_plain.jsonl"),
        builtin=True,
        description="benign_lookalike + benign_plain",
    ),
    "advbench": Source(
        advbench_rows,
        ("advbench/harmful_behaviors.csv",),
        ("hf:walledai/AdvBench@train",),
        description="AdvBench harmful behaviours (520)",
    ),
    "harmbench": Source(
        harmbench_rows,
        ("harmbench/harmbench_behaviors_text_all.csv",),
        ("hf:walledai/HarmBench:standard@train", "hf:walledai/HarmBench:contextual@train"),
        description="HarmBench text behaviours, standard + contextual (300)",
    ),
    "strongreject": Source(
        strongreject_rows,
        ("strongreject/strongreject_dataset.csv",),
        ("hf:walledai/StrongREJECT@train",),
        description="StrongREJECT forbidden prompts (313)",
    ),
    "xstest": Source(
        xstest_rows,
        ("xstest/xstest_prompts.csv",),
        ("hf:walledai/XSTest@train",),
        description="XSTest v2: 250 safe (benign) + 200 unsafe contrast (harmful)",
    ),
    "gsm8k": Source(
        gsm8k_rows,
        ("gsm8k/test.jsonl",),
        ("hf:openai/gsm8k:main@test",),
        description="GSM8K test (1319), benign; answer = final number",
    ),
    "math500": Source(
        math500_rows,
        ("math500/test.jsonl",),
        ("hf:HuggingFaceH4/MATH-500@test",),
        description="MATH-500 (500), benign; answer = LaTeX final answer",
    ),
    "wildjailbreak": Source(
        wildjailbreak_rows,
        ("wildjailbreak/eval.tsv",),
        ("hf:allenai/wildjailbreak:eval@train",),
        description="WildJailbreak eval, adversarial: 2000 harmful + 210 benign (gated on the hub)",
    ),
    "gpqa_diamond": Source(
        gpqa_rows,
        ("gpqa/gpqa_diamond.csv",),
        ("hf:Idavidrein/gpqa:gpqa_diamond@train",),
        description="GPQA-Diamond (198), benign multiple choice; answer = letter (gated hub)",
    ),
}


def source_rows(name: str, source: Source) -> list[PromptRow]:
    """Read every file of ``source`` (or its hub copies when the shared files are absent).

    Raises:
        PromptSetError: a built-in file is missing, or a shared file is missing and its hub
            copy cannot be read; the message names the folder searched and the fixes.
    """
    base = BUILTIN_DIR if source.builtin else shared_data_dir()
    paths = [base / f for f in source.files]
    rows: list[PromptRow] = []
    if all(p.is_file() for p in paths) or source.builtin or not source.hub:
        for p in paths:
            if not p.is_file():
                raise PromptSetError(
                    f"prompt set {name!r} must find its file at {str(p)!r}, got no such file: "
                    + (
                        "the package is incomplete; reinstall flipsearch"
                        if source.builtin
                        else _missing_shared_hint(source)
                    )
                )
            records, columns = read_records(p)
            rows.extend(source.adapter(records, columns, str(p)))
        return rows
    missing = next(str(p) for p in paths if not p.is_file())
    logger.info("prompt set %r: no %s; reading its hub copy %s", name, missing, list(source.hub))
    for k, spec in enumerate(source.hub):
        try:
            records, columns = read_hub_records(HubSpec.parse(spec))
        except PromptSetError as e:
            raise PromptSetError(
                f"prompt set {name!r} must find its file at {missing!r} or read its hub copy "
                f"{spec!r}, got neither ({e}): {_missing_shared_hint(source)}"
            ) from e
        part = source.adapter(records, columns, spec)
        # Generated ids restart per spec; keep them unique across the concatenation.
        rows.extend(part if len(source.hub) == 1 else [_with_id(r, f"{r.id}.{k}") for r in part])
    return rows


def _missing_shared_hint(source: Source) -> str:
    base = shared_data_dir()
    hint = (
        f"the shared data folder is {str(base)!r} ({_where_shared_data()}); set "
        f"FLIPSEARCH_SHARED_DATA to the folder that holds {source.files[0]!r}"
    )
    if source.hub:
        hint += f", or name the hub copy instead ({', '.join(repr(h) for h in source.hub)})"
    return hint
