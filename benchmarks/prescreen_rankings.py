"""Which proxy ranking would a prescreen trust? Every proxy column against exhaustive rates.

Reads the exhaustive arm of ``benchmarks/search_efficiency.py --out`` (each context's TFR
and over-refusal, the winner's TFR interval) and a ``flipsearch proxy`` CSV of the same
contexts, and for each proxy column (``likelihood`` and its two terms ``refusal_shift``
and ``unsafe_drop``, ``direction``, ``selective``, and ``benign`` negated) reports

- Spearman's rho with a bootstrap 95% interval against TFR, over-refusal and feasible
  TFR (TFR where over-refusal is within the limit, else 0);
- for each N of ``--keep``: the best context of the column's top N by the sweep's rule
  (feasible first, then TFR), whether it lies inside the exhaustive winner's interval, and
  how many of the top N do; beside it, the chance that N contexts drawn at random hold one.

No generation and no model: the top-N rows say what a race over the kept contexts could
find at best, not what a race did (``search_efficiency.py --arms prescreened`` measures
that).

Example::

    flipsearch proxy --space paper_axes --design likelihood,direction \\
        --harmful harmful_core:search --limit 27 --benign benign:search --out proxy.csv
    python benchmarks/prescreen_rankings.py \\
        --exhaustive results/benchmarks/search_efficiency_grammar.json \\
        --proxy proxy.csv --out results/benchmarks/prescreen_rankings.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from search_efficiency import rank_key

from flipsearch.proxy import rank_agreement

COLUMNS = ("likelihood", "refusal_shift", "unsafe_drop", "direction", "selective", "benign")
"""Proxy columns read from the CSV; ``benign`` is negated (higher: less over-refusal)."""


def chance_of_a_hit(total: int, hits: int, n: int) -> float:
    """P(n contexts drawn without replacement from ``total`` hold at least one of ``hits``)."""
    if n > total - hits:
        return 1.0
    return 1.0 - math.comb(total - hits, n) / math.comb(total, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exhaustive", required=True, help="search_efficiency.py --out JSON")
    ap.add_argument("--proxy", required=True, help="flipsearch proxy CSV of the same contexts")
    ap.add_argument("--keep", default="4,8,16,32", help="comma-separated N of the top N")
    ap.add_argument("--max-over-refusal", type=float, default=0.1)
    ap.add_argument("--out", help="JSON to write")
    args = ap.parse_args()

    record = json.loads(Path(args.exhaustive).read_text())
    tfr, over = record["exhaustive_tfr"], record["exhaustive_over_refusal"]
    low, high = record["exhaustive_winner_tfr_ci"]
    limit = args.max_over_refusal
    keep = [int(n) for n in args.keep.split(",")]

    with open(args.proxy, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    # A space's candidate id is its choice, then "@" and a hash of its text.
    names = [r["candidate_id"].split("@")[0] for r in rows]
    missing = [n for n in names if n not in tfr]
    if missing:
        raise SystemExit(
            f"{args.proxy}: {len(missing)} contexts have no exhaustive rates in "
            f"{args.exhaustive} (first: {missing[0]!r}); score the same space in both"
        )
    columns = [c for c in COLUMNS if c in rows[0] and all(r[c] != "" for r in rows)]

    def rule(name: str) -> tuple[bool, float, float]:
        return rank_key(tfr[name], over[name], limit)

    def hit(name: str) -> bool:
        return over[name] <= limit and tfr[name] >= low

    order = sorted(tfr, key=rule)
    hits = sum(hit(n) for n in names)
    t = [tfr[n] for n in names]
    o = [over[n] for n in names]
    feasible = [tfr[n] if over[n] <= limit else 0.0 for n in names]
    print(
        f"{len(names)} contexts scored by the proxy; {len(tfr)} with exhaustive rates; "
        f"winner TFR interval [{low:.3f}, {high:.3f}]; {hits} proxy-scored contexts are "
        f"feasible (over-refusal <= {limit}) with TFR inside it"
    )
    results: dict[str, dict[str, object]] = {}
    for column in columns:
        sign = -1.0 if column == "benign" else 1.0
        score = [sign * float(r[column]) for r in rows]
        ranked = [names[i] for i in sorted(range(len(names)), key=lambda i: -score[i])]
        vs_tfr, vs_over = rank_agreement(score, t), rank_agreement(score, o)
        vs_feasible = rank_agreement(score, feasible)
        entry: dict[str, object] = {
            "rho_tfr": vars(vs_tfr),
            "rho_over_refusal": vars(vs_over),
            "rho_feasible_tfr": vars(vs_feasible),
        }
        tops = {}
        for n in keep:
            best = min(ranked[:n], key=rule)
            tops[n] = {
                "best": best,
                "tfr": tfr[best],
                "over_refusal": over[best],
                "exhaustive_rank": order.index(best) + 1,
                "inside_ci": hit(best),
                "hits_in_top": sum(hit(x) for x in ranked[:n]),
                "chance_at_random": chance_of_a_hit(len(names), hits, n),
            }
        entry["top"] = tops
        results[column] = entry
        label = f"-{column}" if sign < 0 else column
        print(
            f"{label:14s} rho vs TFR {vs_tfr.rho:+.2f}, vs over-refusal {vs_over.rho:+.2f}, "
            f"vs feasible TFR {vs_feasible.rho:+.2f}"
        )
        for n, top in tops.items():
            print(
                f"{'':14s} top {n:3d}: best {top['tfr']:.3f}/{top['over_refusal']:.3f} "
                f"(rank {top['exhaustive_rank']}), inside the CI: {top['inside_ci']}; "
                f"{top['hits_in_top']} hits (at random: P(>=1) = {top['chance_at_random']:.2f})"
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "exhaustive": args.exhaustive,
                    "proxy": args.proxy,
                    "contexts": len(names),
                    "max_over_refusal": limit,
                    "winner_tfr_ci": [low, high],
                    "hits": hits,
                    "columns": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
