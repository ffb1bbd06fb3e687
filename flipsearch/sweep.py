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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from flipsearch import __version__
from flipsearch.atomic import atomic_write_text
from flipsearch.contexts import PLACEMENTS, Context
from flipsearch.engines import EngineConfig
from flipsearch.errors import ConfigError
from flipsearch.judges import JudgeConfig
from flipsearch.models import model_identity
from flipsearch.paths import recordable
from flipsearch.proposers import POOL_ATTR
from flipsearch.scoring import FlipScore, PromptOutcome, summarise
from flipsearch.trials import (
    CONFIG_FILE,
    StorageSpec,
    default_storage,
    mask_storage,
    parse_storage,
    rate_of,
    storage_identity,
    study_dir,
)
from flipsearch.version import version_info

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from flipsearch.cache import GenerationCache
    from flipsearch.engines import Engine
    from flipsearch.flip import FlipScorer
    from flipsearch.judges import Judge
    from flipsearch.prompts import PromptRow, PromptSet
    from flipsearch.proposers import CandidatePool, ScoredContext
    from flipsearch.space import SearchSpace

logger = logging.getLogger(__name__)

__all__ = [
    "IDENTITY_FIELDS",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "SweepConfig",
    "make_pruner",
    "make_sampler",
    "recover_stale_trials",
    "run_sweep",
]

SAMPLERS = ("tpe", "gp", "random", "bruteforce", "nsga2")
PRUNERS = ("race", "median", "wilcoxon", "sha", "none")
OBJECTIVES = ("constrained", "multi")
MAX_RETRIES = 3
"""A candidate whose trials died this many times is not enqueued again."""

IDENTITY_FIELDS = (
    "space",
    "objective",
    "engine.model",
    "judge",
    "harmful",
    "benign",
    "limit_harmful",
    "limit_benign",
    "max_tokens",
)
"""Fields a resumed study must keep: scores under other values are not comparable."""


# ---------------------------------------------------------------- config


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs; JSON-serialisable, dumped to ``<results>/<study>/config.json``.

    Fields are grouped: what to search, what to score on, how to search, where to store,
    workers, rewriting. Cross-field rules are checked in ``__post_init__``.
    """

    # -- what to search
    space: str = "paper_axes"
    """Search-space file, or a built-in name (``flipsearch spaces`` lists them)."""
    study: str = "sweep"
    """Study name; also the folder ``<results_dir>/<study>``."""
    trials: int = 50
    """Total trials wanted in the study (COMPLETE + PRUNED); a resumed sweep adds only
    the missing ones."""
    enqueue: tuple[str, ...] = ()
    """Contexts to score first (``--enqueue TEXT``), placed as ``enqueue_placement``."""
    enqueue_placement: str = "system"
    """Placement of the ``enqueue`` contexts."""
    baselines: str | None = None
    """A list-form space, file or built-in name (e.g. ``baselines``), whose candidates
    are scored first, each with its own placement. None: none."""

    # -- what to score on
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The model and engine that generate (default: embedded model, engine auto)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The judge (default: the offline refusal judge)."""
    harmful: str = "harmful_core:search"
    """Harmful prompt set spec (:func:`flipsearch.prompts.load_prompt_set`)."""
    benign: str | None = "benign:search"
    """Benign prompt set spec for over-refusal; None only with ``constrained`` (then the
    constraint is not checked and every trial is feasible)."""
    limit_harmful: int | None = None
    """First N harmful prompts; None keeps all."""
    limit_benign: int | None = None
    """First N benign prompts; None keeps all."""
    max_tokens: int = 64
    """Scoring window in new tokens (greedy decoding, the paper's scoring mode)."""

    # -- how to search
    objective: str = "constrained"
    """``constrained`` (TFR up, over-refusal <= ``max_over_refusal``) or ``multi``
    (TFR up and over-refusal down, a Pareto front)."""
    max_over_refusal: float = 0.1
    """Feasibility threshold on over-refusal, in [0, 1]. Recorded as ``feasible`` on
    every trial in both objectives; export picks the best feasible trial."""
    sampler: str | None = None
    """``tpe``, ``gp``, ``random``, ``bruteforce`` (small spaces; stops when exhausted) or
    ``nsga2``. None: ``tpe`` for ``constrained``, ``nsga2`` for ``multi``."""
    pruner: str | None = None
    """``race`` (:class:`~flipsearch.pruners.RacePruner`: stop a context unlikely to beat
    the best one so far), ``median``, ``wilcoxon``, ``sha`` (successive halving) or
    ``none``. None: ``race`` for ``constrained``, ``none`` for ``multi`` (which cannot
    prune)."""
    minibatch: int = 8
    """Harmful prompts scored between two pruning checks, >= 1."""
    seed: int = 0
    """Sampler seed of the first worker; concurrent workers add their worker index."""

    # -- where to store
    results_dir: str = "results"
    """Parent folder of the study folder."""
    storage: str | None = None
    """Optuna storage: an RDB URL, ``journal:PATH`` or a ``.log``/``.jsonl``/``.db`` path
    (see :func:`flipsearch.trials.parse_storage`). None: SQLite in the study folder.
    A PostgreSQL password need not be in the URL (``postgresql://ana@db.lab/sweeps``):
    libpq reads it from ``PGPASSWORD`` or ``~/.pgpass``. One in the URL is kept in memory
    only; files, study attributes, logs and errors get it masked
    (:func:`flipsearch.trials.mask_storage`)."""
    cache: str | None = None
    """Generation/verdict cache (SQLite). None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""

    # -- workers
    heartbeat_interval: int = 30
    """Seconds between a running trial's heartbeats, >= 1."""
    grace_period: int | None = None
    """Seconds without a heartbeat after which a RUNNING trial counts as dead (another
    machine's workers). None: 4 x ``heartbeat_interval``. A dead worker on this machine is
    detected at once by its process id."""

    # -- rewriting
    rewrite_every: int = 0
    """Every N finished trials of this worker, ask :class:`~flipsearch.proposers.
    RewriteProposer` (with the scoring engine) for new contexts from the best ones and
    their failing prompts, and enqueue them. 0: never."""
    rewrite_n: int = 4
    """Contexts asked for per rewrite round."""
    show_progress: bool = True
    """A tqdm bar with the best feasible TFR so far."""

    def __post_init__(self) -> None:
        # Normalise: nested configs from dicts, tuples from lists, objective defaults.
        if isinstance(self.engine, dict):
            object.__setattr__(self, "engine", EngineConfig(**self.engine))
        if isinstance(self.judge, dict):
            object.__setattr__(self, "judge", JudgeConfig(**self.judge))
        if isinstance(self.enqueue, str):
            object.__setattr__(self, "enqueue", (self.enqueue,))
        object.__setattr__(self, "enqueue", tuple(self.enqueue))
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"`objective` must be one of {OBJECTIVES}, got {self.objective!r}")
        multi = self.objective == "multi"
        if self.sampler is None:
            object.__setattr__(self, "sampler", "nsga2" if multi else "tpe")
        if self.pruner is None:
            object.__setattr__(self, "pruner", "none" if multi else "race")
        if self.storage is None:
            object.__setattr__(self, "storage", default_storage(self.results_dir, self.study))
        self._verify()

    def _verify(self) -> None:
        if not self.study or "/" in self.study or self.study.startswith("."):
            raise ConfigError(
                f"`study` must be a non-empty folder name without '/', got {self.study!r}"
            )
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"`trials` must be an integer >= 1, got {self.trials!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"`sampler` must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"`pruner` must be one of {PRUNERS}, got {self.pruner!r}")
        if self.objective == "multi" and self.pruner != "none":
            raise ConfigError(
                f"`pruner` must be 'none' with objective='multi', got {self.pruner!r}: Optuna "
                "cannot prune multi-objective trials"
            )
        if self.objective == "multi" and not self.benign:
            raise ConfigError(
                f"`benign` must name a prompt set with objective='multi', got {self.benign!r}: "
                "over-refusal is the second objective"
            )
        if not (0.0 <= self.max_over_refusal <= 1.0):
            raise ConfigError(
                f"`max_over_refusal` must be in [0, 1], got {self.max_over_refusal!r}"
            )
        if not isinstance(self.minibatch, int) or self.minibatch < 1:
            raise ConfigError(f"`minibatch` must be an integer >= 1, got {self.minibatch!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"`max_tokens` must be an integer >= 1, got {self.max_tokens!r}")
        for name in ("limit_harmful", "limit_benign"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"`{name}` must be None or an integer >= 1, got {value!r}")
        if self.rewrite_every < 0:
            raise ConfigError(f"`rewrite_every` must be >= 0, got {self.rewrite_every!r}")
        if self.rewrite_n < 1:
            raise ConfigError(f"`rewrite_n` must be >= 1, got {self.rewrite_n!r}")
        if self.heartbeat_interval < 1:
            raise ConfigError(
                f"`heartbeat_interval` must be >= 1 second, got {self.heartbeat_interval!r}"
            )
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                f"`grace_period` must be > heartbeat_interval={self.heartbeat_interval}, got "
                f"{self.grace_period!r}: a live worker would look dead between heartbeats"
            )
        if self.enqueue_placement not in PLACEMENTS:
            raise ConfigError(
                f"`enqueue_placement` must be one of {PLACEMENTS}, got {self.enqueue_placement!r}"
            )
        for i, text in enumerate(self.enqueue):
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(
                    f"`enqueue[{i}]` must be a non-empty context, got {text!r}: the empty "
                    "context is the baseline, whose TFR is 0 by definition"
                )
        parse_storage(self.storage, results_dir=self.results_dir, study=self.study)

    # ------------------------------------------------------------ derived

    @property
    def folder(self) -> Path:
        return study_dir(self.results_dir, self.study)

    @property
    def storage_spec(self) -> StorageSpec:
        return parse_storage(self.storage, results_dir=self.results_dir, study=self.study)

    @property
    def grace_s(self) -> int:
        return self.grace_period or 4 * self.heartbeat_interval

    def to_dict(self, *, masked: bool = False) -> dict[str, object]:
        """The fields as a JSON-ready dict; ``masked``: the storage password masked, for
        anything written or shown (``config.json``, study attributes)."""
        d = asdict(self)
        d["enqueue"] = list(self.enqueue)
        if masked:
            d["storage"] = mask_storage(self.storage)
        return d

    def __repr__(self) -> str:
        # Logs and tracebacks show the storage password masked.
        items = ", ".join(f"{k}={v!r}" for k, v in self.to_dict(masked=True).items())
        return f"SweepConfig({items})"

    @classmethod
    def from_dict(cls, d: dict) -> SweepConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys raise ConfigError)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"`config` keys must be among {sorted(known)}, got {unknown!r}")
        return cls(**d)

    def identity(self) -> dict[str, object]:
        """The :data:`IDENTITY_FIELDS` values (``engine.model`` is the model name)."""
        d = self.to_dict()
        out: dict[str, object] = {}
        for name in IDENTITY_FIELDS:
            head, _, tail = name.partition(".")
            out[name] = d[head][tail] if tail else d[head]  # type: ignore[index]
        return out


# ---------------------------------------------------------------- factories


def _native_constraints() -> bool:
    # Optuna >= 5 reads constraints set on the trial (`Trial.set_constraint`) and
    # deprecates `constraints_func`; Optuna 4 only has the latter.
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _constraints(trial: FrozenTrial) -> list[float]:
    # Optuna 4: over-refusal minus the threshold (<= 0 is feasible). Pruned trials never
    # scored the benign prompts; they count as feasible, as with Optuna 5 (no constraint).
    return list(trial.user_attrs.get("constraints", [0.0]))


def make_sampler(
    name: str,
    *,
    seed: int | None = 0,
    constrained: bool = True,
    grid: dict[str, list[str]] | None = None,
) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by name (see :data:`SAMPLERS`).

    Args:
        name: ``tpe``, ``gp``, ``random``, ``bruteforce`` or ``nsga2``.
        seed: sampler seed.
        grid: for ``bruteforce``, every dimension's choices (``SearchSpace.dimensions()``).
        constrained: on Optuna 4, pass the over-refusal constraint as ``constraints_func``
            to the samplers that take one (TPE, GP, NSGA-II). Optuna 5 reads the constraint
            each trial sets (``Trial.set_constraint``), so this is not needed there. Other
            samplers only record feasibility.

    Raises:
        ConfigError: unknown name.
        ImportError: ``gp`` without scipy (the message gives the pip command).

    Note:
        ``bruteforce`` is Optuna's ``GridSampler`` over ``grid``: each choice once, workers
        share the grid (a running choice is not handed out twice), and the study stops
        when it is exhausted. Optuna's ``BruteForceSampler`` is not used: it reads a pool
        trial (which has no params) as covering the whole space and stops at once.
    """
    import optuna

    cf = _constraints if constrained and not _native_constraints() else None
    with warnings.catch_warnings():  # `group`, GridSampler etc. are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(name, seed, cf, grid)


def _sampler(
    name: str,
    seed: int | None,
    cf: Callable[[FrozenTrial], list[float]] | None,
    grid: dict[str, list[str]] | None,
) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "tpe":
        # multivariate + group: pool trials have no params, so the space is conditional.
        return optuna.samplers.TPESampler(
            seed=seed, constraints_func=cf, multivariate=True, group=True
        )
    if name == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError as e:
            raise ImportError("the GP sampler needs scipy: pip install scipy") from e
        return optuna.samplers.GPSampler(seed=seed, constraints_func=cf)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "bruteforce":
        if not grid:
            raise ConfigError(
                f"`grid` must give the dimensions' choices for the bruteforce sampler, got {grid!r}"
            )
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=cf)
    raise ConfigError(f"`sampler` must be one of {SAMPLERS}, got {name!r}")


def make_pruner(name: str, *, minibatch: int = 8) -> optuna.pruners.BasePruner:
    """An Optuna pruner by name (see :data:`PRUNERS`).

    Steps are harmful prompts scored so far. ``race``, ``median`` and ``sha`` read the
    running TFR after each minibatch; ``wilcoxon`` reads each prompt's flip (step =
    prompt index) and prunes when the trial is significantly worse than the best one on
    the same prompts.

    Raises:
        ConfigError: unknown name.
        ImportError: ``wilcoxon`` without scipy (the message gives the pip command).
    """
    import optuna

    if name == "race":
        from flipsearch.pruners import RacePruner

        return RacePruner(n_warmup_steps=minibatch)
    if name == "median":
        # Five full trials first, and never on the first minibatch alone.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=minibatch)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=minibatch, reduction_factor=3, min_early_stopping_rate=0
        )
    if name == "wilcoxon":
        try:
            import scipy  # noqa: F401
        except ImportError as e:
            raise ImportError("the Wilcoxon pruner needs scipy: pip install scipy") from e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=minibatch)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"`pruner` must be one of {PRUNERS}, got {name!r}")


# ---------------------------------------------------------------- files, locks, workers


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # One process at a time in set-up steps (config check, enqueueing, stale recovery,
    # baseline warm-up). An flock dies with its process, so a killed worker frees it.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, doc: object) -> None:
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is dead for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _worker_id() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _register_worker(folder: Path) -> int:
    # Smallest free index among live workers on this machine (called under the lock);
    # index 0 keeps `seed` as is, so a lone worker is reproducible.
    path = folder / "workers.json"
    workers = json.loads(path.read_text()) if path.is_file() else {}
    host = socket.gethostname()
    live = {
        k: v
        for k, v in workers.items()
        if not k.startswith(f"{host}:") or _pid_alive(int(k.rsplit(":", 1)[1]))
    }
    used = set(live.values())
    index = next(i for i in range(len(used) + 1) if i not in used)
    live[f"{host}:{os.getpid()}"] = index
    _write_json(path, live)
    return index


def _unregister_worker(folder: Path) -> None:
    path = folder / "workers.json"
    with _locked(folder):
        workers = json.loads(path.read_text()) if path.is_file() else {}
        workers.pop(f"{socket.gethostname()}:{os.getpid()}", None)
        _write_json(path, workers)


def _check_config(config: SweepConfig) -> None:
    # A resumed study must keep the identity fields; the rest may change between runs.
    path = config.folder / CONFIG_FILE
    if path.is_file():
        old = SweepConfig.from_dict(json.loads(path.read_text()))
        old_id, new_id = old.identity(), config.identity()
        for name in IDENTITY_FIELDS:
            # config.json records paths portably (recordable): compare in that form.
            if recordable(old_id[name]) != recordable(new_id[name]):
                raise ConfigError(
                    f"`{name}` must match the study's {path} ({old_id[name]!r}) to resume "
                    f"{config.study!r}, got {new_id[name]!r}: scores on other settings are "
                    "not comparable. Use a new --study."
                )
        # The file holds the masked URL: compare the URLs without passwords.
        if storage_identity(old.storage) != storage_identity(config.storage):
            raise ConfigError(
                f"`storage` must match the study's {path} ({mask_storage(old.storage)!r}), "
                f"got {mask_storage(config.storage)!r}: the trials live there"
            )
    _write_json(path, _recorded_config(config))


def _recorded_config(config: SweepConfig) -> dict[str, object]:
    # config.json / the study's `sweep_config`: paths portable, no tokens, the storage
    # URL's password masked (`open_study` reconnects with PGPASSWORD or .pgpass).
    doc = config.to_dict(masked=True)
    return {**recordable(doc), "storage": doc["storage"]}


# ---------------------------------------------------------------- stale trials


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a dead trial's candidate again (same params or pool id), up to MAX_RETRIES.

    Used as RDBStorage's ``failed_trial_callback`` and by :func:`recover_stale_trials`.
    """
    retries = int(trial.user_attrs.get("retries", 0)) + 1
    if retries > MAX_RETRIES:
        logger.warning("trial %d died %d times; not retrying it", trial.number, retries)
        return
    attrs: dict[str, object] = {"retry_of": trial.number, "retries": retries}
    if POOL_ATTR in trial.user_attrs:
        attrs[POOL_ATTR] = trial.user_attrs[POOL_ATTR]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
    logger.warning("trial %d failed (dead worker); enqueued its candidate again", trial.number)


def recover_stale_trials(study: optuna.Study, *, grace_s: float) -> list[int]:
    """Mark RUNNING trials of dead workers FAIL and enqueue their candidates again.

    A trial is stale when its worker ran on this machine and that process is gone, or
    when its last heartbeat (or start, if it has none) is older than ``grace_s``.

    Returns:
        Numbers of the trials marked FAIL.
    """
    import optuna
    from optuna.trial import TrialState

    host, now, failed = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        beat = t.user_attrs.get("heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        dead_here = worker.get("host") == host and not _pid_alive(int(worker.get("pid", -1)))
        if dead_here or (beat is not None and now - float(beat) > grace_s):
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                continue  # another worker got there first
            failed.append(t.number)
            _retry(study, study._storage.get_trial(t._trial_id))
    return failed


class _Heartbeat:
    # Writes a `heartbeat` user attribute every `interval` seconds while a trial runs:
    # Optuna's journal storage has no heartbeat of its own.
    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self._study, self._trial_id, self._interval = study, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # the trial may just have finished
                self._study._storage.set_trial_user_attr(self._trial_id, "heartbeat", time.time())

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the objective


def _ordered(rows: Sequence[PromptRow]) -> list[PromptRow]:
    # A fixed, content-independent shuffle (hash of the id) so each minibatch mixes
    # categories; the same for every trial and worker, so pruning steps line up.
    return sorted(rows, key=lambda r: hashlib.sha256(r.id.encode()).hexdigest())


def _compact(values: Sequence[float]) -> list[float | int]:
    return [int(v) if v in (0.0, 1.0) else round(v, 3) for v in values]


def _outcome_attrs(outs: Sequence[PromptOutcome], n_harmful: int) -> dict[str, list]:
    # Per-prompt outcomes as short lists in sweep order; None marks prompts not scored.
    h = [o for o in outs if o.type == "harmful"]
    b = [o for o in outs if o.type == "benign"]
    pad = [None] * (n_harmful - len(h))
    return {
        "h_flip": _compact([o.p_flip for o in h]) + pad,
        "h_ctx_safe": _compact([o.p_ctx_safe for o in h]) + pad,
        "h_base_unsafe": _compact([o.p_base_unsafe for o in h]) + pad,
        "b_over_refusal": _compact([o.p_over_refusal for o in b]),
        "b_ctx_refusal": _compact([o.p_ctx_refusal for o in b]),
    }


class _Surplus(ConfigError):
    """Raised (and caught: the trial is marked FAIL) when the budget is already met."""


class _Objective:
    """Scores the trial's context minibatch by minibatch; see the module docstring."""

    def __init__(
        self,
        config: SweepConfig,
        scorer: FlipScorer,
        space: SearchSpace,
        pool: CandidatePool,
        harmful: list[PromptRow],
        benign: list[PromptRow],
    ) -> None:
        from flipsearch.proposers import GrammarProposer, PoolProposer

        self.config = config
        self.scorer = scorer
        self.grammar = GrammarProposer(space)
        self.pool = PoolProposer(pool)
        self.harmful = harmful
        self.benign = benign
        self.multi = config.objective == "multi"
        self.prune = config.pruner != "none"
        self.wilcoxon = config.pruner == "wilcoxon"

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr("worker", _worker_id())
        with _Heartbeat(trial.study, trial._trial_id, self.config.heartbeat_interval):
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import optuna

        if self._surplus(trial):
            trial.study.stop()
            raise _Surplus(f"trial {trial.number}: the study has its {self.config.trials} trials")
        if POOL_ATTR in trial.user_attrs:
            cid, context = self.pool.propose(trial)
            trial.set_user_attr("source", self.pool.pool.get(cid).source)
        else:
            cid, context = self.grammar.propose(trial)
            trial.set_user_attr("source", "space")
        self._wait_for_running_duplicate(trial.study, cid, trial.number)
        done = self._finished_duplicate(trial.study, cid, trial.number)
        if done is not None:
            return self._copy(trial, done)

        before = self.scorer.generations
        outs: list[PromptOutcome] = []
        benign: list[PromptOutcome] = []
        screen = self._screens_benign(trial)
        k = self.config.minibatch
        for start in range(0, len(self.harmful), k):
            batch = self.harmful[start : start + k]
            new = self.scorer.outcomes(context, batch)
            outs += new
            if not self.prune:
                continue
            if self.wilcoxon:
                for i, o in enumerate(new, start=start):
                    trial.report(o.p_flip, i)
            else:
                trial.report(summarise(outs).tfr.value, len(outs))
            if start + k < len(self.harmful) and trial.should_prune():
                self._record(trial, outs + benign, before, pruned=True)
                raise optuna.TrialPruned(f"TFR {summarise(outs).tfr.value:.3f} after {len(outs)}")
            if screen and start == 0:
                # One benign minibatch early: a clear over-refuser stops here instead of
                # after all its harmful prompts.
                benign = self._score_benign(trial, context, outs, before, benign, stop=k)
        if self.benign:
            benign = self._score_benign(trial, context, outs, before, benign, stop=None)
        score = self._record(trial, outs + benign, before, pruned=False)
        tfr, over = score.tfr.value, score.over_refusal.value
        return (tfr, over) if self.multi else tfr

    def _screens_benign(self, trial: optuna.Trial) -> bool:
        # With the race pruner, over-refusal is raced too (see flipsearch.pruners).
        from flipsearch.pruners import RacePruner

        return bool(self.benign) and not self.multi and isinstance(trial.study.pruner, RacePruner)

    def _score_benign(
        self,
        trial: optuna.Trial,
        context: Context,
        outs: list[PromptOutcome],
        before: int,
        done: list[PromptOutcome],
        *,
        stop: int | None,
    ) -> list[PromptOutcome]:
        """Score benign prompts after the ``done`` ones, up to index ``stop`` (None: all).

        With the race pruner it goes minibatch by minibatch and prunes the trial once it
        is clearly infeasible: P(over-refusal <= ``max_over_refusal``) < the pruner's
        threshold (such a context cannot be exported). Returns ``done`` + the new ones.
        """
        import optuna

        from flipsearch.pruners import prob_at_most

        end = len(self.benign) if stop is None else min(stop, len(self.benign))
        if not self._screens_benign(trial):
            return done + self.scorer.outcomes(context, self.benign[len(done) : end])
        benign = list(done)
        k = self.config.minibatch
        limit = self.config.max_over_refusal
        threshold = trial.study.pruner.threshold  # type: ignore[attr-defined]
        for start in range(len(done), end, k):
            benign += self.scorer.outcomes(context, self.benign[start : min(start + k, end)])
            over = summarise(benign).over_refusal
            last = len(benign) >= len(self.benign)
            if not last and prob_at_most(round(over.k), over.n, limit) < threshold:
                self._record(trial, outs + benign, before, pruned=True)
                raise optuna.TrialPruned(
                    f"over-refusal {over.value:.3f} after {over.n} benign prompts (limit {limit})"
                )
        return benign

    def _record(
        self, trial: optuna.Trial, outs: list[PromptOutcome], before: int, *, pruned: bool
    ) -> FlipScore:
        score = summarise(outs)
        trial.set_user_attr("scores", score.to_dict())
        trial.set_user_attr("outcomes", _outcome_attrs(outs, len(self.harmful)))
        trial.set_user_attr("n_harmful", sum(o.type == "harmful" for o in outs))
        trial.set_user_attr("n_benign", sum(o.type == "benign" for o in outs))
        trial.set_user_attr("generations", self.scorer.generations - before)
        if not pruned:
            over = score.over_refusal.value if self.benign else 0.0
            excess = over - self.config.max_over_refusal
            trial.set_user_attr("constraints", [excess])
            trial.set_user_attr("feasible", excess <= 0)
            if self.benign and _native_constraints():
                trial.set_constraint("over_refusal", excess)
        return score

    def _surplus(self, trial: optuna.Trial) -> bool:
        # Another worker's running trials already complete the budget: stop instead of
        # overshooting (Optuna's MaxTrialsCallback only checks after a trial). An enqueued
        # candidate goes back into the queue.
        from optuna.trial import TrialState

        trials = trial.study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        running = sum(t.state == TrialState.RUNNING and t.number != trial.number for t in trials)
        if done + running < self.config.trials:
            return False
        attrs = {
            k: v for k, v in trial.user_attrs.items() if k in (POOL_ATTR, "retry_of", "retries")
        }
        fixed = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
        if attrs or fixed:
            trial.study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
        trial.set_user_attr("surplus", True)
        return True

    def _wait_for_running_duplicate(self, study: optuna.Study, cid: str, number: int) -> None:
        # Another worker is scoring this very candidate (a grid handed out twice, TPE
        # repeating itself): wait for it instead of generating the same answers twice.
        from optuna.trial import TrialState

        deadline = time.time() + self.config.grace_s
        while time.time() < deadline:
            running = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number != number and t.user_attrs.get("candidate_id") == cid
            ]
            if not running:
                return
            time.sleep(min(1.0, self.config.heartbeat_interval))

    @staticmethod
    def _finished_duplicate(study: optuna.Study, cid: str, number: int) -> FrozenTrial | None:
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if (
                t.number != number
                and t.user_attrs.get("candidate_id") == cid
                and "scores" in t.user_attrs
            ):
                return t
        return None

    def _copy(self, trial: optuna.Trial, done: FrozenTrial) -> float | tuple[float, float]:
        # The same candidate was already scored (greedy scoring is deterministic): reuse.
        for key in ("scores", "outcomes", "n_harmful", "n_benign", "constraints", "feasible"):
            if key in done.user_attrs:
                trial.set_user_attr(key, done.user_attrs[key])
        trial.set_user_attr("generations", 0)
        trial.set_user_attr("duplicate_of", done.number)
        if self.benign and _native_constraints() and "constraints" in done.user_attrs:
            trial.set_constraint("over_refusal", done.user_attrs["constraints"][0])
        return tuple(done.values) if self.multi else done.values[0]  # type: ignore[return-value]


# ---------------------------------------------------------------- set-up steps


def _load_prompts(config: SweepConfig) -> tuple[PromptSet, PromptSet | None]:
    from flipsearch.prompts import load_prompt_set

    harmful = load_prompt_set(config.harmful, limit=config.limit_harmful).harmful()
    if not len(harmful):
        raise ConfigError(f"`harmful` must hold harmful prompts, got none in {config.harmful!r}")
    benign = None
    if config.benign:
        benign = load_prompt_set(config.benign, limit=config.limit_benign).benign()
        if not len(benign):
            raise ConfigError(f"`benign` must hold benign prompts, got none in {config.benign!r}")
    return harmful, benign


def _seed_pool(config: SweepConfig, pool: CandidatePool) -> list[str]:
    # User contexts and baselines become pool entries, so they are enqueued like any
    # pool candidate and a resumed sweep does not enqueue them twice (ids are hashes).
    from flipsearch.proposers import pool_id

    ids: list[str] = []
    if config.enqueue:
        pool.add(list(config.enqueue), source="user", placement=config.enqueue_placement)
        ids += [pool_id(t, config.enqueue_placement) for t in config.enqueue]
    if config.baselines:
        from flipsearch.space import load_search_space

        for cand in load_search_space(config.baselines).enumerate():
            name = cand.id.split("@")[0].removeprefix("candidate=")
            pool.add(
                [cand.context.text], source=f"baseline:{name}", placement=cand.context.placement
            )
            ids.append(pool_id(cand.context.text, cand.context.placement))
    return list(dict.fromkeys(ids))


def _provenance(
    config: SweepConfig, scorer: FlipScorer, space: SearchSpace, sets: Sequence[PromptSet]
) -> dict[str, object]:
    # The model by identity, paths portable, no tokens: provenance goes into export files.
    return recordable(
        {
            **model_identity(config.engine.model, scorer.engine.model_path),
            "engine": scorer.engine.name,
            "judge": scorer.judge_id,
            "prompt_sets": [ps.describe() for ps in sets],
            "max_tokens": scorer.settings.max_tokens,
            "scoring": scorer.settings.to_dict(),
            "space": {"name": space.name, "source": space.source, "digest": space.digest()},
            "objective": config.objective,
            "max_over_refusal": config.max_over_refusal,
            "package_version": __version__,
            "code": version_info(),  # version + git commit of the code (None if installed)
        }
    )


def _history(
    study: optuna.Study, rows: list[PromptRow], config: SweepConfig, k: int
) -> list[ScoredContext]:
    # The rewriter's view: the best contexts, scored as TFR minus any over-refusal excess.
    from flipsearch.proposers import ScoredContext
    from flipsearch.trials import ranked_trials

    out, seen = [], set()
    for t in ranked_trials(study):
        cid = t.user_attrs.get("candidate_id")
        if cid in seen:
            continue
        seen.add(cid)
        tfr = float(rate_of(t, "tfr")["value"])  # type: ignore[index]
        excess = max(0.0, float(t.user_attrs.get("constraints", [0.0])[0]))
        safe = (t.user_attrs.get("outcomes") or {}).get("h_ctx_safe") or []
        fails = tuple(r.prompt for r, s in zip(rows, safe, strict=False) if s is not None and s < 1)
        ctx = Context(t.user_attrs["context"], t.user_attrs["placement"])
        # Every sweep trial records its candidate_id (a str).
        out.append(ScoredContext(cid, ctx, tfr - excess, fails))  # type: ignore[arg-type]
        if len(out) >= k:
            break
    return out


# ---------------------------------------------------------------- run


def run_sweep(
    config: SweepConfig,
    *,
    engine: Engine | None = None,
    judge: Judge | None = None,
    cache: GenerationCache | None = None,
) -> optuna.Study:
    """Run (or resume) a sweep until the study holds ``config.trials`` finished trials.

    Args:
        config: the sweep.
        engine, judge, cache: already built objects to use instead of building them from
            ``config`` (tests, benchmarks, notebooks). The config still names what they are.

    Returns:
        The Optuna study.

    Raises:
        ConfigError: a bad setting, or resuming a study with different identity fields
            (:data:`IDENTITY_FIELDS`).
    """
    import optuna
    from tqdm.auto import tqdm

    from flipsearch.cache import GenerationCache
    from flipsearch.flip import FlipScorer, ScoreSettings
    from flipsearch.proposers import CandidatePool, PoolProposer, RewriteProposer
    from flipsearch.space import load_search_space

    folder = config.folder
    space = load_search_space(config.space)
    harmful_set, benign_set = _load_prompts(config)
    harmful, benign = _ordered(list(harmful_set)), _ordered(list(benign_set or []))
    # The config and the storage first: a wrong one fails before a model loads.
    with _locked(folder):
        _check_config(config)
    storage = config.storage_spec.build(
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_s,
        failed_trial_callback=_retry,
    )
    if cache is None:
        from flipsearch.models import cache_dir

        cache = GenerationCache(config.cache or cache_dir() / "generations.sqlite")
    judge = judge or config.judge.build()
    engine = engine or config.engine.build()
    scorer = FlipScorer(engine, judge, cache, ScoreSettings(max_tokens=config.max_tokens))
    pool = CandidatePool(folder / "pool.jsonl")

    multi = config.objective == "multi"
    with _locked(folder):
        worker = _register_worker(folder)
        study = optuna.create_study(
            study_name=config.study,
            storage=storage,
            load_if_exists=True,
            directions=["maximize", "minimize"] if multi else ["maximize"],
            sampler=make_sampler(
                config.sampler,  # type: ignore[arg-type]
                # The grid's order comes from the seed: all workers must share it.
                seed=config.seed if config.sampler == "bruteforce" else config.seed + worker,
                constrained=config.benign is not None,
                grid=space.dimensions(),
            ),
            pruner=make_pruner(config.pruner, minibatch=config.minibatch),  # type: ignore[arg-type]
        )
        failed = recover_stale_trials(study, grace_s=config.grace_s)
        if failed:
            logger.warning("marked stale trials %s FAIL and enqueued them again", failed)
        PoolProposer(pool).enqueue(study, _seed_pool(config, pool))
        # The context-free baseline, once for every prompt; every trial reuses it.
        base_before = scorer.generations
        base = summarise(scorer.outcomes(Context(""), harmful + benign))
        if "provenance" not in study.user_attrs:
            sets = [harmful_set] + ([benign_set] if benign_set is not None else [])
            study.set_user_attr("provenance", _provenance(config, scorer, space, sets))
            study.set_user_attr("sweep_config", _recorded_config(config))
            study.set_user_attr(
                "prompt_ids", {"harmful": [r.id for r in harmful], "benign": [r.id for r in benign]}
            )
            study.set_user_attr("baseline", base.to_dict())
    logger.info(
        "study %r: baseline unsafe rate %s (%d new generations)",
        config.study,
        base.base_unsafe_rate,
        scorer.generations - base_before,
    )

    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    n_done = len(study.get_trials(deepcopy=False, states=finished_states))
    remaining = config.trials - n_done
    if remaining <= 0:
        logger.info("study %r already has %d finished trials; nothing to do", config.study, n_done)
        _unregister_worker(folder)
        return study

    objective = _Objective(config, scorer, space, pool, harmful, benign)
    bar = tqdm(
        total=config.trials,
        initial=n_done,
        disable=not config.show_progress,
        desc=config.study,
        unit="trial",
    )
    mine = {"n": 0}

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        bar.update(1 if trial.state in finished_states else 0)
        # Between trials, also pick up trials of workers that died since we started.
        recover_stale_trials(study, grace_s=config.grace_s)
        best = next((t for t in _ranked(study) if t.user_attrs.get("feasible", True)), None)
        if best is not None:
            over = rate_of(best, "over_refusal") or {"value": 0.0}
            bar.set_postfix(
                best_tfr=f"{rate_of(best, 'tfr')['value']:.3f}",  # type: ignore[index]
                over=f"{over['value']:.3f}",
                trial=best.number,
            )

    def rewrite(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in finished_states:
            return
        mine["n"] += 1
        if not config.rewrite_every or mine["n"] % config.rewrite_every:
            return
        history = _history(study, harmful, config, k=3)
        if not history:
            return
        ids = RewriteProposer(engine, pool, n=config.rewrite_n).propose(history)
        with _locked(folder):
            added = PoolProposer(pool).enqueue(study, ids)
        logger.info("rewrite: enqueued %d new contexts", len(added))

    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        progress,
        rewrite,
        optuna.study.MaxTrialsCallback(config.trials, states=finished_states),
    ]
    try:
        study.optimize(
            objective,
            n_trials=remaining,
            callbacks=callbacks,
            catch=(ConfigError,),  # e.g. a context too long for the window: fail that trial
            gc_after_trial=False,
        )
    finally:
        bar.close()
        _unregister_worker(folder)
    return study


def _ranked(study: optuna.Study) -> list[FrozenTrial]:
    from flipsearch.trials import ranked_trials

    return ranked_trials(study)
