"""Dead workers: heartbeats of running trials, and their stale trials failed and retried.

A worker that dies mid-trial loses only that trial: a worker that starts later, any
running worker between two trials, or (RDB storages) Optuna's heartbeat marks it FAIL
and enqueues its candidate again, at most :data:`MAX_RETRIES` times. A dead worker on
this machine is recognised by its process id, one elsewhere by a heartbeat older than
the grace period.

Example:
    >>> import optuna
    >>> study = optuna.create_study()
    >>> recover_stale_trials(study, grace_s=120)  # nothing is running
    []
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from flipsearch.proposers import POOL_ATTR
from flipsearch.sweep._workers import pid_alive

__all__ = ["MAX_RETRIES", "Heartbeat", "recover_stale_trials", "retry_trial"]

logger = logging.getLogger(__name__)

MAX_RETRIES = 3
"""A candidate whose trials died this many times is not enqueued again."""


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a dead trial's candidate again (same params or pool id), up to MAX_RETRIES.

    Used as RDBStorage's ``failed_trial_callback`` and by :func:`recover_stale_trials`.
    """
    retries = int(trial.user_attrs.get("retries", 0)) + 1
    if retries > MAX_RETRIES:
        logger.warning("trial %d died %d times; not retrying it", trial.number, retries)
        return
    chosen = POOL_ATTR in trial.user_attrs or any(
        key.endswith("candidate_id") for key in trial.user_attrs
    )
    if not chosen:
        # Killed before its proposer chose a candidate: its params may be partial, which a
        # grid sampler refuses to enqueue, and nothing was scored. The sampler picks anew.
        logger.warning("trial %d died before choosing a candidate; not retried", trial.number)
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
    host, now, failed = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        beat = t.user_attrs.get("heartbeat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        dead_here = worker.get("host") == host and not pid_alive(int(worker.get("pid", -1)))
        if dead_here or (beat is not None and now - float(beat) > grace_s):
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                continue  # another worker got there first
            failed.append(t.number)
            retry_trial(study, study._storage.get_trial(t._trial_id))
    return failed


class Heartbeat:
    """Writes a ``heartbeat`` user attribute every ``interval`` seconds while a trial runs
    (a context manager): Optuna's journal storage has no heartbeat of its own."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self._study, self._trial_id, self._interval = study, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # the trial may just have finished
                self._study._storage.set_trial_user_attr(self._trial_id, "heartbeat", time.time())

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
