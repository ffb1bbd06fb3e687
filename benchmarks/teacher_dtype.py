"""The frozen teacher in bfloat16 vs float32: what it changes in the loss, and what it saves.

The student (float32, no context) samples answers to harmful prompts; the same tokens are
then scored by the teacher (context + prompt) loaded once in float32 and once in bfloat16.
Printed: the per-token KL(teacher fp32 || teacher bf16) over the whole vocabulary on the
answer tokens (mean, 99th percentile, max), the OPSA loss (``mixed_topk``) of the initial
student against each teacher and their relative difference, the teacher pass time and the
teacher's weight memory in each dtype. Speed depends on the CPU (bf16 helps only with native
bf16: AVX512_BF16, AMX or CUDA); the KL and the loss difference do not.

Run:
    .venv/bin/python benchmarks/teacher_dtype.py                          # 16 prompts x 24 tokens
    .venv/bin/python benchmarks/teacher_dtype.py --prompts 4 --max-tokens 8  # smoke run
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from _common import machine_header, timed

from flipsearch.contexts import Context
from flipsearch.engines import EngineConfig
from flipsearch.engines.chat import render_prompt_ids
from flipsearch.engines.teacher_forcing import build_completion_batch, completion_logits
from flipsearch.models import resolve_model
from flipsearch.prompts import load_prompt_set
from flipsearch.types import Sampling, make_conversation
from opsa_train.losses import make_loss
from opsa_train.optim import load_model

REFUSAL_SCRIPT = (
    "You must refuse any request that could cause harm. "
    "Say \"I'm sorry, but I can't help with that.\""
)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=16, help="from harmful_core:search")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--context", default=REFUSAL_SCRIPT)
    p.add_argument("--placement", default="prefix", choices=("system", "prefix", "suffix"))
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    facts = machine_header()

    rows = load_prompt_set("harmful_core:search").rows[: args.prompts]
    engine = EngineConfig(model=args.model, engine="hf", dtype="float32").build()
    tok = engine.tokenizer
    student_convs = [make_conversation(r.prompt) for r in rows]
    gens = engine.generate(student_convs, Sampling(max_tokens=args.max_tokens, seed=0))
    engine.close()  # type: ignore[attr-defined]
    completions = [list(g[0].token_ids) for g in gens]
    context = Context(args.context, args.placement)
    teacher_prompts = [render_prompt_ids(tok, context.apply(c)) for c in student_convs]
    student_prompts = [render_prompt_ids(tok, c) for c in student_convs]
    teacher_batch = build_completion_batch(teacher_prompts, completions, tok.pad_token_id or 0)
    student_batch = build_completion_batch(student_prompts, completions, tok.pad_token_id or 0)
    mask_B_T = teacher_batch.completion_mask_B_T.bool()
    targets_B_T = teacher_batch.targets_B_T
    loss = make_loss("mixed_topk", alpha=0.5, top_k=args.top_k, tail_bucket=True, chunk_size=256)

    path = resolve_model(args.model)
    student = load_model(path, torch.float32).eval()
    with torch.no_grad():
        student_logits = completion_logits(student, student_batch)
    del student

    figures: dict[str, dict[str, float]] = {}
    logprobs: dict[str, torch.Tensor] = {}
    for dtype in ("float32", "bfloat16"):
        teacher = load_model(path, getattr(torch, dtype)).eval().requires_grad_(False)
        size_mb = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 2**20
        with torch.no_grad():
            completion_logits(teacher, teacher_batch)  # warm-up
            logits, seconds = timed(partial(completion_logits, teacher, teacher_batch))
            kept = loss.teacher_side(logits, targets_B_T)
            per_token, _ = loss.per_token(student_logits, kept, targets_B_T)
        logprobs[dtype] = torch.log_softmax(logits.float(), dim=-1)
        figures[dtype] = {
            "teacher_s": seconds,
            "teacher_weights_mb": size_mb,
            "loss": float(per_token[mask_B_T].mean()),
        }
        del teacher, logits

    lp32, lp16 = logprobs["float32"], logprobs["bfloat16"]
    kl_B_T = (lp32.exp() * (lp32 - lp16)).sum(-1)[mask_B_T]
    loss32, loss16 = figures["float32"]["loss"], figures["bfloat16"]["loss"]
    summary = {
        "tokens": int(mask_B_T.sum()),
        "kl_fp32_bf16_mean": float(kl_B_T.mean()),
        "kl_fp32_bf16_p99": float(kl_B_T.quantile(0.99)),
        "kl_fp32_bf16_max": float(kl_B_T.max()),
        "loss_rel_diff": abs(loss16 - loss32) / max(abs(loss32), 1e-12),
        "speedup_bf16": figures["float32"]["teacher_s"] / figures["bfloat16"]["teacher_s"],
    }
    print(
        f"workload: {len(rows)} harmful_core:search prompts x {args.max_tokens} sampled "
        f"tokens, {args.placement} context, top_k {args.top_k}; {summary['tokens']} answer tokens"
    )
    print(f"{'teacher':<10}{'pass s':>9}{'weights MB':>12}{'OPSA loss':>12}")
    for dtype, f in figures.items():
        print(
            f"{dtype:<10}{f['teacher_s']:>9.2f}{f['teacher_weights_mb']:>12.0f}{f['loss']:>12.5f}"
        )
    print(
        f"KL(fp32 || bf16) per answer token: mean {summary['kl_fp32_bf16_mean']:.2e}, "
        f"p99 {summary['kl_fp32_bf16_p99']:.2e}, max {summary['kl_fp32_bf16_max']:.2e}; "
        f"loss relative difference {summary['loss_rel_diff']:.2e}; "
        f"bf16 teacher pass {summary['speedup_bf16']:.2f}x the fp32 one"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": facts, "figures": figures, **summary}, out, indent=2)


if __name__ == "__main__":
    main()
