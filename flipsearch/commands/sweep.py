"""``flipsearch sweep``: search a space of safety contexts with Optuna (see flipsearch.sweep).

Example (CPU smoke run)::

    flipsearch sweep --space paper_axes --study smoke --trials 6 \\
        --engine hf --max-tokens 24 --limit-harmful 8 --limit-benign 4 --minibatch 4

The benign context I_b (searched on benign prompts only: most answered, none lost)::

    flipsearch sweep --target benign --study smoke-ib --trials 6 --engine hf \
        --max-tokens 24 --limit-benign 8 --minibatch 4

Run the same command again to resume (it adds trials up to ``--trials``); start it in
several shells on one ``--storage`` (e.g. ``results/S/study.log``) to run workers.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from flipsearch.commands._common import (
    add_cache_args,
    add_engine_args,
    add_judge_args,
    add_study_args,
    engine_and_judge_configs,
)
from flipsearch.contexts import PLACEMENTS
from flipsearch.proxy import RANKINGS as PRESCREEN_RANKINGS

if TYPE_CHECKING:
    from flipsearch.sweep import SweepConfig


def register(sub: argparse._SubParsersAction) -> None:
    from flipsearch.scoring import OBJECTIVE_METRICS
    from flipsearch.sweep import OBJECTIVES, PRUNERS, SAMPLERS, TARGETS

    p = sub.add_parser(
        "sweep",
        help="search for the safety context with the best flip rate",
        description=__doc__.splitlines()[0],
    )
    s = p.add_argument_group("search")
    s.add_argument(
        "--target",
        default="harmful",
        choices=TARGETS,
        help="harmful: search I_h (flips on harmful prompts, default); benign: search I_b "
        "(helpful share on the benign prompts, no loss against no context)",
    )
    s.add_argument(
        "--space",
        default=None,
        help="search-space YAML or bare name (default: paper_axes, or benign with --target benign)",
    )
    s.add_argument("--trials", type=int, required=True, help="total trials wanted in the study")
    s.add_argument("--objective", default="constrained", choices=OBJECTIVES)
    s.add_argument(
        "--objective-metric",
        default=None,
        choices=OBJECTIVE_METRICS,
        help="flip rate maximised: tfr (unsafe -> any safe outcome, the paper's, default) or "
        "refusal_tfr (unsafe -> explicit refusal; derailments do not count); with "
        "--target benign: helpful (benign prompts answered with I_b, the default and only)",
    )
    s.add_argument("--max-over-refusal", type=float, default=0.1, help="feasibility threshold")
    s.add_argument(
        "--max-helpfulness-loss",
        type=float,
        default=0.0,
        help="--target benign: a context may answer at most this share fewer benign prompts "
        "than no context does (default 0)",
    )
    s.add_argument(
        "--sampler",
        default=None,
        choices=SAMPLERS,
        help="default: tpe (constrained), nsga2 (multi)",
    )
    s.add_argument(
        "--pruner",
        default=None,
        choices=PRUNERS,
        help="default: race (constrained), none (multi)",
    )
    s.add_argument("--minibatch", type=int, default=8, help="harmful prompts per pruning step")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="TEXT",
        help="a context to score first (repeatable)",
    )
    s.add_argument("--enqueue-placement", default="system", choices=PLACEMENTS)
    s.add_argument(
        "--baselines",
        default=None,
        help="list-form space (file or built-in name, e.g. baselines) to score first",
    )
    s.add_argument(
        "--prescreen",
        type=int,
        default=None,
        metavar="N",
        help="rank every context of the space by a generation-free proxy first and "
        "enqueue the best N (flipsearch proxy); set --trials to N plus the baselines to "
        "score only those",
    )
    s.add_argument(
        "--prescreen-by",
        default="likelihood",
        choices=PRESCREEN_RANKINGS,
        help="what the prescreen ranks by: likelihood, direction, a likelihood term "
        "(unsafe_drop: the unsafe answers' drop; refusal_shift: the refusal openings' rise), "
        "or selective (likelihood minus the same score on the benign prompts: flips "
        "without over-refusal)",
    )
    s.add_argument(
        "--race-width",
        type=int,
        default=None,
        metavar="N",
        help="race N contexts together, one engine call per minibatch round for all live "
        "ones (default: one trial at a time)",
    )
    r = p.add_argument_group("reflective rewrites (GEPA-style)")
    r.add_argument(
        "--rewrite-rounds",
        type=int,
        default=0,
        metavar="R",
        help="after the trials, R rounds: the proposer rewrites the incumbent from its "
        "failures and answers, and the rewrites are scored as extra trials",
    )
    r.add_argument(
        "--rewrites-per-round",
        "--rewrite-n",
        dest="rewrite_n",
        type=int,
        default=4,
        metavar="N",
        help="rewrites asked for per round (default 4)",
    )
    r.add_argument(
        "--rewrite-every",
        type=int,
        default=0,
        metavar="K",
        help="interleaved rounds instead: one every K finished trials, within --trials",
    )
    r.add_argument(
        "--proposer-model",
        default=None,
        help="model that writes the rewrites (embedded name, local folder or hub id), on "
        "its own engine; default: the model under study",
    )
    r.add_argument("--proposer-engine", default="auto", choices=("auto", "hf", "vllm"))
    r.add_argument(
        "--proposer-max-tokens", type=int, default=512, help="tokens per proposer answer"
    )
    d = p.add_argument_group("prompts and scoring")
    d.add_argument("--harmful", default="harmful_core:search", help="harmful prompt set")
    d.add_argument("--benign", default="benign:search", help="benign prompt set ('' for none)")
    d.add_argument("--limit-harmful", type=int, default=None, help="first N harmful prompts")
    d.add_argument("--limit-benign", type=int, default=None, help="first N benign prompts")
    d.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="scoring window; default 64, or 1024 for a reasoning model (its chat template "
        "writes a <think> trace before the answer); the study records the number used",
    )
    d.add_argument(
        "--judge-trace",
        action="store_true",
        help="the judge reads the reasoning trace (<think>...</think>) instead of the final "
        "answer after it (part of the study's identity)",
    )
    d.add_argument(
        "--keep-default-system",
        action="store_true",
        help="system placement: keep the chat template's default system prompt after the "
        "context (default: the context replaces it)",
    )
    add_engine_args(p)
    add_judge_args(p)
    add_cache_args(p)
    o = add_study_args(
        p,
        title="study, storage and workers",
        study_help="study name (folder results/<study>)",
        storage_help="RDB URL, journal:PATH or a .log/.jsonl/.db path "
        "(default: sqlite:///<results-dir>/<study>/study.db); a PostgreSQL password can come "
        "from PGPASSWORD or ~/.pgpass instead of the URL, and is shown masked",
    )
    o.add_argument("--heartbeat-interval", type=int, default=30, help="seconds")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The :class:`~flipsearch.sweep.SweepConfig` the options describe."""
    from flipsearch.sweep import SweepConfig

    engine, judge = engine_and_judge_configs(args)
    return SweepConfig(
        target=args.target,
        space=args.space,
        study=args.study,
        trials=args.trials,
        enqueue=tuple(args.enqueue),
        enqueue_placement=args.enqueue_placement,
        baselines=args.baselines,
        prescreen=args.prescreen,
        prescreen_by=args.prescreen_by,
        race_width=args.race_width,
        engine=engine,
        judge=judge,
        harmful=args.harmful,
        benign=args.benign or None,
        limit_harmful=args.limit_harmful,
        limit_benign=args.limit_benign,
        max_tokens=args.max_tokens,
        judge_reads="trace" if args.judge_trace else "answer",
        keep_default_system=args.keep_default_system,
        objective=args.objective,
        objective_metric=args.objective_metric,
        max_over_refusal=args.max_over_refusal,
        max_helpfulness_loss=args.max_helpfulness_loss,
        sampler=args.sampler,
        pruner=args.pruner,
        minibatch=args.minibatch,
        seed=args.seed,
        results_dir=args.results_dir,
        storage=args.storage,
        cache=args.cache,
        heartbeat_interval=args.heartbeat_interval,
        rewrite_every=args.rewrite_every,
        rewrite_n=args.rewrite_n,
        rewrite_rounds=args.rewrite_rounds,
        proposer_model=args.proposer_model,
        proposer_engine=args.proposer_engine,
        proposer_max_tokens=args.proposer_max_tokens,
        show_progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from flipsearch.sweep import run_sweep
    from flipsearch.trials import best_trial, rate_of

    config = config_from_args(args)
    study = run_sweep(config)
    try:
        best = best_trial(study)
    except Exception as e:  # no finished or no feasible trial: say so, still success
        print(f"no best context yet: {e}")
        return 0
    tfr, over = rate_of(best, "tfr") or {}, rate_of(best, "over_refusal") or {}
    if config.searches_benign:
        helpful = rate_of(best, "helpful_benign") or {}
        base = rate_of(best, "helpful_base_benign") or {}
        print(
            f"best I_b: trial {best.number}, helpful {helpful.get('value', 0):.3f} "
            f"[{helpful.get('ci_low', 0):.3f}, {helpful.get('ci_high', 0):.3f}] (no context "
            f"{base.get('value', 0):.3f}), over-refusal {over.get('value', 0):.3f} "
            f"({best.user_attrs.get('placement')}): {best.user_attrs.get('context')!r}"
        )
        print(
            f"next: flipsearch export --study <I_h study> --benign-study {config.study} "
            "--out best.json"
        )
        return 0
    print(
        f"best: trial {best.number}, TFR {tfr.get('value', 0):.3f} "
        f"[{tfr.get('ci_low', 0):.3f}, {tfr.get('ci_high', 0):.3f}], over-refusal "
        f"{over.get('value', 0):.3f} ({best.user_attrs.get('placement')}): "
        f"{best.user_attrs.get('context')!r}"
    )
    print(f"next: flipsearch export --study {config.study} --out best.json")
    return 0
