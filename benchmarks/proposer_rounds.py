"""Reflective rewrite rounds on the embedded model: is a round's best child better than
its parent?

Runs a small sweep (:func:`flipsearch.sweep.run_sweep`, no pruner so every context is
scored on every prompt and the CIs compare like with like) with ``rewrite_rounds``, then
prints, per round, the parent (the incumbent the proposer rewrote) and every child it
proposed with TFR, refusal TFR and over-refusal (95% Wilson CIs), the child's source
(``rewrite``: parsed from the proposer's answer; ``rewrite-fallback``: mechanical
mutations because nothing usable came back), the proposer's counts and the wall time.

Example (CPU, about 10 minutes with the embedded model)::

    OMP_NUM_THREADS=1 python benchmarks/proposer_rounds.py --trials 4 --rounds 2 --per-round 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import machine_header

from flipsearch.engines import EngineConfig
from flipsearch.proposers import CandidatePool
from flipsearch.sweep import SweepConfig, recorded_rounds, run_sweep
from flipsearch.trials import rate_of


def _fmt(rate: dict | None) -> str:
    if not rate:
        return "–"
    ci = f"[{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]"
    return f"{rate['value']:.3f} {ci} ({rate['k']:g}/{rate['n']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--proposer-model", default=None, help="default: --model")
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--space", default="paper_axes")
    ap.add_argument("--harmful", default="harmful_core:search")
    ap.add_argument("--benign", default="benign:search")
    ap.add_argument("--n-harmful", type=int, default=16)
    ap.add_argument("--n-benign", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-round", type=int, default=4)
    ap.add_argument("--proposer-max-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-over-refusal", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="study folder parent (default: a temp dir)")
    args = ap.parse_args()

    root = Path(args.out or tempfile.mkdtemp(prefix="proposer-rounds-"))
    config = SweepConfig(
        space=args.space,
        study="proposer_rounds",
        trials=args.trials,
        engine=EngineConfig(model=args.model, engine=args.engine),
        harmful=args.harmful,
        benign=args.benign,
        limit_harmful=args.n_harmful,
        limit_benign=args.n_benign,
        max_tokens=args.max_tokens,
        max_over_refusal=args.max_over_refusal,
        pruner="none",
        sampler="random",
        seed=args.seed,
        results_dir=str(root),
        cache=str(root / "cache.sqlite"),
        rewrite_rounds=args.rounds,
        rewrite_n=args.per_round,
        proposer_model=args.proposer_model,
        proposer_max_tokens=args.proposer_max_tokens,
        show_progress=False,
    )
    start = time.perf_counter()
    study = run_sweep(config)
    wall = time.perf_counter() - start
    pool = CandidatePool(config.folder / "pool.jsonl")
    by_cid = {
        t.user_attrs.get("candidate_id"): t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("scores") and t.user_attrs.get("duplicate_of") is None
    }

    machine_header()
    print(f"config: {json.dumps(config.to_dict(masked=True))}")
    print(f"wall: {wall:.0f} s; finished trials: {len(by_cid)}")
    head = (
        "| role | trial | source | TFR [95% CI] (k/n) | refusal TFR | over-refusal | placement "
        "| context |"
    )
    for r, rec in sorted(recorded_rounds(study).items()):
        print(
            f"\n### Round {r}: {rec['source']}, answers {rec.get('answers')}, parsed "
            f"{rec.get('parsed')}, unparsable {rec.get('unparsable')}, unusable "
            f"{rec.get('unusable')}, shown {len(rec['shown'])} prompts\n"
        )
        print(head)
        print("|---|---|---|---|---|---|---|---|")
        for role, cid in [("parent", rec["parent"])] + [("child", c) for c in rec["added"]]:
            t = by_cid.get(cid)
            if t is None:
                print(f"| {role} | – | – | not scored | | | | `{cid}` |")
                continue
            source = pool.get(cid).source if cid in pool else "space"
            text = " ".join(str(t.user_attrs["context"]).split()).replace("|", "\\|")
            print(
                f"| {role} | {t.number} | {source} | {_fmt(rate_of(t, 'tfr'))} | "
                f"{_fmt(rate_of(t, 'tfr_refusal'))} | {_fmt(rate_of(t, 'over_refusal'))} | "
                f"{t.user_attrs['placement']} | {text[:140]} |"
            )


if __name__ == "__main__":
    main()
