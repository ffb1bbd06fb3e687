"""The whole study end to end: sweep -> export -> OPSA -> baseline -> eval -> analysis -> report.

Each stage is a row of :data:`PIPELINE_STAGES`: what it runs, the digest of what it
depends on (its *key*), and the working files it owns. A stage is skipped only when
``runs/<run>/state.json`` records it done under the same key (see
:mod:`opsa_train.stage_state`); a changed config, model, prompt set, export file or
upstream result changes the key, so the stage and everything after it rerun. An
interrupted stage resumes (the sweep from its Optuna storage, training from its last
checkpoint, generation from the cache).

==========  ==============================================  =================================
stage       does                                            key covers
==========  ==============================================  =================================
sweep       :func:`flipsearch.sweep.run_sweep`               sweep config, model fingerprint,
                                                            prompt sets, search space
export      best feasible trial -> ``best.json``            sweep key, export options
opsa        :func:`opsa_train.trainer.train`                train config, model, export file
baseline    :func:`opsa_train.baseline.train_baseline`      opsa inputs + baseline options
eval        :func:`opsa_train.evaluate.evaluate`            eval config, model, opsa/baseline
                                                            keys, eval prompt sets
analysis    :func:`opsa_train.analysis.run_analysis`        analysis config, export, models
report      ``report.md`` from this run's artifacts         always rewritten (seconds)
==========  ==============================================  =================================

Working files live in ``<runs_dir>/<run>/`` (never committed); the report and the small
artifacts it cites are then published to ``<results_dir>/<run>/`` in one folder swap, so
``results/`` only ever holds one run's outputs. ``force`` reruns a stage and all after it.

All sizes come from a YAML file (the packaged ``opsa_train/configs/demo.yaml`` for
``make demo``); a GPU user scales them up in a copy of it or with ``--set section.key=value``
(see ``docs/GPU.md``).

Example::

    python -m opsa_train.demo                                 # the packaged demo config
    opsa-train pipeline --run demo2 --set train.steps=4
    opsa-train pipeline --force eval       # rerun eval, analysis, report

    >>> cfg = PipelineConfig.from_dict({"run": "t", "train": {"steps": 2}})
    >>> cfg.train["steps"], str(cfg.work_dir)
    (2, 'runs/t')
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from flipsearch.atomic import atomic_write_text
from flipsearch.machine import PeakRssSampler, machine_facts
from flipsearch.paths import recordable
from flipsearch.version import code_commit
from opsa_train.errors import OpsaConfigError
from opsa_train.pipeline_config import PipelineConfig, load_pipeline_config
from opsa_train.pipeline_report import publish, write_report
from opsa_train.pipeline_stages import PIPELINE_STAGES, STAGES, Stage, _Run
from opsa_train.stage_state import StageState, stage_key

__all__ = [
    "PIPELINE_STAGES",
    "STAGES",
    "PipelineConfig",
    "Stage",
    "load_pipeline_config",
    "run_pipeline",
]


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _run_stage(stage: Stage, r: _Run, *, index: int, t0: float, forced: bool) -> None:
    # Key the stage, skip it when the state says done under that key, else (clear and) run.
    elapsed = time.perf_counter() - t0
    print(
        f"\n=== [{index}/{len(STAGES)}] {stage.name} {stage.note(r.cfg)}(t+{elapsed:.0f}s) ===",
        flush=True,
    )
    key = stage_key(stage.name, stage.version, **stage.inputs(r))
    r.keys[stage.name] = key
    record = r.state.get(stage.name)
    if not forced and r.state.is_done(stage.name, key):
        print(f"    {stage.name}: up to date (key {key}), skipped", flush=True)
        return
    if forced or record is None or record.key != key:
        stale = [p for p in stage.outputs(r.cfg) if p.exists()]
        if stale:
            why = (
                "forced"
                if forced
                else ("no state record" if record is None else f"key {record.key} -> {key}")
            )
            print(f"    {stage.name}: {why}; removing {', '.join(map(str, stale))}", flush=True)
            _remove(stale)
    elif record.status == "running":
        print(f"    {stage.name}: resuming an interrupted run (key {key})", flush=True)
    r.state.start(stage.name, key)
    started = time.perf_counter()
    with PeakRssSampler() as rss:
        info = stage.run(r)
    seconds = time.perf_counter() - started
    info = {**info, "code_commit": code_commit()}
    r.state.finish(stage.name, key, seconds=seconds, peak_rss_mb=rss.peak_mb, info=info)
    print(f"    {stage.name}: {seconds:.1f}s, peak RSS {rss.peak_mb:.0f} MB", flush=True)


def run_pipeline(
    cfg: PipelineConfig, *, stop_after: str | None = None, force: str | None = None
) -> Path:
    """Run every stage whose inputs changed, write the report and publish it.

    Args:
        cfg: the pipeline config.
        stop_after: run stages up to and including this one (the report then says which
            stages did not run).
        force: rerun this stage and every stage after it, whatever the state says.

    Returns:
        The published report path, ``<results_dir>/<run>/report.md``.
    """
    for name, value in (("stop_after", stop_after), ("force", force)):
        if value is not None and value not in STAGES:
            raise OpsaConfigError(f"`{name}` must be one of {STAGES}, got {value!r}")
    t0, started_at = time.perf_counter(), time.time()
    work = cfg.work_dir
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        work / "pipeline.json", json.dumps(recordable(cfg.to_dict()), indent=2) + "\n"
    )
    r = _Run(cfg, StageState(work))
    last = STAGES.index(stop_after) if stop_after else len(STAGES) - 1
    first_forced = STAGES.index(force) if force else len(STAGES)
    facts = machine_facts()
    print(f"machine: {facts.describe()}; code commit {code_commit() or 'unknown'}", flush=True)
    for i, stage in enumerate(PIPELINE_STAGES):
        if i > last:
            break
        _run_stage(stage, r, index=i + 1, t0=t0, forced=i >= first_forced)
    print(f"\n=== [{len(STAGES)}/{len(STAGES)}] report (t+{time.perf_counter() - t0:.0f}s) ===")
    write_report(cfg, r.state, r.keys, started_at=started_at, wall_seconds=time.perf_counter() - t0)
    path = publish(cfg)
    print(f"\nreport: {path}  (wall {time.perf_counter() - t0:.0f}s)", flush=True)
    return path
