"""Search for a safety context with Optuna: one trial scores one candidate context.

A trial asks its proposer for a context (a grammar/list choice from the search space,
or a pool candidate that was enqueued), scores it on the harmful prompts one minibatch
at a time, reports the running teacher flip rate (TFR, arXiv 2605.15239) after each
minibatch so a pruner can stop hopeless candidates early, then scores the benign
prompts for over-refusal. With the default ``race`` pruner one benign minibatch is
scored right after the first harmful one and over-refusal is raced as well, so a
context that clearly over-refuses stops early too (:mod:`flipsearch.pruners`).
Everything it measured goes into the trial's user attributes.

Objectives:

- ``constrained`` (default): maximise TFR subject to over-refusal <= ``max_over_refusal``.
  TPE, GP and NSGA-II see it as an Optuna constraint (``Trial.set_constraint`` on
  Optuna 5, ``constraints_func`` on Optuna 4); every trial records
  ``constraints`` and ``feasible`` whatever the sampler.
- ``multi``: maximise TFR and minimise over-refusal (NSGA-II by default; no pruning,
  since Optuna cannot prune multi-objective trials).

Targets (``SweepConfig.target``): ``harmful`` (default) searches I_h as above.
``benign`` searches I_b, the context for benign prompts (issue #15), over the ``benign``
space by default: no harmful prompt is scored; each trial scores the benign prompts
without and with the candidate, reports their running ``helpful`` share with it
(answers judged ``compliance``: neither refused nor derailed) for the pruners, and is
feasible when that share is at most ``max_helpfulness_loss`` below the context-free one
(the ``helpfulness_loss`` constraint). Export both contexts with ``flipsearch export
--study H --benign-study B``.

The context-free baseline is not enqueued as a trial: its TFR and over-refusal are 0 by
definition (both count changes against the baseline). Its generations are made once,
before the first trial, and are shared by every trial through the cache.

Files in ``<results_dir>/<study>/``: ``config.json`` (this config, the storage password
masked), ``study.db`` (default storage), ``pool.jsonl`` (enqueued and rewritten contexts),
``workers.json`` and ``.lock``.

Resuming and workers: the same command continues the study and adds trials until
``trials`` trials are COMPLETE or PRUNED. Start N copies of the command on one storage
(a journal file on one machine, PostgreSQL across machines) to run N workers; they
share the study, the generation cache and the pool, and a worker stops instead of
starting a trial that the others' running trials make surplus. A worker that dies
mid-trial loses only that trial: a worker that starts later, any running worker between
two trials, or (RDB storages) Optuna's heartbeat marks it FAIL and enqueues its
candidate again (at most :data:`MAX_RETRIES` times). A dead worker on this machine is
recognised by its process id, one elsewhere by a heartbeat older than ``grace_period``.
A candidate that a COMPLETE trial has already scored is not scored again (the new trial
copies its result), and one that another worker is scoring right now is waited for.

Example (CPU smoke run, a few minutes)::

    flipsearch sweep --space paper_axes --study smoke --trials 6 --engine hf \\
        --max-tokens 24 --limit-harmful 8 --limit-benign 4 --minibatch 4

    >>> cfg = SweepConfig(study="demo", trials=4)
    >>> cfg.sampler, cfg.pruner, cfg.storage
    ('tpe', 'race', 'sqlite:///results/demo/study.db')

Modules (private; import from ``flipsearch.sweep``):

- ``_config``: :class:`SweepConfig`, its fields and checks; sampler/pruner/objective names.
- ``_factories``: :func:`make_sampler`, :func:`make_pruner`.
- ``_workers``: the set-up lock and the ``workers.json`` registry.
- ``_stale``: heartbeats, :func:`recover_stale_trials`, retries of dead trials.
- ``_provenance``: ``config.json`` (checked on resume) and the study's provenance.
- ``_objective``: the Optuna objective (one trial scores one context).
- ``_rounds``: reflective rewrite rounds (the incumbent's feedback, the proposer, the
  ``rewrite_round:<r>`` records), after the trials or every ``rewrite_every`` trials.
- ``_callbacks``: the progress bar and the interleaved rewrite rounds, called after each
  trial.
- ``_run``: :func:`run_sweep`.
"""

from __future__ import annotations

from flipsearch.sweep._config import (
    IDENTITY_FIELDS,
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    TARGETS,
    SweepConfig,
)
from flipsearch.sweep._factories import make_pruner, make_sampler
from flipsearch.sweep._rounds import recorded_rounds
from flipsearch.sweep._run import run_sweep
from flipsearch.sweep._stale import MAX_RETRIES, recover_stale_trials

__all__ = [
    "IDENTITY_FIELDS",
    "MAX_RETRIES",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "TARGETS",
    "SweepConfig",
    "make_pruner",
    "make_sampler",
    "recorded_rounds",
    "recover_stale_trials",
    "run_sweep",
]
