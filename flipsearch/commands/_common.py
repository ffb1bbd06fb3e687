"""Options shared by several subcommands: study and storage, model/engine, judge, cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from flipsearch.models import DEFAULT_MODEL, cache_dir

if TYPE_CHECKING:
    from flipsearch.cache import GenerationCache
    from flipsearch.contexts import Context
    from flipsearch.engines import Engine, EngineConfig
    from flipsearch.judges import Judge, JudgeConfig


RECORDED_STORAGE_HELP = "default: the one in results/<study>/config.json"
"""``--storage`` help of the commands that read an existing study (export, report)."""


def add_study_args(
    parser: argparse.ArgumentParser,
    *,
    title: str = "study",
    study_help: str | None = None,
    storage_help: str = RECORDED_STORAGE_HELP,
) -> argparse._ArgumentGroup:
    """Add ``--study`` (required), ``--results-dir`` and ``--storage`` as one group.

    Returns the group, so a command can add its own options to it (``sweep`` adds its
    worker options).
    """
    g = parser.add_argument_group(title)
    g.add_argument("--study", required=True, help=study_help)
    g.add_argument("--results-dir", default="results")
    g.add_argument("--storage", default=None, help=storage_help)
    return g


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and engine")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="embedded model name, local HF folder or hub id (default: %(default)s)",
    )
    g.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "vllm", "hf"],
        help="generation engine; auto = vLLM on CUDA or an AVX512+ CPU where vllm imports, "
        "else transformers (default: %(default)s)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 on CUDA and on CPUs with native bf16 (AVX512_BF16, AMX), else float32",
    )
    g.add_argument("--max-model-len", type=int, default=2048)
    g.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vLLM's share of the GPU (default: vLLM's 0.9, or 0.55 beside a vLLM model judge)",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run model code from the model folder (off by default)",
    )
    g.add_argument(
        "--enable-thinking",
        default=None,
        choices=["true", "false"],
        help="the chat template's thinking switch (Qwen3's enable_thinking), passed to every "
        "prompt render; default: not passed (the template's own default)",
    )


def add_judge_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("judge")
    g.add_argument(
        "--judge",
        default="refusal",
        help="refusal (offline, default), llamaguard, wildguard or harmbench",
    )
    g.add_argument("--judge-model", default=None, help="model of a model judge (default: its own)")
    g.add_argument(
        "--judge-engine",
        default="auto",
        choices=["auto", "vllm", "hf"],
        help="engine of a model judge (auto: vLLM on CUDA)",
    )
    g.add_argument(
        "--judge-gpu-memory-utilization",
        type=float,
        default=None,
        help="a vLLM judge's share of the GPU (default 0.35 beside a vLLM generator)",
    )


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        default=None,
        help="generation/verdict cache (SQLite); default: $FLIPSEARCH_CACHE/generations.sqlite",
    )


def engine_config(args: argparse.Namespace) -> EngineConfig:
    from flipsearch.engines import EngineConfig

    return EngineConfig(
        model=args.model,
        engine=args.engine,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        trust_remote_code=args.trust_remote_code,
        gpu_memory_utilization=getattr(args, "gpu_memory_utilization", None),
        enable_thinking=thinking_flag(getattr(args, "enable_thinking", None)),
    )


def judge_config(args: argparse.Namespace) -> JudgeConfig:
    from flipsearch.judges import JudgeConfig

    return JudgeConfig(
        name=args.judge,
        model=args.judge_model,
        engine=getattr(args, "judge_engine", "auto"),
        gpu_memory_utilization=getattr(args, "judge_gpu_memory_utilization", None),
    )


def engine_and_judge_configs(args: argparse.Namespace) -> tuple[EngineConfig, JudgeConfig]:
    """The generator's and the judge's configs, with their GPU shares planned
    (:func:`~flipsearch.engines.gpu_shares.plan_gpu_shares`): a ConfigError before any
    model loads when a vLLM generator and a vLLM judge cannot both fit on the GPU."""
    import dataclasses

    from flipsearch.engines.gpu_shares import judge_shares_gpu, plan_gpu_shares

    engine, judge = engine_config(args), judge_config(args)
    generator_share, judge_share = plan_gpu_shares(
        engine.gpu_memory_utilization,
        judge.gpu_memory_utilization,
        shared=judge_shares_gpu(engine, judge),
    )
    return (
        dataclasses.replace(engine, gpu_memory_utilization=generator_share),
        dataclasses.replace(judge, gpu_memory_utilization=judge_share),
    )


def thinking_flag(value: str | None) -> bool | None:
    """``--enable-thinking true|false`` as a bool; None when not given."""
    return None if value is None else value == "true"


def build_engine(args: argparse.Namespace) -> Engine:
    return engine_config(args).build()


def build_judge(args: argparse.Namespace) -> Judge:
    return judge_config(args).build()


def open_cache(args: argparse.Namespace) -> GenerationCache:
    from flipsearch.cache import GenerationCache

    return GenerationCache(args.cache or cache_dir() / "generations.sqlite")


EXPORT_SUFFIXES = (".json", ".yaml", ".yml")
"""``--context-file`` names with these suffixes must be export files, not plain text."""


def read_context(text: str | None, file: str | None, placement: str | None) -> Context:
    """The context from ``--context TEXT`` or ``--context-file F`` plus ``--placement``.

    ``F`` is an export file (``flipsearch export``; its I_h is used) when it ends in
    .json/.yaml/.yml or its text starts with ``{``, else plain text. ``placement`` None
    takes the export file's placement, or ``system`` for text.

    Raises:
        ConfigError: both or neither of text and file, a missing or empty file, a bad
            placement.
        ExportFileError: ``F`` looks like an export file but is not a valid one.
    """
    from flipsearch.contexts import Context
    from flipsearch.errors import ConfigError
    from flipsearch.export import read_export

    if (text is None) == (file is None):
        raise ConfigError(
            "give exactly one of `--context TEXT` and `--context-file F`, got "
            f"--context={text!r} and --context-file={file!r}"
        )
    if text is not None:
        return Context(text, placement or "system")  # type: ignore[arg-type]
    path = Path(file)  # type: ignore[arg-type]
    if not path.is_file():
        raise ConfigError(
            f"`--context-file` must be an existing file, got {file!r}: no such file. "
            "Pass the context text with --context instead, or fix the path."
        )
    body = path.read_text(encoding="utf-8").strip()
    if path.suffix.lower() in EXPORT_SUFFIXES or body.startswith("{"):
        harmful = read_export(path).harmful
        return Context(harmful.text, placement or harmful.placement)  # type: ignore[arg-type]
    if not body:
        raise ConfigError(
            f"`--context-file` must hold the context text, got an empty file {file!r}. "
            "Write the context into it, or pass --context TEXT."
        )
    return Context(body, placement or "system")  # type: ignore[arg-type]


def read_context_text(text: str | None, file: str | None) -> str:
    """The context text from ``--context`` or ``--context-file`` (text, or an export file)."""
    return read_context(text, file, None).text


def write_json(path: str | Path, doc: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
