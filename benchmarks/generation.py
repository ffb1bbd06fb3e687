"""Generation throughput: ``HFEngine`` vs ``VLLMEngine`` on the same chat workload.

64 chat prompts x 128 new tokens with a shared ~180-token system message, greedy.
Both engines run in this one process, one after the other, and the script prints
tokens/s side by side with the ratio (vLLM / HF).

Run:
    .venv/bin/python benchmarks/generation.py                 # the default workload
    .venv/bin/python benchmarks/generation.py --n-prompts 8 --max-tokens 32   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json

from _common import SYSTEM_MESSAGE, chat_prompts, machine_header, timed

from flipsearch.engines import EngineConfig
from flipsearch.types import Sampling, make_conversation


def measure(config: EngineConfig, convs: list, sampling: Sampling) -> dict[str, float]:
    engine, load_s = timed(config.build)
    print(f"  {engine.choice.describe()}", flush=True)  # type: ignore[attr-defined]
    engine.generate(convs[:2], Sampling(greedy=True, max_tokens=4))  # warm-up
    outs, gen_s = timed(lambda: engine.generate(convs, sampling))
    tokens = sum(len(g.token_ids) for gens in outs for g in gens)
    engine.close()
    gc.collect()
    return {"load_s": load_s, "generate_s": gen_s, "tokens": tokens, "tok_per_s": tokens / gen_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--hf-dtype", default="auto")
    parser.add_argument("--vllm-dtype", default="bfloat16")
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument(
        "--vllm-compile",
        action="store_true",
        help="also measure vLLM with torch.compile (minutes of start-up on CPU)",
    )
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    machine = machine_header()

    system = {"role": "system", "content": SYSTEM_MESSAGE}
    convs = [
        make_conversation([system, {"role": "user", "content": p}])
        for p in chat_prompts(args.n_prompts)
    ]
    sampling = Sampling(greedy=True, max_tokens=args.max_tokens)
    arms = {
        "hf": EngineConfig(
            model=args.model, engine="hf", dtype=args.hf_dtype, batch_size=args.hf_batch_size
        ),
        "vllm": EngineConfig(model=args.model, engine="vllm", dtype=args.vllm_dtype),
    }
    if args.vllm_compile:
        arms["vllm-compiled"] = EngineConfig(
            model=args.model, engine="vllm", dtype=args.vllm_dtype, enforce_eager=False
        )
    results = {}
    for name, config in arms.items():
        print(f"measuring {name} ...", flush=True)
        results[name] = measure(config, convs, sampling)
    base = results["hf"]["tok_per_s"]
    print(f"\n{args.n_prompts} prompts x {args.max_tokens} new tokens, greedy, model {args.model}")
    print(f"{'engine':<14} {'load s':>7} {'gen s':>8} {'tokens':>7} {'tok/s':>8} {'vs hf':>7}")
    for name, r in results.items():
        print(
            f"{name:<14} {r['load_s']:7.1f} {r['generate_s']:8.1f} {r['tokens']:7d} "
            f"{r['tok_per_s']:8.1f} {r['tok_per_s'] / base:6.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
