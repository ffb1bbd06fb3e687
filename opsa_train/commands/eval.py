"""``opsa-train eval``: evaluate models side by side, every number with n and a 95% CI.

Harmful rate, over-refusal, GSM8K / MATH-500 / GPQA-Diamond accuracy (greedy, or avg@k),
capability retention and the composite safety score (S_harm and the paper's Eq. 6 S_eq6;
see :mod:`opsa_train.evaluate`).

Example:
    opsa-train eval --models base=smollm2-135m opsa=runs/R/final baseline=runs/B/final \\
        --out results/eval --limit 16 --max-tokens 32 --engine hf
    opsa-train eval --models base=Qwen/Qwen3-0.6B opsa=runs/R/final --out results/q \\
        --engine vllm --judge llamaguard --limit 0          # 0: every row
    # the paper's protocol: avg@8 at T=0.6, Llama Guard 3 / WildGuard per task
    opsa-train eval --models base=Qwen/Qwen3-8B opsa=runs/R/final --out results/p \\
        --harmful harmbench,strongreject,wildjailbreak --over-refusal xstest,wildjailbreak \\
        --reasoning gsm8k,math500,gpqa_diamond --reasoning-samples 8 \\
        --reasoning-temperature 0.6 --harmful-judge llamaguard --over-refusal-judge wildguard
"""

from __future__ import annotations

import argparse

from opsa_train.commands._common import (
    add_command,
    add_engine_arg,
    add_models_arg,
    parse_models,
    set_given,
)

__all__ = ["build_config", "parse_models", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "eval", "evaluate models side by side", __doc__, epilog="example")
    add_models_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--reference", default=None, help="retention reference (default: base)")
    p.add_argument("--harmful", default=None, help="comma-separated harmful sets")
    p.add_argument("--over-refusal", default=None, help="comma-separated safe-prompt sets")
    p.add_argument(
        "--reasoning", default=None, help="comma-separated: gsm8k,math500,gpqa_diamond ('' none)"
    )
    p.add_argument("--retention", default=None, help="benign set for retention ('' none)")
    p.add_argument("--limit", type=int, default=None, help="rows per set; 0 = all")
    p.add_argument("--reasoning-limit", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--reasoning-max-tokens", type=int, default=None)
    p.add_argument("--retention-max-tokens", type=int, default=None)
    p.add_argument(
        "--reasoning-samples",
        type=int,
        default=None,
        metavar="K",
        help="avg@K: answers sampled per reasoning prompt (needs a temperature > 0; default 1)",
    )
    p.add_argument(
        "--reasoning-temperature",
        type=float,
        default=None,
        metavar="T",
        help="temperature of reasoning answers; 0 = greedy (default)",
    )
    p.add_argument("--reasoning-seed", type=int, default=None, help="seed of sampled answers")
    add_engine_arg(p)
    p.add_argument(
        "--enable-thinking",
        default=None,
        choices=["true", "false"],
        help="the chat templates' thinking switch (Qwen3's enable_thinking) for every model; "
        "default: not passed. With thinking on, raise --max-tokens: the judge reads the "
        "answer after </think>, and a trace cut short is `unfinished` (counted harmful)",
    )
    p.add_argument(
        "--judge-trace",
        action="store_true",
        help="the harmful-rate and over-refusal judges read the reasoning trace "
        "(<think>...</think>) instead of the final answer after it",
    )
    p.add_argument("--judge", default=None, help="refusal (offline), llamaguard, wildguard, ...")
    p.add_argument("--harmful-judge", default=None, help="judge of harmful rates (default --judge)")
    p.add_argument(
        "--over-refusal-judge", default=None, help="judge of over-refusal (default --judge)"
    )
    p.add_argument("--cache", default=None, help="generation cache (SQLite)")
    p.add_argument(
        "--teacher",
        default=None,
        metavar="EXPORT",
        help="add a teacher row: the reference model with this export file's contexts, and "
        "each model's distillation efficiency",
    )
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):  # -> EvalConfig
    from opsa_train.evaluate import EvalConfig

    kw: dict[str, object] = {"models": parse_models(args.models), "out_dir": args.out}
    flags = (
        ("reference", "reference"),
        ("harmful", "harmful_sets"),
        ("over_refusal", "over_refusal_sets"),
        ("reasoning", "reasoning_sets"),
        ("max_tokens", "max_tokens"),
        ("reasoning_max_tokens", "reasoning_max_tokens"),
        ("retention_max_tokens", "retention_max_tokens"),
        ("reasoning_samples", "reasoning_samples"),
        ("reasoning_temperature", "reasoning_temperature"),
        ("reasoning_seed", "reasoning_seed"),
        ("engine", "engine"),
        ("judge", "judge"),
        ("cache", "cache"),
        ("teacher", "teacher"),
    )
    set_given(kw, args, flags)
    judges = {"harmful": args.harmful_judge, "over_refusal": args.over_refusal_judge}
    if any(judges.values()):
        kw["judges"] = {task: j for task, j in judges.items() if j}
    if args.retention is not None:
        kw["retention_set"] = args.retention or None
    if getattr(args, "judge_trace", False):
        kw["judge_reads"] = "trace"
    if getattr(args, "enable_thinking", None) is not None:
        kw["enable_thinking"] = args.enable_thinking == "true"
    for flag in ("limit", "reasoning_limit"):
        value = getattr(args, flag)
        if value is not None:
            kw[flag] = value or None
    return EvalConfig(**kw)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    from opsa_train.evaluate import evaluate, markdown_table

    config = build_config(args)
    result = evaluate(config)
    print(markdown_table(result.metrics, config.columns))
    print(f"\nwrote {config.out_dir}/eval.md, eval.csv, eval.json, samples.jsonl")
    return 0
