"""Search efficiency: a pruned sweep against exhaustive scoring of the same contexts.

Both arms see the same fixed list of contexts (``--contexts - 4`` distinct texts of
``paper_axes`` plus the four of ``baselines``; ``--contexts all``: every context of the
grammar, both placements, plus the baselines) on the same prompts:

- exhaustive: every context on every harmful and benign prompt;
- sweep: :func:`flipsearch.sweep.run_sweep` as a user runs it: the known baselines
  first (``SweepConfig.baselines``), then each searched context once (``bruteforce``),
  with the default ``race`` pruner checking after every harmful minibatch; only trials
  that survive are scored on the benign prompts;
- batched race: the same sweep with ``race_width`` (``--race-width``, default all the
  contexts): each round, one generation request holds the next minibatch of every live
  context, so the engine batches across contexts (:mod:`flipsearch.sweep._waves`);
- prescreened race (``--prescreen N``): the batched race after a generation-free proxy
  (``SweepConfig.prescreen``, :mod:`flipsearch.proxy`) ranked every searched context and
  kept the best N; the baselines are raced with them. The proxy's forward tokens are
  charged as generations: divided by the exhaustive arm's forward tokens per generation
  (prompt plus generated tokens).

Each arm reports generations, generated tokens, engine calls and wall time; ``--arms``
picks which of them run (the exhaustive arm always runs).

The default prompt sets are the search splits of the built-in sets, 27 harmful and 27
benign prompts, scored in a 24-token window.

Each arm has its own fresh cache, and generations are counted the same way in both:
cache misses, the context-free baseline included (both generate it once per prompt).
``--exhaustive-cache PATH`` keeps the exhaustive arm's cache there instead, so a long
exhaustive arm (the whole grammar: 35k generations, about 13 h on a 2-core CPU) resumes
where a stopped run left off; its generations are then counted as the arm needs them
(every context and the context-free baseline on every prompt), and its seconds and
tokens are those of the runs that made them, kept beside the cache (``PATH.cost.json``,
:class:`ExhaustiveCost`; a cache without a record, or one filled on another machine
type, is refused; generations a killed run left unrecorded are charged at the recorded
rate, and the output says so). ``--arms none`` runs the exhaustive arm alone.
The goal is a sweep using <= 35% of the exhaustive generations whose winner is the
exhaustive winner, or lies inside the exhaustive winner's TFR 95% interval.

Example (CPU, a few minutes with the embedded model)::

    python benchmarks/search_efficiency.py
    python benchmarks/search_efficiency.py --n-harmful 27 --n-benign 30 --contexts 32 --engine vllm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import yaml
from _common import machine_header
from tqdm.auto import tqdm

from flipsearch.cache import GenerationCache
from flipsearch.contexts import Context, check_placement
from flipsearch.engines import Engine, EngineConfig, engine_choice_record
from flipsearch.engines.chat import render_prompt_ids
from flipsearch.flip import FlipScorer, ScoreSettings
from flipsearch.judges import JudgeConfig
from flipsearch.prompts import load_prompt_set
from flipsearch.proxy import RANKINGS
from flipsearch.scoring import summarise
from flipsearch.space import load_search_space
from flipsearch.sweep import PRUNERS, SweepConfig, run_sweep
from flipsearch.trials import ranked_trials, rate_of


def fixed_contexts(n: int | None) -> list[tuple[str, Context]]:
    """``n`` contexts: ``n - 4`` distinct texts of paper_axes, evenly spaced over its
    enumeration so every axis varies, placed alternately as a system message and a
    user-turn prefix, then the four baselines (last). None: every context of paper_axes
    (each text in both placements), then the baselines."""
    references = load_search_space("baselines").enumerate()
    baselines = [(c.id.split("@")[0], c.context) for c in references]
    if n is None:
        every = load_search_space("paper_axes").enumerate()
        return [(c.id.split("@")[0], c.context) for c in every] + baselines
    if n < 5:
        raise SystemExit(f"--contexts must be >= 5, got {n}")
    distinct, seen = [], set()
    for c in load_search_space("paper_axes").enumerate():
        if c.context.text not in seen:
            seen.add(c.context.text)
            distinct.append(c)
    want = n - 4
    if want > len(distinct):
        raise SystemExit(f"--contexts must be <= {len(distinct) + 4}, got {n}")
    picked = [distinct[i * len(distinct) // want] for i in range(want)]
    grammar = [
        (
            c.id.split("|placement=")[0] + f"|placement={p}",
            Context(c.context.text, check_placement(p)),
        )
        for c, p in zip(picked, ["system", "prefix"] * want, strict=False)
    ]
    return grammar + baselines


def write_list_space(path: Path, contexts: list[tuple[str, Context]]) -> None:
    cands = [
        {"id": f"c{i:02d}", "text": ctx.text, "placement": ctx.placement}
        for i, (_, ctx) in enumerate(contexts)
    ]
    doc = {"name": "efficiency", "placement": "system", "candidates": cands}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


class CountingEngine:
    """Delegates to an engine and counts its generate calls and generated tokens."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.calls = 0
        self.tokens = 0
        self.prompt_tokens = 0

    def generate(self, conversations, sampling, **kw):  # type: ignore[no-untyped-def]
        outs = self._engine.generate(conversations, sampling, **kw)
        self.calls += 1
        self.tokens += sum(len(g.token_ids) for gens in outs for g in gens)
        tokenizer = getattr(self._engine, "tokenizer", None)
        if tokenizer is not None:
            self.prompt_tokens += sum(
                len(render_prompt_ids(tokenizer, conv)) * sampling.n for conv in conversations
            )
        return outs

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)


ARMS = ("sweep", "batched", "prescreened")


class ExhaustiveCost:
    """What making the exhaustive arm's cache cost, kept beside it (``CACHE.cost.json``)
    and added to by every run that generates into it, so a resumed run charges the arms
    against the runs that made the generations, not against reading them back."""

    FIELDS = ("generations", "seconds", "generated_tokens", "prompt_tokens", "engine_calls")

    def __init__(self, cache: Path, machine: dict[str, object]) -> None:
        self.path = Path(f"{cache}.cost.json")
        self.totals: dict[str, float] = dict.fromkeys(self.FIELDS, 0.0)
        self.machines: list[dict[str, object]] = []
        if self.path.exists():
            record = json.loads(self.path.read_text())
            self.totals = {k: float(record[k]) for k in self.FIELDS}
            self.machines = list(record["machines"])
        self.machine = json.loads(json.dumps(machine))  # as the record holds it

    def add(self, **made: float) -> None:
        for k in self.FIELDS:
            self.totals[k] += made[k]
        if made["generations"] and self.machine not in self.machines:
            self.machines.append(self.machine)
        record = json.dumps({**self.totals, "machines": self.machines}, indent=2)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(record)
        partial.replace(self.path)  # atomic: a kill leaves the old record or the new one

    def on_this_machine(self) -> bool:
        """Whether every recorded generation was made on this machine type."""
        return self.machines == [self.machine]


def rank_key(tfr: float, over: float, max_over: float) -> tuple[bool, float, float]:
    # The sweep's ranking: feasible first, then TFR down, over-refusal up.
    return (over > max_over, -tfr, over)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--harmful", default="harmful_core:search")
    ap.add_argument("--benign", default="benign:search")
    ap.add_argument("--n-harmful", type=int, default=27)
    ap.add_argument("--n-benign", type=int, default=27, help="as many as harmful by default")
    ap.add_argument(
        "--contexts", default="16",
        help="contexts in the list (>= 5), or all: the whole paper_axes grammar (default 16)",
    )  # fmt: skip
    ap.add_argument(
        "--exhaustive-cache", default=None,
        help="keep the exhaustive arm's generation cache here, so a stopped run resumes",
    )  # fmt: skip
    ap.add_argument(
        "--exhaustive-batch", type=int, default=1,
        help="contexts per engine call in the exhaustive arm (default 1: one context, all "
        "its prompts, per call; more lets vLLM batch across contexts)",
    )  # fmt: skip
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "auto"])
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--minibatch", type=int, default=2)
    ap.add_argument("--pruner", default="race", choices=PRUNERS)
    ap.add_argument("--max-over-refusal", type=float, default=0.1)
    ap.add_argument(
        "--race-width", type=int, default=None,
        help="contexts per wave in the batched-race arm (default: all of them)",
    )  # fmt: skip
    ap.add_argument(
        "--arms", default="sweep,batched",
        help="comma-separated arms besides the exhaustive one: sweep, batched, prescreened; "
        "none: the exhaustive arm alone",
    )  # fmt: skip
    ap.add_argument(
        "--prescreen", default="8",
        help="contexts the proxy keeps in the prescreened arm; a comma-separated list "
        "runs one arm per value (default 8)",
    )  # fmt: skip
    ap.add_argument(
        "--prescreen-by", default="likelihood", choices=RANKINGS, help="what the prescreen ranks by"
    )
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    machine = machine_header()
    wanted = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(wanted) - set(ARMS) - {"none"})
    if unknown or not wanted:
        raise SystemExit(f"--arms must name some of {', '.join(ARMS)}, got {args.arms!r}")
    try:
        keep_counts = [int(n) for n in args.prescreen.split(",")]
    except ValueError:
        keep_counts = []
    if not keep_counts or min(keep_counts) < 1:
        raise SystemExit(f"--prescreen must be integers >= 1, got {args.prescreen!r}")

    if args.exhaustive_batch < 1:
        raise SystemExit(f"--exhaustive-batch must be >= 1, got {args.exhaustive_batch}")
    if args.contexts != "all" and not args.contexts.isdigit():
        raise SystemExit(f"--contexts must be an integer or all, got {args.contexts!r}")
    contexts = fixed_contexts(None if args.contexts == "all" else int(args.contexts))
    harmful = load_prompt_set(args.harmful, limit=args.n_harmful).harmful()
    benign = load_prompt_set(args.benign, limit=args.n_benign).benign()
    engine_cfg = EngineConfig(engine=args.engine)
    engine = CountingEngine(engine_cfg.build())
    judge = JudgeConfig().build()
    tmp = Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    print(
        f"{len(contexts)} contexts x ({len(harmful)} harmful + {len(benign)} benign) prompts, "
        f"engine {engine.name}, max_tokens {args.max_tokens}; work dir {tmp}"
    )

    # ---- exhaustive: every context on every prompt
    resumed = args.exhaustive_cache is not None
    cache_path = Path(args.exhaustive_cache or tmp / "exhaustive.sqlite")
    cache_a = GenerationCache(cache_path)
    cost = ExhaustiveCost(cache_path, machine)
    scorer = FlipScorer(engine, judge, cache_a, ScoreSettings(max_tokens=args.max_tokens))  # type: ignore[arg-type]
    exhaustive = {}
    rows = list(harmful) + list(benign)
    step = args.exhaustive_batch
    with tqdm(total=len(contexts), desc="exhaustive", unit="context", disable=not resumed) as bar:
        for start in range(0, len(contexts), step):
            chunk = contexts[start : start + step]
            before = (cache_a.stats.generation_misses, engine.tokens, engine.prompt_tokens)
            chunk_start, calls = time.perf_counter(), engine.calls
            outcomes = scorer.outcomes_many([(ctx, rows) for _, ctx in chunk])
            for (name, ctx), outs in zip(chunk, outcomes, strict=True):
                exhaustive[(ctx.text, ctx.placement)] = (name, summarise(outs))
            made = cache_a.stats.generation_misses - before[0]
            if made:  # recorded per chunk: a stopped run keeps what it paid for
                cost.add(
                    generations=made,
                    seconds=time.perf_counter() - chunk_start,
                    generated_tokens=engine.tokens - before[1],
                    prompt_tokens=engine.prompt_tokens - before[2],
                    engine_calls=engine.calls - calls,
                )
            bar.update(len(chunk))
    # Greedy, one answer per prompt: each context on every prompt, plus the baseline.
    needed = (len(contexts) + 1) * (len(harmful) + len(benign))
    made_here = cache_a.stats.generation_misses
    recorded = cost.totals["generations"]
    if not recorded or not cost.on_this_machine():
        raise SystemExit(
            f"{cost.path} records {recorded:.0f} of the exhaustive arm's {needed} "
            f"generations, made on {cost.machines} (this machine: {machine}): the arms "
            "cannot be charged against it. Fill the cache on this machine type with this "
            "script (a stopped run resumes and adds to the record)."
        )
    # A run killed between a chunk's cache write and its record leaves generations
    # unrecorded: charge them at the recorded rate, and say so.
    scale = needed / recorded if recorded < needed else 1.0
    gens_a = needed
    secs_a = cost.totals["seconds"] * scale
    tokens_a = int(cost.totals["generated_tokens"] * scale)
    calls_a = int(cost.totals["engine_calls"])
    forward_per_generation = (
        cost.totals["generated_tokens"] + cost.totals["prompt_tokens"]
    ) / recorded
    print(
        f"exhaustive arm: {made_here} of its {needed} generations made in this run, "
        f"{needed - made_here} read from {cache_path}; its cost, from {cost.path}: "
        f"{secs_a:.0f} s, {forward_per_generation:.1f} forward tokens per generation"
        + (f" ({needed - recorded:.0f} unrecorded generations charged at the recorded rate)"
           if scale > 1 else "")
    )  # fmt: skip

    # ---- the pruned sweep over the same list, one trial at a time and in waves
    space = tmp / "efficiency.yaml"
    n_baselines = 4  # fixed_contexts puts the four `baselines` last
    n_searched = len(contexts) - n_baselines
    write_list_space(space, contexts[:n_searched])  # the baselines come through `baselines`
    config = SweepConfig(
        space=str(space),
        study="efficiency",
        trials=len(contexts),
        baselines="baselines",
        engine=engine_cfg,
        harmful=args.harmful,
        benign=args.benign,
        limit_harmful=args.n_harmful,
        limit_benign=args.n_benign,
        max_tokens=args.max_tokens,
        sampler="bruteforce",
        pruner=args.pruner,
        minibatch=args.minibatch,
        max_over_refusal=args.max_over_refusal,
        results_dir=str(tmp / "results"),
        show_progress=False,
    )
    arms = {}
    width = args.race_width or len(contexts)
    configs = {
        "sweep": config,
        "batched": dataclasses.replace(config, race_width=width, study="batched"),
    }
    for n in keep_counts:
        configs[f"prescreened {n}"] = dataclasses.replace(
            config,
            race_width=min(width, n + n_baselines),
            study=f"prescreened-{n}",
            prescreen=n,
            prescreen_by=args.prescreen_by,
            trials=n + n_baselines,  # the kept contexts and the baselines, nothing more
        )
    run_arms = [a for a in configs if a.split(" ")[0] in wanted]
    for arm in run_arms:
        cfg = configs[arm]
        before_tokens, before_calls = engine.tokens, engine.calls
        t0 = time.perf_counter()
        cache = GenerationCache(tmp / f"{cfg.study}.sqlite")
        arm_study = run_sweep(cfg, engine=engine, judge=judge, cache=cache)  # type: ignore[arg-type]
        arms[arm] = (
            arm_study,
            cache.stats.generation_misses,
            time.perf_counter() - t0,
            engine.tokens - before_tokens,
            engine.calls - before_calls,
        )

    # ---- compare winners
    m = args.max_over_refusal
    ex_name, ex_best = min(
        exhaustive.values(),
        key=lambda v: rank_key(v[1].tfr.value, v[1].over_refusal.value, m),
    )
    print(
        f"exhaustive:   {gens_a} generations, {tokens_a} tokens, {calls_a} engine calls in "
        f"{secs_a:.0f} s; winner {ex_name}: TFR {ex_best.tfr}, over-refusal "
        f"{ex_best.over_refusal.value:.3f}"
    )
    # The exhaustive ranking (list order breaks ties), to place each arm's winner in it.
    order = sorted(
        exhaustive,
        key=lambda k: rank_key(exhaustive[k][1].tfr.value, exhaustive[k][1].over_refusal.value, m),
    )
    results = {}
    for arm, (arm_study, gens, secs, tokens, calls) in arms.items():
        best = ranked_trials(arm_study)[0]
        key = (best.user_attrs["context"], best.user_attrs["placement"])
        name, exh = exhaustive[key]
        rank = order.index(key) + 1
        same = name == ex_name
        inside = ex_best.tfr.ci_low <= exh.tfr.value <= ex_best.tfr.ci_high
        pruned = sum(t.state.name == "PRUNED" for t in arm_study.trials)
        screen = arm_study.user_attrs.get("prescreen")
        proxy_generations = screen["forward_tokens"] / forward_per_generation if screen else 0.0
        charged = gens + proxy_generations
        results[arm] = {
            "generations": gens, "ratio": gens / gens_a, "tokens": tokens,
            "engine_calls": calls, "seconds": round(secs, 1), "time_ratio": secs / secs_a,
            "same_winner": same, "inside_ci": inside, "pruned": pruned, "winner": name,
            "proxy_generations": round(proxy_generations, 1),
            "charged_ratio": charged / gens_a, "prescreen": screen,
            "winner_exhaustive_rank": rank, "winner_exhaustive_tfr": exh.tfr.value,
            "winner_exhaustive_over_refusal": exh.over_refusal.value,
        }  # fmt: skip
        if screen:
            kept = [cid for cid, _ in screen["kept"]]
            print(
                f"{arm + ':':13s} the proxy ({screen['by']}) ranked {screen['contexts']} "
                f"contexts in {screen['seconds']:.0f} s, {screen['forward_tokens']:.0f} forward "
                f"tokens = {proxy_generations:.0f} generations' worth; kept {kept}"
            )
        print(
            f"{arm + ':':13s} {gens} generations ({gens / gens_a:.1%}; "
            f"{charged / gens_a:.1%} with the proxy charged), {tokens} tokens, "
            f"{calls} engine calls in {secs:.0f} s ({secs / secs_a:.0%} of exhaustive); "
            f"{pruned} of {len(arm_study.trials)} trials pruned; winner {name} "
            # The best trial is a scored one: its tfr rate is there.
            f"(TFR {rate_of(best, 'tfr')['value']:.3f}); the exhaustive winner: {same}; "  # type: ignore[index]
            f"inside its TFR CI: {inside}; exhaustive rank {rank} (TFR {exh.tfr.value:.3f}, "
            f"over-refusal {exh.over_refusal.value:.3f})"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "engine_choice": engine_choice_record(engine),
                    "contexts": len(contexts),
                    "n_harmful": len(harmful),
                    "n_benign": len(benign),
                    "engine": engine.name,
                    "pruner": args.pruner,
                    "minibatch": args.minibatch,
                    "exhaustive_generations": gens_a,
                    "exhaustive_tokens": tokens_a,
                    "exhaustive_forward_tokens_per_generation": forward_per_generation,
                    "exhaustive_engine_calls": calls_a,
                    "exhaustive_seconds": round(secs_a, 1),
                    "exhaustive_batch": args.exhaustive_batch,
                    "arms": results,
                    "exhaustive_winner": ex_name,
                    "harmful": args.harmful,
                    "benign": args.benign,
                    "max_tokens": args.max_tokens,
                    "exhaustive_tfr": {
                        name: score.tfr.value for name, score in exhaustive.values()
                    },
                    "exhaustive_over_refusal": {
                        name: score.over_refusal.value for name, score in exhaustive.values()
                    },
                    "exhaustive_winner_tfr_ci": [ex_best.tfr.ci_low, ex_best.tfr.ci_high],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
