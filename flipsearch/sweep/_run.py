"""The sweep run: set up (prompts, config check, storage, scorer, study), then optimize.

:func:`run_sweep` reads as its steps; each step is a small function below it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import optuna
from optuna.storages import BaseStorage

from flipsearch.cache import GenerationCache
from flipsearch.contexts import Context
from flipsearch.engines import Engine
from flipsearch.engines.chat import template_thinks
from flipsearch.engines.gpu_shares import judge_shares_gpu, plan_gpu_shares
from flipsearch.errors import ConfigError
from flipsearch.flip import REASONING_MAX_TOKENS, FlipScorer, ScoreSettings, default_max_tokens
from flipsearch.judges import Judge
from flipsearch.models import cache_dir
from flipsearch.prompts import PromptRow, PromptSet, load_prompt_set
from flipsearch.proposers import CandidatePool, PoolProposer, pool_id
from flipsearch.scoring import summarise
from flipsearch.space import SearchSpace, load_search_space
from flipsearch.sweep._callbacks import FINISHED, Progress, Rewrite
from flipsearch.sweep._config import SweepConfig
from flipsearch.sweep._factories import make_pruner, make_sampler
from flipsearch.sweep._objective import Objective, SurplusTrial, ordered
from flipsearch.sweep._provenance import (
    check_config,
    check_resolved_config,
    provenance,
    recorded_config,
)
from flipsearch.sweep._rounds import make_rewriter, recorded_rounds, run_rounds
from flipsearch.sweep._stale import recover_stale_trials, retry_trial
from flipsearch.sweep._waves import run_waves
from flipsearch.sweep._workers import locked, register_worker, unregister_worker

__all__ = ["run_sweep"]

logger = logging.getLogger(__name__)


def run_sweep(
    config: SweepConfig,
    *,
    engine: Engine | None = None,
    judge: Judge | None = None,
    cache: GenerationCache | None = None,
    proposer: Engine | None = None,
) -> optuna.Study:
    """Run (or resume) a sweep until the study holds ``config.trials`` finished trials.

    Args:
        config: the sweep.
        engine, judge, cache: already built objects to use instead of building them from
            ``config`` (tests, benchmarks, notebooks). The config still names what they are.
        proposer: the engine that writes rewrites (``rewrite_rounds``/``rewrite_every``)
            instead of ``config.proposer_model``'s.

    Returns:
        The Optuna study.

    Raises:
        ConfigError: a bad setting, or resuming a study with different identity fields
            (:data:`~flipsearch.sweep.IDENTITY_FIELDS`).
    """
    folder = config.folder
    space = load_search_space(config.space_name)
    prompts = _Prompts.load(config)
    # The config and the storage first: a wrong one fails before a model loads.
    with locked(folder):
        check_config(config, engine)  # an unset max_tokens is compared once resolved
    storage = _storage(config)
    scorer = _scorer(config, engine, judge, cache)
    if config.max_tokens is None:
        # The model-aware window, now known: recorded and compared like an explicit one.
        config = replace(config, max_tokens=scorer.settings.max_tokens)
        with locked(folder):
            check_resolved_config(config)
    pool = CandidatePool(folder / "pool.jsonl")

    with locked(folder):
        worker = register_worker(folder)
        study = _create_study(config, storage, space, worker)
        failed = recover_stale_trials(study, grace_s=config.grace_s)
        if failed:
            logger.warning("marked stale trials %s FAIL and enqueued them again", failed)
        PoolProposer(pool).enqueue(study, _seed_pool(config, pool))
        _baseline(study, config, scorer, space, prompts)
        if config.prescreen:
            _prescreen(study, config, scorer, space, prompts)

    n_done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if n_done >= config.trials + _round_trials(study, config):
        logger.info("study %r already has %d finished trials; nothing to do", config.study, n_done)
        unregister_worker(folder)
        return study

    rewriter = make_rewriter(config, scorer.engine, pool, proposer) if config.rewrites else None
    progress = Progress(config, n_done)
    rewrite = Rewrite(config, rewriter, scorer, pool, prompts.harmful, prompts.benign)

    def score_until(target: int) -> None:
        # Run trials until the study has `target` finished ones.
        progress.bar.total = max(progress.bar.total or 0, target)
        objective = Objective(
            replace(config, trials=target), scorer, space, pool, prompts.harmful, prompts.benign
        )
        _optimize(study, objective, [progress, rewrite])

    try:
        score_until(config.trials)
        if rewriter is not None and config.rewrite_rounds:
            run_rounds(
                study,
                config,
                rewriter,
                scorer,
                pool,
                prompts.harmful,
                prompts.benign,
                score_until,
            )
    finally:
        progress.close()
        unregister_worker(folder)
    return study


def _optimize(study: optuna.Study, objective: Objective, callbacks: list) -> None:
    # Trials until the study has `objective.config.trials` finished ones.
    config = objective.config
    if config.race_width is not None:
        run_waves(study, objective, callbacks)
        return
    n_done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if n_done >= config.trials:
        return
    study.optimize(
        objective,
        n_trials=config.trials - n_done,
        callbacks=[*callbacks, optuna.study.MaxTrialsCallback(config.trials, states=FINISHED)],
        # A ConfigError (e.g. a context too long for the window) fails that trial; a
        # SurplusTrial fails the one trial the budget had no room for.
        catch=(ConfigError, SurplusTrial),
        gc_after_trial=False,
    )


def _round_trials(study: optuna.Study, config: SweepConfig) -> int:
    # Trials the recorded `rewrite_rounds` rounds add to the budget; with rounds still to
    # ask for, one more so the sweep does not stop before asking.
    rounds = recorded_rounds(study)
    extra = sum(len(r["added"]) for r in rounds.values() if r.get("mode") == "rounds")
    missing = config.rewrite_rounds and any(
        i not in rounds for i in range(1, config.rewrite_rounds + 1)
    )
    return extra + (1 if missing else 0)


# ---------------------------------------------------------------- set-up steps


@dataclass(frozen=True)
class _Prompts:
    """The prompt sets (for provenance) and their rows in sweep order (:func:`ordered`).
    An I_b search (``target`` ``benign``) loads no harmful prompts."""

    harmful_set: PromptSet | None
    benign_set: PromptSet | None
    harmful: list[PromptRow]
    benign: list[PromptRow]

    @classmethod
    def load(cls, config: SweepConfig) -> _Prompts:
        harmful = None
        if not config.searches_benign:
            harmful = load_prompt_set(config.harmful, limit=config.limit_harmful).harmful()
            if not len(harmful):
                raise ConfigError(
                    f"`harmful` must hold harmful prompts, got none in {config.harmful!r}"
                )
        benign = None
        if config.benign:
            benign = load_prompt_set(config.benign, limit=config.limit_benign).benign()
            if not len(benign):
                raise ConfigError(
                    f"`benign` must hold benign prompts, got none in {config.benign!r}"
                )
        return cls(harmful, benign, ordered(list(harmful or [])), ordered(list(benign or [])))

    @property
    def sets(self) -> list[PromptSet]:
        return [s for s in (self.harmful_set, self.benign_set) if s is not None]


def _storage(config: SweepConfig) -> BaseStorage:
    # RDB storages also get Optuna's heartbeat, which fails and retries dead trials.
    return config.storage_spec.build(
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_s,
        failed_trial_callback=retry_trial,
    )


def _scorer(
    config: SweepConfig,
    engine: Engine | None,
    judge: Judge | None,
    cache: GenerationCache | None,
) -> FlipScorer:
    # Objects given by the caller win; the rest is built from the config.
    if cache is None:
        cache = GenerationCache(config.cache or cache_dir() / "generations.sqlite")
    # A vLLM generator and a vLLM judge on one GPU: shares that fit, or an error now.
    generator_share, judge_share = plan_gpu_shares(
        config.engine.gpu_memory_utilization,
        config.judge.gpu_memory_utilization,
        shared=engine is None and judge is None and judge_shares_gpu(config.engine, config.judge),
    )
    judge = judge or replace(config.judge, gpu_memory_utilization=judge_share).build()
    engine = engine or replace(config.engine, gpu_memory_utilization=generator_share).build()
    # An unset window is model-aware: 64, or 1024 for a template that thinks.
    tokenizer = getattr(engine, "tokenizer", None)
    max_tokens = config.max_tokens
    if max_tokens is None:
        max_tokens = default_max_tokens(tokenizer)
    settings = ScoreSettings(
        max_tokens=max_tokens,
        judge_reads=config.judge_reads,
        keep_default_system=config.keep_default_system,
    )
    # Only a template that thinks needs the long window (SmolLM2's does not).
    window = REASONING_MAX_TOKENS
    if tokenizer is not None and template_thinks(tokenizer) and max_tokens < window:
        logger.warning(
            "the model's chat template writes a <think> trace before the answer: max_tokens "
            "%d will leave many answers unfinished (never counted safe); leave --max-tokens "
            "unset for the model-aware %d",
            max_tokens,
            window,
        )
    return FlipScorer(engine, judge, cache, settings)


def _create_study(
    config: SweepConfig, storage: BaseStorage, space: SearchSpace, worker: int
) -> optuna.Study:
    # Create or load the study with this worker's sampler and the pruner.
    sampler = make_sampler(
        config.sampler,  # type: ignore[arg-type]
        # The grid's order comes from the seed: all workers must share it.
        seed=config.seed if config.sampler == "bruteforce" else config.seed + worker,
        constrained=config.benign is not None,
        grid=space.dimensions(),
    )
    return optuna.create_study(
        study_name=config.study,
        storage=storage,
        load_if_exists=True,
        directions=["maximize", "minimize"] if config.objective == "multi" else ["maximize"],
        sampler=sampler,
        pruner=make_pruner(config.pruner, minibatch=config.minibatch),  # type: ignore[arg-type]
    )


def _seed_pool(config: SweepConfig, pool: CandidatePool) -> list[str]:
    # User contexts and baselines become pool entries, so they are enqueued like any
    # pool candidate and a resumed sweep does not enqueue them twice (ids are hashes).
    ids: list[str] = []
    if config.enqueue:
        pool.add(list(config.enqueue), source="user", placement=config.enqueue_placement)
        ids += [pool_id(t, config.enqueue_placement) for t in config.enqueue]
    if config.baselines:
        for cand in load_search_space(config.baselines).enumerate():
            name = cand.id.split("@")[0].removeprefix("candidate=")
            pool.add(
                [cand.context.text], source=f"baseline:{name}", placement=cand.context.placement
            )
            ids.append(pool_id(cand.context.text, cand.context.placement))
    return list(dict.fromkeys(ids))


def _baseline(
    study: optuna.Study,
    config: SweepConfig,
    scorer: FlipScorer,
    space: SearchSpace,
    prompts: _Prompts,
) -> None:
    # The context-free baseline, once for every prompt; every trial reuses it through the
    # cache. A new study also records what it is measured with (once, under the lock).
    before = scorer.generations
    base = summarise(scorer.outcomes(Context(""), prompts.harmful + prompts.benign))
    if "provenance" not in study.user_attrs:
        study.set_user_attr("provenance", provenance(config, scorer, space, prompts.sets))
        study.set_user_attr("sweep_config", recorded_config(config))
        study.set_user_attr(
            "prompt_ids",
            {"harmful": [r.id for r in prompts.harmful], "benign": [r.id for r in prompts.benign]},
        )
        study.set_user_attr("baseline", base.to_dict())
    logger.info(
        "study %r: baseline %s %s (%d new generations)",
        config.study,
        "helpful share" if config.searches_benign else "unsafe rate",
        base.helpful_base_benign if config.searches_benign else base.base_unsafe_rate,
        scorer.generations - before,
    )


def _prescreen(
    study: optuna.Study,
    config: SweepConfig,
    scorer: FlipScorer,
    space: SearchSpace,
    prompts: _Prompts,
) -> None:
    # Once per study: rank every context of the space by the proxy, enqueue the best
    # `prescreen` choices, and record what was kept and what the ranking cost.
    import time

    from flipsearch.proxy import (
        design_of,
        hf_model_of,
        prepare_proxies,
        score_candidates,
        top_candidates,
    )

    if "prescreen" in study.user_attrs:
        return
    # SweepConfig refuses a prescreen with target benign, which loads no harmful set.
    assert config.prescreen is not None and prompts.harmful_set is not None
    start = time.perf_counter()
    model, tokenizer = hf_model_of(scorer.engine)
    references = (
        [c.context for c in load_search_space(config.baselines).enumerate()]
        if config.baselines
        else None  # the built-in references
    )
    selective = config.prescreen_by == "selective"
    setup = prepare_proxies(
        scorer,
        model,
        tokenizer,
        prompts.harmful_set,
        benign=prompts.benign_set if selective else None,
        designs=[design_of(config.prescreen_by)],
        opening_contexts=references,
    )
    candidates = space.enumerate(limit=None, unique=True)
    rows = list(score_candidates(setup, model, tokenizer, candidates))
    keep = top_candidates(rows, config.prescreen, by=config.prescreen_by)
    by_id = {c.id: c for c in candidates}
    for cid in keep:
        study.enqueue_trial(dict(by_id[cid].choice), skip_if_exists=True)
    scores = {r.candidate_id: getattr(r, config.prescreen_by) for r in rows}
    study.set_user_attr(
        "prescreen",
        {
            "by": config.prescreen_by,
            "n": config.prescreen,
            "contexts": len(candidates),
            "kept": [[cid, scores[cid]] for cid in keep],
            "forward_tokens": sum(r.forward_tokens for r in rows),
            "setup_generations": setup.generations,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    logger.info(
        "study %r: prescreened %d contexts by %s in %.0f s, enqueued the best %d",
        config.study,
        len(candidates),
        config.prescreen_by,
        time.perf_counter() - start,
        len(keep),
    )
