"""Flip proxies against measured flip rates: rank agreement and cost per context.

For each prompt set, the same contexts (``search_efficiency.fixed_contexts``: distinct
paper_axes texts evenly spaced over the grammar, alternately system and prefix, plus the
four built-in references) are

- scored by generation (``FlipScorer``, greedy, ``--max-tokens``): TFR and refusal TFR;
- scored by each proxy design (``flipsearch.proxy``), forward passes only.

Reported: Spearman's rho of each proxy against TFR and refusal TFR with a bootstrap 95%
interval over contexts, and the cost per context of both, in seconds and in forward
tokens (whole-model equivalents; a generation costs its prompt plus every generated
token). The generation cost is timed on ``--cost-contexts`` contexts with an empty cache;
the measured rates may come from the warm cache. Goals (issue #13): rho >= 0.6 and a
cost >= 20x lower.

Example (CPU, about 30 min with the embedded model at one thread)::

    python benchmarks/proxy.py --out results/benchmarks/proxy.md
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from _common import machine_header
from search_efficiency import fixed_contexts

from flipsearch.cache import GenerationCache
from flipsearch.contexts import Context
from flipsearch.engines import EngineConfig
from flipsearch.engines.chat import render_prompt_ids
from flipsearch.flip import FlipScorer, ScoreSettings
from flipsearch.judges import JudgeConfig
from flipsearch.paths import cache_dir
from flipsearch.prompts import load_prompt_set
from flipsearch.proxy import (
    ANSWER_TOKENS,
    MAX_PROMPTS,
    DirectionTargets,
    direction_shift,
    fit_refusal_direction,
    likelihood_shift,
    prepare_proxies,
    rank_agreement,
    score_candidates,
)
from flipsearch.space import Candidate, load_search_space
from flipsearch.types import make_conversation

PROXIES = ("likelihood", "refusal_shift", "unsafe_drop", "direction", "direction_mid")
MEASURED = ("tfr", "tfr_refusal")


def generation_cost(engine, judge, contexts, harmful, max_tokens) -> tuple[float, float]:
    """Seconds and forward tokens per context of generation-based scoring, cache empty
    (the context-free answers excluded: both approaches need them once)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = GenerationCache(Path(tmp) / "cost.sqlite")
        scorer = FlipScorer(engine, judge, cache, ScoreSettings(max_tokens=max_tokens))
        scorer.score(Context(""), harmful)  # the context-free answers, not timed
        tokens_before = scorer.new_tokens
        start = time.perf_counter()
        prompt_tokens = 0
        for ctx in contexts:
            scorer.score(ctx, harmful)
            prompt_tokens += sum(
                len(render_prompt_ids(engine.tokenizer, ctx.apply(make_conversation(r.prompt))))
                for r in harmful
            )
        seconds = time.perf_counter() - start
        tokens = prompt_tokens + scorer.new_tokens - tokens_before
    return seconds / len(contexts), tokens / len(contexts)


def design_costs(setup, model, tokenizer, candidates) -> dict[str, tuple[float, float]]:
    """Seconds and forward tokens per context of each design alone."""
    assert setup.likelihood is not None and setup.direction is not None
    out = {}
    for design in ("likelihood", "direction"):
        start, tokens = time.perf_counter(), 0.0
        for cand in candidates:
            if design == "likelihood":
                tokens += likelihood_shift(
                    model, tokenizer, cand.context, setup.likelihood
                ).forward_tokens
            else:
                tokens += direction_shift(
                    model, tokenizer, cand.context, setup.direction
                ).forward_tokens
        out[design] = ((time.perf_counter() - start) / len(candidates), tokens / len(candidates))
    return out


def prescreen_lines(rows, measured, n_prompts, setup_generations, cost, gen_tokens) -> list[str]:
    """The prescreened search these numbers imply: keep the proxy's top N, score those by
    generation; is its winner the exhaustive winner (or inside its TFR 95% CI), and at
    what share of the exhaustive generations, the proxy's forward tokens counted as
    generations of the measured size (``gen_tokens`` forward tokens per context), and the
    set-up's generations (``setup_generations``) counted as if the cache were cold?"""
    best = max(rows, key=lambda r: measured[r.candidate_id]["tfr"])
    top = measured[best.candidate_id]
    exhaustive = (len(rows) + 1) * n_prompts  # every context + the context-free answers
    out = [
        f"Prescreened search over these {len(rows)} contexts (exhaustive: {exhaustive} "
        f"generations; winner TFR {top['tfr']:.3f} [{top['tfr_low']:.3f}, "
        f"{top['tfr_high']:.3f}]):",
        "",
        "| ranked by | N kept | winner's TFR | same winner | inside CI | generations incl. "
        "set-up (+ proxy as generations) | share of exhaustive |",
        "|---|---|---|---|---|---|---|",
    ]
    for design in ("likelihood", "direction"):
        ranked = sorted(rows, key=lambda r: -float(getattr(r, design)))
        proxy_generations = cost[design][1] * len(rows) / gen_tokens * n_prompts
        for n in [n for n in (1, 2, 4, 8) if n < len(rows)]:
            kept = ranked[:n]
            win = max(kept, key=lambda r: measured[r.candidate_id]["tfr"])
            tfr = measured[win.candidate_id]["tfr"]
            gens = (n + 1) * n_prompts + setup_generations
            total = gens + proxy_generations
            out.append(
                f"| {design} | {n} | {tfr:.3f} | {win.candidate_id == best.candidate_id} | "
                f"{top['tfr_low'] <= tfr <= top['tfr_high']} | {gens} (+{proxy_generations:.0f}) "
                f"| {total / exhaustive:.1%} |"
            )
    return [*out, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="harmful_core:search,advbench:search")
    ap.add_argument("--n-harmful", type=int, default=40)
    ap.add_argument("--contexts", type=int, default=44, help="grammar contexts + 4 references")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--cost-contexts", type=int, default=4)
    ap.add_argument(
        "--sweep-window", type=int, default=64,
        help="also time generation at this window, the sweep's default on a model that "
        "does not think (0: skip)",
    )  # fmt: skip
    ap.add_argument("--max-prompts", type=int, default=MAX_PROMPTS, help="0: all")
    ap.add_argument("--answer-tokens", type=int, default=ANSWER_TOKENS)
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "auto"])
    ap.add_argument("--out", default="results/benchmarks/proxy.md")
    args = ap.parse_args()
    machine = machine_header()
    contexts = fixed_contexts(args.contexts)
    candidates = [Candidate(id=name, context=ctx, choice={}) for name, ctx in contexts]
    engine = EngineConfig(engine=args.engine).build()
    if engine.name != "hf":
        from flipsearch.engines._hf import load_hf_model

        model, tokenizer = load_hf_model(engine.model_path, "float32")
    else:
        model, tokenizer = engine.model, engine.tokenizer  # type: ignore[attr-defined]
    judge = JudgeConfig().build()
    cache = GenerationCache(cache_dir() / "generations.sqlite")
    references = [c.context for c in load_search_space("baselines").enumerate()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Flip proxies against measured flip rates",
        "",
        f"Machine: {machine['cpu_model']}, capability {machine['capability']}, "
        f"native bf16 {machine['bf16_native']}, {machine['threads']} thread(s), "
        f"{machine['cores']} cores. Engine `{engine.name}`, greedy, {args.max_tokens} tokens, "
        f"judge `{judge.name}`; {len(contexts)} contexts ({len(contexts) - 4} distinct "
        "paper_axes texts evenly spaced over the grammar, alternately system and prefix, "
        "plus the 4 built-in references); "
        f"`python benchmarks/proxy.py --n-harmful {args.n_harmful} --contexts {args.contexts} "
        f"--max-prompts {args.max_prompts} --answer-tokens {args.answer_tokens}`.",
        "",
    ]
    csv_rows: list[dict[str, object]] = []
    for set_name in args.sets.split(","):
        harmful = load_prompt_set(set_name, limit=args.n_harmful).harmful()
        scorer = FlipScorer(engine, judge, cache, ScoreSettings(max_tokens=args.max_tokens))
        measured = {}
        start = time.perf_counter()
        for name, ctx in contexts:
            s = scorer.score(ctx, harmful).score
            measured[name] = {
                "tfr": s.tfr.value,
                "tfr_low": s.tfr.ci_low,
                "tfr_high": s.tfr.ci_high,
                "tfr_refusal": s.tfr_refusal.value,
            }
        seconds = time.perf_counter() - start
        print(f"{set_name}: measured {len(contexts)} contexts in {seconds:.0f} s")
        setup = prepare_proxies(
            scorer,
            model,
            tokenizer,
            harmful,
            opening_contexts=references,
            max_prompts=args.max_prompts or None,
            answer_tokens=args.answer_tokens,
        )
        rows = list(score_candidates(setup, model, tokenizer, candidates))
        # A variant: the direction restricted to the middle half of the blocks (Arditi et
        # al. search mid-depth layers); the default picks the best separating of all.
        n_layers = int(model.config.num_hidden_layers)
        mid = fit_refusal_direction(
            model,
            tokenizer,
            [r.prompt for r in load_prompt_set("harmful_core:train").harmful()],
            [r.prompt for r in load_prompt_set("benign:train").benign()],
            layers=range(n_layers // 4, 3 * n_layers // 4 + 1),
        )
        direction_prompts = [r.prompt for r in harmful][: args.max_prompts or None]
        mid_targets = DirectionTargets.build(model, tokenizer, mid, direction_prompts)
        extra = {
            c.id: {"direction_mid": direction_shift(model, tokenizer, c.context, mid_targets).score}
            for c in candidates
        }
        cost = design_costs(setup, model, tokenizer, candidates)
        timed = [c for _, c in contexts[: args.cost_contexts]]
        gen_secs, gen_tokens = generation_cost(engine, judge, timed, harmful, args.max_tokens)
        sweep_cost = (
            generation_cost(engine, judge, timed, harmful, args.sweep_window)
            if args.sweep_window and args.sweep_window != args.max_tokens
            else None
        )
        assert setup.likelihood is not None and setup.direction is not None
        lines += [
            f"## `{set_name}` ({len(harmful)} harmful prompts, "
            f"the proxies read the first {len(setup.likelihood.prompts)} base-unsafe ones, "
            f"{args.answer_tokens} answer token(s) each; the direction the first "
            f"{len(direction_prompts)})",
            "",
            f"Refusal openings: {len(setup.likelihood.openings)} "
            f"({', '.join(repr(tokenizer.decode(list(o))) for o in setup.likelihood.openings)}); "
            f"refusal direction at layer {setup.direction.direction.layer} "
            f"(held-out separation d = {max(setup.direction.direction.separation.values()):.2f}); "
            f"`direction_mid`: layers {n_layers // 4}..{3 * n_layers // 4}, picked "
            f"{mid.layer} (d = {mid.separation[mid.layer]:.2f}).",
            "",
            "| proxy | Spearman vs TFR [95% CI] | Spearman vs refusal TFR [95% CI] |",
            "|---|---|---|",
        ]
        for proxy in PROXIES:
            xs = [float({**r.to_dict(), **extra[r.candidate_id]}[proxy]) for r in rows]  # type: ignore[arg-type]
            cells = [
                str(rank_agreement(xs, [measured[r.candidate_id][m] for r in rows]))
                for m in MEASURED
            ]
            lines.append(f"| {proxy} | {cells[0]} | {cells[1]} |")
        tfrs = [measured[r.candidate_id]["tfr"] for r in rows]
        lines += [
            "",
            f"Measured TFR over the contexts: min {min(tfrs):.3f}, max {max(tfrs):.3f}.",
            "",
            "| cost per context | seconds | forward tokens |",
            "|---|---|---|",
            f"| generation (greedy, {args.max_tokens} tokens, timed on "
            f"{args.cost_contexts} contexts, empty cache) | {gen_secs:.2f} | {gen_tokens:.0f} |",
            *(
                f"| {design} (ratio: generation / proxy) | {secs:.2f} "
                f"({gen_secs / secs:.1f}x) | {tokens:.0f} ({gen_tokens / tokens:.1f}x) |"
                for design, (secs, tokens) in cost.items()
            ),
        ]
        if sweep_cost is not None:
            sw_secs, sw_tokens = sweep_cost
            lines += [
                f"| generation at the sweep's default window ({args.sweep_window} tokens, same "
                f"contexts, empty cache) | {sw_secs:.2f} | {sw_tokens:.0f} |",
                *(
                    f"| {design} (ratio: {args.sweep_window}-token generation / proxy) | "
                    f"{secs:.2f} ({sw_secs / secs:.1f}x) | {tokens:.0f} "
                    f"({sw_tokens / tokens:.1f}x) |"
                    for design, (secs, tokens) in cost.items()
                ),
            ]
        lines += [
            "",
            f"Set-up, once per prompt set: {setup.generations} new generations "
            f"({setup.new_tokens} tokens; 0 with a warm cache), {setup.seconds:.1f} s.",
            "",
        ]
        # Set-up counted cold: the reference contexts' answers that give the refusal openings.
        setup_generations = len(references) * len(setup.likelihood.prompts)
        lines += prescreen_lines(rows, measured, len(harmful), setup_generations, cost, gen_tokens)
        for r in rows:
            row = {"set": set_name, **r.to_dict(), **extra[r.candidate_id]}
            csv_rows.append({**row, **measured[r.candidate_id]})
        print("\n".join(lines[-20:]))
    out.write_text("\n".join(lines))
    with out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    print(f"wrote {out} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
