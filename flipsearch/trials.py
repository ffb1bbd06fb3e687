"""Read a sweep's Optuna study: open it, the best and Pareto trials, the trials table.

Shared by :mod:`flipsearch.sweep` (which writes studies) and the ``export`` and ``report``
commands (which read them). Every trial of a sweep carries its scores as user
attributes (see :mod:`flipsearch.sweep`), so nothing here needs a model.

Storage URLs (parsing, building, password masking) live in :mod:`flipsearch.storage`
and are re-exported here.

Example:
    >>> parse_storage(None, results_dir="results", study="demo").url
    'sqlite:///results/demo/study.db'
    >>> parse_storage("journal:/tmp/s.log", results_dir="results", study="demo").kind
    'journal'
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from flipsearch.errors import ConfigError
from flipsearch.scoring import METRIC_FIELDS, check_metric
from flipsearch.storage import (
    JOURNAL_SUFFIXES,
    SQLITE_SUFFIXES,
    StorageSpec,
    default_storage,
    mask_storage,
    parse_storage,
    redact_storage_password,
    storage_identity,
    study_dir,
)

if TYPE_CHECKING:
    import pandas as pd
    from optuna.trial import FrozenTrial

    from flipsearch.contexts import Context
    from flipsearch.export import ExportFile

__all__ = [
    "CONFIG_FILE",
    "JOURNAL_SUFFIXES",
    "SQLITE_SUFFIXES",
    "StorageSpec",
    "best_trial",
    "default_storage",
    "export_of",
    "failing_prompt_ids",
    "mask_storage",
    "objective_metric_of",
    "open_study",
    "pareto_trials",
    "parse_storage",
    "ranked_trials",
    "rate_of",
    "read_study_config",
    "redact_storage_password",
    "storage_identity",
    "study_dir",
    "target_of",
    "trials_frame",
    "write_trials_table",
]

CONFIG_FILE = "config.json"


# ---------------------------------------------------------------- study files


def read_study_config(results_dir: str | Path, study: str) -> dict | None:
    """The sweep's ``config.json`` as a dict, or None when the study folder has none."""
    path = study_dir(results_dir, study) / CONFIG_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def open_study(
    study: str, *, storage: str | None = None, results_dir: str | Path = "results"
) -> optuna.Study:
    """Load an existing sweep study (read-only use: export, report).

    The storage is ``storage`` if given, else the one recorded in
    ``<results_dir>/<study>/config.json`` (its password masked: libpq then takes it from
    ``PGPASSWORD`` or ``~/.pgpass``), else the default SQLite file.

    Raises:
        ConfigError: no such study in that storage (the message lists the ones there).
    """
    if storage is None:
        recorded = read_study_config(results_dir, study)
        storage = recorded.get("storage") if recorded else None
    spec = parse_storage(storage, results_dir=results_dir, study=study)
    if spec.kind == "rdb" and spec.url.startswith("sqlite:///"):
        db = Path(spec.url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise ConfigError(
                f"`study` must name a sweep with a storage, got {study!r}: {db} does not "
                f"exist. Run `flipsearch sweep --study {study}` first or pass --storage."
            )
    if spec.kind == "journal" and not Path(spec.url).is_file():
        raise ConfigError(f"`storage` journal file must exist, got {spec.url!r}")
    built = spec.build()
    names = [s.study_name for s in optuna.get_all_study_summaries(built)]
    if study not in names:
        raise ConfigError(
            f"`study` must be one of {names} in {mask_storage(spec.url)}, got {study!r}"
        )
    return optuna.load_study(study_name=study, storage=built)


# ---------------------------------------------------------------- trial scores


def rate_of(trial: FrozenTrial, name: str) -> dict[str, float] | None:
    """A rate (``tfr``, ``over_refusal`` ...) recorded on a trial, as a dict
    ``{value, k, n, ci_low, ci_high}``; None when the trial did not measure it."""
    scores = trial.user_attrs.get("scores")
    if not isinstance(scores, dict):
        return None
    rate = scores.get(name)
    return rate if isinstance(rate, dict) and rate.get("n") else None


def objective_metric_of(study: optuna.Study) -> str:
    """The metric a sweep maximised (``SweepConfig.objective_metric``, recorded in the
    study's ``sweep_config``): ``tfr``, ``refusal_tfr`` or (an I_b search) ``helpful``;
    ``tfr`` for older studies."""
    recorded = study.user_attrs.get("sweep_config")
    metric = recorded.get("objective_metric") if isinstance(recorded, dict) else None
    return check_metric(metric or "tfr")


def target_of(study: optuna.Study) -> str:
    """What a sweep searched (``SweepConfig.target``, recorded in the study's
    ``sweep_config``): ``harmful`` (I_h) or ``benign`` (I_b); ``harmful`` for older
    studies, which predate I_b searches."""
    recorded = study.user_attrs.get("sweep_config")
    target = recorded.get("target") if isinstance(recorded, dict) else None
    return str(target or "harmful")


def _metric_key(study: optuna.Study, metric: str | None) -> str:
    # The ``scores`` key of the metric (``refusal_tfr`` is recorded as ``tfr_refusal``).
    return METRIC_FIELDS[check_metric(metric) if metric else objective_metric_of(study)]


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    # COMPLETE trials that measured the study's metric (TFR on harmful prompts; the
    # helpful share on benign ones for an I_b search).
    key = _metric_key(study, None)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if rate_of(t, key) is not None
    ]


def _sort_key(t: FrozenTrial, key: str) -> tuple[float, ...]:
    # Higher metric, then lower over-refusal, then a tighter lower bound, then earlier.
    rate = rate_of(t, key) or {}
    over = rate_of(t, "over_refusal") or {}
    return (
        -float(rate.get("value", 0.0)),
        float(over.get("value", 0.0)),
        -float(rate.get("ci_low", 0.0)),
        t.number,
    )


def ranked_trials(
    study: optuna.Study, *, feasible_only: bool = False, metric: str | None = None
) -> list[FrozenTrial]:
    """COMPLETE trials, feasible first, each group by the objective metric down (``metric``,
    default the study's :func:`objective_metric_of`), over-refusal up."""
    key = _metric_key(study, metric)
    trials = _complete(study)
    if feasible_only:
        trials = [t for t in trials if t.user_attrs.get("feasible", True)]
    return sorted(
        trials, key=lambda t: (not t.user_attrs.get("feasible", True), *_sort_key(t, key))
    )


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best feasible COMPLETE trial (highest objective metric, :func:`objective_metric_of`;
    ties: lower over-refusal).

    Raises:
        ConfigError: no trial has finished, or none is feasible (the message gives the
            lowest over-refusal reached, so the threshold can be reconsidered).
    """
    ranked = ranked_trials(study)
    if not ranked:
        raise ConfigError(
            f"`study` must have at least one COMPLETE trial, got none in {study.study_name!r}"
        )
    if not ranked[0].user_attrs.get("feasible", True) and target_of(study) == "benign":
        raise ConfigError(
            f"`study` must have a feasible trial, got none in {study.study_name!r}: every "
            "context answered fewer benign prompts than no context did. Sweep again with a "
            "higher --max-helpfulness-loss or another space."
        )
    if not ranked[0].user_attrs.get("feasible", True):
        lowest = min(float((rate_of(t, "over_refusal") or {}).get("value", 1.0)) for t in ranked)
        raise ConfigError(
            f"`study` must have a feasible trial, got none in {study.study_name!r}: the lowest "
            f"over-refusal reached is {lowest:.3f}. Export with --pareto, or sweep again with "
            "a higher --max-over-refusal."
        )
    return ranked[0]


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials on the metric-up / over-refusal-down Pareto front, by metric down
    (the study's :func:`objective_metric_of`: TFR or refusal TFR).

    Computed from the recorded rates, so it works for constrained and multi-objective
    studies alike; trials with equal (metric, over-refusal) are all kept.
    """
    key = _metric_key(study, None)
    pts = [
        (
            t,
            float((rate_of(t, key) or {}).get("value", 0.0)),
            float((rate_of(t, "over_refusal") or {}).get("value", 0.0)),
        )
        for t in _complete(study)
    ]
    front = [
        t
        for t, tfr, over in pts
        if not any((t2 >= tfr and o2 <= over) and (t2 > tfr or o2 < over) for _, t2, o2 in pts)
    ]
    return sorted(front, key=lambda t: _sort_key(t, key))


# ---------------------------------------------------------------- the trials table


def _flat_rate(row: dict[str, object], prefix: str, rate: dict[str, float] | None) -> None:
    rate = rate or {}
    row[prefix] = rate.get("value", math.nan)
    row[f"{prefix}_ci_low"] = rate.get("ci_low", math.nan)
    row[f"{prefix}_ci_high"] = rate.get("ci_high", math.nan)
    row[f"{prefix}_n"] = rate.get("n", 0)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, candidate, context, rates with CIs, params.

    Param columns are ``param_<name>`` (grammar slots); rates are ``tfr``, ``tfr_ci_low``,
    ``tfr_ci_high``, ``tfr_n`` and likewise ``tfr_refusal`` (flips to a refusal),
    ``tfr_non_answer`` (flips to a non-answer), ``over_refusal``, ``refusal_harmful``,
    ``tfr_base_unsafe``, and the I_b search's ``helpful_benign`` (with the context),
    ``helpful_base_benign`` (without) and ``other_benign`` (non-answers with it).
    """
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, object] = {
            "number": t.number,
            "state": t.state.name,
            "candidate_id": t.user_attrs.get("candidate_id"),
            "placement": t.user_attrs.get("placement"),
            "context": t.user_attrs.get("context"),
            "source": t.user_attrs.get("source"),
            "feasible": t.user_attrs.get("feasible"),
        }
        for name in (
            "tfr",
            "tfr_refusal",
            "tfr_non_answer",
            "over_refusal",
            "refusal_harmful",
            "tfr_base_unsafe",
            "helpful_benign",
            "helpful_base_benign",
            "other_benign",
        ):
            _flat_rate(row, name, rate_of(t, name))
        row["generations"] = t.user_attrs.get("generations")
        row["duplicate_of"] = t.user_attrs.get("duplicate_of")
        row["retry_of"] = t.user_attrs.get("retry_of")
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else math.nan
        row["datetime_start"] = t.datetime_start
        for k, v in t.params.items():
            row[f"param_{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def write_trials_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the trials table as CSV or Parquet (by suffix).

    Raises:
        ConfigError: another suffix.
        ImportError: Parquet without ``pyarrow`` (the message gives the pip command).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError("Parquet output needs pyarrow: pip install pyarrow") from e
        frame.to_parquet(path, index=False)
    else:
        raise ConfigError(f"`--trials-table` must end in .csv or .parquet, got {str(path)!r}")
    return path


def failing_prompt_ids(trial: FrozenTrial, prompt_ids: Sequence[str]) -> list[str]:
    """Harmful prompts (ids, in sweep order) a trial's context did not make safe."""
    safe = (trial.user_attrs.get("outcomes") or {}).get("h_ctx_safe") or []
    return [pid for pid, s in zip(prompt_ids, safe, strict=False) if s is not None and s < 1]


# ---------------------------------------------------------------- export


def _manifest(study: optuna.Study, trial: FrozenTrial) -> dict[str, object]:
    # The provenance of one trial's context: what the sweep recorded in the study, plus
    # the trial's placement, study name, number, package version and a timestamp.
    from flipsearch import __version__
    from flipsearch.export import now_iso
    from flipsearch.paths import recordable

    # Older studies recorded absolute model paths: made portable here too.
    prov = recordable(dict(study.user_attrs.get("provenance") or {}))
    prov.update(
        placement=trial.user_attrs.get("placement"),
        candidate_id=trial.user_attrs.get("candidate_id"),
        study=study.study_name,
        trial=trial.number,
        feasible=trial.user_attrs.get("feasible"),
        target=target_of(study),
        objective_metric=objective_metric_of(study),
        package_version=__version__,
        sweep_package_version=prov.get("package_version"),
        created=now_iso(),
    )
    return prov


def _check_same_model(harmful: dict[str, object], benign: dict[str, object]) -> None:
    # I_h and I_b teach one student: both must have been scored on the same model.
    h, b = harmful.get("model_fingerprint"), benign.get("model_fingerprint")
    if h is not None and b is not None and h != b:
        raise ConfigError(
            f"`benign_study` must be scored on the I_h study's model ({h!r}), got "
            f"{benign.get('study')!r} scored on {b!r}: sweep I_b on the same model"
        )


def export_of(
    study: optuna.Study,
    trial: FrozenTrial,
    *,
    benign: Context | None = None,
    benign_study: optuna.Study | None = None,
) -> ExportFile:
    """The export file of one trial: its context (I_h), scores and a provenance manifest.

    The manifest merges what the sweep recorded in the study (model and fingerprint,
    engine, judge, prompt sets with hashes and sizes, max_tokens) with the trial's
    placement, study name, trial number, target, package version and a timestamp.

    I_b comes from ``benign`` (a given context) or ``benign_study`` (an I_b search,
    ``target`` ``benign``: its :func:`best_trial`), not both. From a study, its scores go
    under ``scores.benign`` and its manifest under ``provenance.benign``. A given
    ``benign`` that equals the context of a COMPLETE trial of ``study`` gets that trial's
    over-refusal as ``scores.benign_over_refusal``; otherwise
    ``provenance.benign_measured`` is False.

    Raises:
        ConfigError: ``study`` searched I_b (its best is not an I_h), ``benign_study``
            searched I_h, or both ``benign`` and ``benign_study`` are given.
    """
    from flipsearch.contexts import Context
    from flipsearch.export import ExportFile

    if target_of(study) != "harmful":
        raise ConfigError(
            f"`study` must be an I_h search (target harmful) to export its context for "
            f"harmful prompts, got {study.study_name!r}, an I_b search (target "
            f"{target_of(study)!r}). Export it as I_b beside an I_h study: `flipsearch "
            f"export --study <I_h study> --benign-study {study.study_name} --out best.json`"
        )
    scores = dict(trial.user_attrs.get("scores") or {})
    prov = _manifest(study, trial)
    if benign_study is not None:
        if benign is not None:
            raise ConfigError(
                "give at most one of `benign` (a context) and `benign_study` (an I_b search)"
            )
        if target_of(benign_study) != "benign":
            raise ConfigError(
                f"`benign_study` must be an I_b search (target benign), got "
                f"{benign_study.study_name!r} (target {target_of(benign_study)!r}): its "
                "best context is an I_h. Run `flipsearch sweep --target benign` for I_b"
            )
        best = best_trial(benign_study)
        benign_prov = _manifest(benign_study, best)
        _check_same_model(prov, benign_prov)
        benign = Context(best.user_attrs["context"], best.user_attrs["placement"])
        scores["benign"] = dict(best.user_attrs.get("scores") or {})
        prov["benign"] = benign_prov
        prov["benign_measured"] = True
    elif benign is not None:
        measured = next(
            (
                t
                for t in ranked_trials(study)
                if t.user_attrs.get("context") == benign.text
                and t.user_attrs.get("placement") == benign.placement
            ),
            None,
        )
        prov["benign_measured"] = measured is not None
        if measured is not None:
            scores["benign_over_refusal"] = rate_of(measured, "over_refusal")
            prov["benign_trial"] = measured.number
    return ExportFile(
        harmful=Context(trial.user_attrs["context"], trial.user_attrs["placement"]),
        benign=benign,
        scores=scores,
        provenance=prov,
    )
