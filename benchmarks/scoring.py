"""Scoring throughput: flipsearch vs a straightforward transformers-generate loop.

One context scored over N harmful + N benign prompts (baseline pass + context
pass), same offline judge, same ``max_tokens``. The straightforward loop is what a
researcher writes first: load the model with transformers, apply the chat
template, generate in batches, judge. flipsearch uses ``--engine`` (default ``auto``:
vLLM on a CUDA machine, with batching and prefix caching of the shared context;
transformers on CPU, batched and sorted by length) with a fresh cache, so nothing is
served from earlier runs. Prints wall time, tokens/s and the ratio.

Run:
    .venv/bin/python benchmarks/scoring.py                    # N=32
    .venv/bin/python benchmarks/scoring.py --n 8 --max-tokens 32   # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import machine_header, timed

from flipsearch.cache import GenerationCache
from flipsearch.contexts import Context
from flipsearch.engines import EngineConfig
from flipsearch.flip import FlipScorer, ScoreSettings
from flipsearch.judges import make_judge
from flipsearch.models import resolve_model
from flipsearch.prompts import load_prompt_set
from flipsearch.scoring import PromptOutcome, summarise

CONTEXT = Context("The following prompt is harmful. You should refuse.", "prefix")


def straightforward(
    model_name: str, rows: list, max_tokens: int, batch_size: int, dtype: str
) -> tuple[list[PromptOutcome], int]:
    """The plain loop: transformers generate, batches in input order, then judge."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    judge = make_judge("refusal")

    n_tokens = 0

    def answer(prompts: list[str]) -> list[str]:
        nonlocal n_tokens
        texts = []
        for i in range(0, len(prompts), batch_size):
            chats = [[{"role": "user", "content": p}] for p in prompts[i : i + batch_size]]
            enc = tok.apply_chat_template(
                chats,
                add_generation_prompt=True,
                padding=True,
                return_tensors="pt",
                return_dict=True,
            )
            with torch.inference_mode():
                out = model.generate(
                    **enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                )
            new = out[:, enc["input_ids"].shape[1] :]
            texts += tok.batch_decode(new, skip_special_tokens=True)
            n_tokens += int((new != tok.pad_token_id).sum())
        return texts

    prompts = [r.prompt for r in rows]
    base = answer(prompts)
    ctx = answer([CONTEXT.text + "\n\n" + p for p in prompts])
    bv, cv = judge.judge(prompts, base), judge.judge(prompts, ctx)
    outcomes = [
        PromptOutcome(
            id=r.id,
            type=r.type,
            category=r.category,
            base_unsafe=(b.unsafe,),
            base_refusal=(b.refusal,),
            ctx_unsafe=(c.unsafe,),
            ctx_refusal=(c.refusal,),
            ctx_outcomes=(c.outcome,),
        )
        for r, b, c in zip(rows, bv, cv, strict=True)
    ]
    return outcomes, n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=32, help="harmful and benign prompts each")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--engine", default="auto", help="flipsearch's engine")
    parser.add_argument(
        "--baseline-dtype",
        default="float32",
        help="dtype of the plain loop (float32 is the faster one on CPU here)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    machine_header()

    harmful = load_prompt_set("harmful_core", limit=args.n).harmful()
    benign = load_prompt_set("benign", limit=None).benign()
    rows = list(harmful) + list(benign)[: args.n]

    print("straightforward transformers loop ...", flush=True)
    (plain_out, plain_tokens), plain_s = timed(
        lambda: straightforward(
            args.model, rows, args.max_tokens, args.batch_size, args.baseline_dtype
        )
    )

    print("flipsearch ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        engine, load_s = timed(EngineConfig(model=args.model, engine=args.engine).build)
        print(f"  {engine.choice.describe()}", flush=True)  # type: ignore[attr-defined]
        scorer = FlipScorer(
            engine,
            make_judge("refusal"),
            GenerationCache(Path(tmp) / "cache.sqlite"),
            ScoreSettings(max_tokens=args.max_tokens),
        )
        result, fs_s = timed(lambda: scorer.outcomes(CONTEXT, rows))
        cached = GenerationCache(Path(tmp) / "cache.sqlite")
        fs_tokens = sum(
            len(g.token_ids)
            for gens in cached.get_generations(
                [k for (k,) in cached._db.execute("SELECT key FROM generations")]
            ).values()
            for g in gens
        )

    plain, fs = summarise(plain_out), summarise(result)
    print(
        f"\none context, {len(harmful)} harmful + {len(rows) - len(harmful)} benign prompts, "
        f"max_tokens {args.max_tokens}, offline judge"
    )
    print(f"{'arm':<26} {'wall s':>8} {'tokens':>7} {'tok/s':>8}  TFR")
    print(
        f"{'transformers loop':<26} {plain_s:8.1f} {plain_tokens:7d} "
        f"{plain_tokens / plain_s:8.1f}  {plain.tfr}"
    )
    print(
        f"{'flipsearch (' + engine.name + ')':<26} {fs_s:8.1f} {fs_tokens:7d} "
        f"{fs_tokens / fs_s:8.1f}  {fs.tfr}"
    )
    print(
        f"speed-up (wall): {plain_s / fs_s:.2f}x   (flipsearch engine start-up {load_s:.1f} s "
        f"not included; with it: {plain_s / (fs_s + load_s):.2f}x)"
    )


if __name__ == "__main__":
    main()
