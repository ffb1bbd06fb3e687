"""Does a higher flip rate train a safer model? The paper's Fig. 3, measured.

``validate`` picks K contexts of a finished sweep study spanning its flip-rate range
(evenly by rank, the best and the worst included), trains OPSA with each under one
config and seed, evaluates each student on held-out harmful and over-refusal sets beside
the base model and its teacher, and reports Spearman's rho of the context's flip rate
(and of a proxy score, :mod:`flipsearch.proxy`) against the post-training safety gain,
``base harmful rate - student harmful rate`` pooled over the harmful sets, each with a
bootstrap 95% interval. Each context's run and evaluation live in their own folder, so a
re-run skips what finished (a finished training is a no-op; a finished evaluation is
read back from its ``eval.json``).

Example:
    opsa-train validate --study demo --results-dir runs/demo/sweep --contexts 5 \\
        --out results/validate/demo
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from flipsearch.judges import JudgeConfig
from flipsearch.proxy import RankAgreement, rank_agreement
from flipsearch.scoring import METRIC_FIELDS, check_metric
from opsa_train.checks import check_int
from opsa_train.errors import OpsaConfigError
from opsa_train.eval_metrics import POOLED, counts_as_harmful

__all__ = [
    "ValidateConfig",
    "ValidationRow",
    "pick_spanning",
    "safety_gain",
    "validate",
    "write_validation_report",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateConfig:
    """Which study, how many contexts, and the one recipe every context trains with."""

    study: str
    """The flipsearch sweep study whose contexts are validated."""
    results_dir: str = "results"
    """The sweep's results folder (holding ``<study>/config.json``)."""
    storage: str | None = None
    """The study's storage; None: the one the sweep recorded."""
    contexts: int = 5
    """K: contexts picked evenly by rank over the study's distinct COMPLETE trials."""
    metric: str | None = None
    """The flip rate correlated (``tfr``, ``refusal_tfr``); None: the study's objective."""
    out_dir: str = "runs/validate"
    """One folder per context: its export file, training run and evaluation."""
    train: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig overrides over ``TrainConfig.cpu_default``, shared by every context."""
    harmful_sets: tuple[str, ...] = ("advbench:eval", "harmbench:eval", "strongreject:eval")
    over_refusal_sets: tuple[str, ...] = ("xstest:eval", "benign_lookalike:eval")
    limit: int | None = 50
    """First N prompts of each evaluation set."""
    max_tokens: int = 24
    engine: str = "hf"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    cache: str | None = None
    proxy: str | None = None
    """A ``flipsearch proxy`` CSV; its score of each picked context (matched by text and
    placement) is correlated with the gain too."""
    proxy_column: str = "likelihood"

    def __post_init__(self) -> None:
        object.__setattr__(self, "judge", JudgeConfig.coerce(self.judge))
        for name in ("harmful_sets", "over_refusal_sets"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [s.strip() for s in value.split(",") if s.strip()]
            object.__setattr__(self, name, tuple(value))
        check_int("contexts", self.contexts, minimum=2)
        check_int("max_tokens", self.max_tokens)
        check_int("limit", self.limit, optional=True)
        if not self.harmful_sets:
            raise OpsaConfigError("`harmful_sets` must name at least one harmful prompt set")


@dataclass(frozen=True)
class ValidationRow:
    """One validated context: its flip rate, proxy score and what training did with it."""

    rank: int
    """1-based rank of the context in the study (by ``metric``)."""
    trial: int
    context: str
    placement: str
    flip_rate: float
    flip_low: float
    flip_high: float
    proxy: float | None
    gain: float
    """Pooled base harmful rate - student harmful rate on the held-out harmful sets."""
    gain_low: float
    gain_high: float
    teacher_gain: float
    """Pooled base - teacher harmful rate: the gain OPSA distils towards."""
    efficiency: float
    student_harmful: float
    student_over_refusal: float
    n_harmful: int


def distinct_ranked(study: optuna.Study, metric: str) -> list[FrozenTrial]:
    """COMPLETE trials that measured ``metric`` (``tfr`` or ``refusal_tfr``), by it down
    (ties: trial order), one per distinct (context, placement). Feasibility is ignored:
    the question is what the flip rate predicts, whatever the context's over-refusal."""
    from flipsearch.trials import rate_of

    field_name = METRIC_FIELDS[check_metric(metric)]
    scored = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rate = rate_of(t, field_name)
        if rate is not None:
            scored.append((-float(rate["value"]), t.number, t))
    seen: set[tuple[object, object]] = set()
    out = []
    for _, _, t in sorted(scored, key=lambda item: item[:2]):
        key = (t.user_attrs.get("context"), t.user_attrs.get("placement"))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def pick_spanning(n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)`` spread evenly, first and last included.

    Example:
        >>> pick_spanning(9, 5)
        [0, 2, 4, 6, 8]

    Raises:
        OpsaConfigError: fewer than ``k`` items, or ``k`` < 2.
    """
    if k < 2:
        raise OpsaConfigError(f"`contexts` must be >= 2 to span a range, got {k}")
    if n < k:
        raise OpsaConfigError(
            f"the study must hold at least `contexts`={k} distinct finished contexts, got {n}: "
            "run more sweep trials or lower --contexts"
        )
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def safety_gain(
    records: Sequence[Mapping[str, object]],
    *,
    base: str = "base",
    model: str = "student",
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """``(gain, low, high, n)``: pooled base - ``model`` harmful rate over the harmful
    prompts both answered, with a paired percentile bootstrap 95% interval."""
    harmful: dict[str, dict[tuple[str, str], int]] = {}
    for rec in records:
        if rec.get("task") == "harmful":
            key = (str(rec["set"]), str(rec["id"]))
            harmful.setdefault(str(rec["model"]), {})[key] = int(counts_as_harmful(rec))
    keys = [k for k in harmful.get(base, {}) if k in harmful.get(model, {})]
    if not keys:
        return math.nan, math.nan, math.nan, 0
    b = np.array([harmful[base][k] for k in keys], dtype=np.float64)
    m = np.array([harmful[model][k] for k in keys], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(keys), size=(resamples, len(keys)))
    draws = b[idx].mean(axis=1) - m[idx].mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(b.mean() - m.mean()), float(low), float(high), len(keys)


def validate(config: ValidateConfig) -> list[ValidationRow]:
    """Train and evaluate each picked context (skipping what finished); rows by rank."""
    from flipsearch.trials import objective_metric_of, open_study, rate_of

    study = open_study(config.study, storage=config.storage, results_dir=config.results_dir)
    metric = check_metric(config.metric or objective_metric_of(study))
    ranked = distinct_ranked(study, metric)
    proxies = _proxy_scores(config)
    rows = []
    for index in pick_spanning(len(ranked), config.contexts):
        trial = ranked[index]
        rate = rate_of(trial, METRIC_FIELDS[metric])
        if rate is None:
            raise OpsaConfigError(f"trial {trial.number} of {config.study!r} has no {metric!r}")
        context = str(trial.user_attrs.get("context"))
        placement = str(trial.user_attrs.get("placement"))
        records, metrics = _train_and_evaluate(config, study, trial, index + 1)
        gain = safety_gain(records)
        teacher = safety_gain(records, model="teacher")
        cells = {(m.model, m.metric, m.set): m for m in metrics}
        pooled = POOLED if ("student", "harmful_rate", POOLED) in cells else config.harmful_sets[0]
        over = [m for m in metrics if (m.model, m.metric) == ("student", "over_refusal")]
        n_over = sum(m.n for m in over)
        eff = cells.get(("student", "distill_efficiency", pooled))
        rows.append(
            ValidationRow(
                rank=index + 1,
                trial=trial.number,
                context=context,
                placement=placement,
                flip_rate=float(rate["value"]),
                flip_low=float(rate["ci_low"]),
                flip_high=float(rate["ci_high"]),
                proxy=proxies.get((context, placement)),
                gain=gain[0],
                gain_low=gain[1],
                gain_high=gain[2],
                teacher_gain=teacher[0],
                efficiency=float(eff.value) if eff is not None else math.nan,
                student_harmful=float(cells[("student", "harmful_rate", pooled)].value),
                student_over_refusal=(
                    sum(m.value * m.n for m in over) / n_over if n_over else math.nan
                ),
                n_harmful=gain[3],
            )
        )
    return rows


def _train_and_evaluate(
    config: ValidateConfig, study: optuna.Study, trial: FrozenTrial, rank: int
) -> tuple[list[dict[str, object]], list[Any]]:
    # One context: its export file, its OPSA run (a no-op once finished) and its held-out
    # evaluation (read back once finished).
    from flipsearch.export import write_export
    from flipsearch.jsonl import iter_jsonl_objects
    from flipsearch.trials import export_of
    from opsa_train.config import TrainConfig, load_train_config
    from opsa_train.eval_config import EvalConfig, TeacherSpec
    from opsa_train.eval_report import SAMPLES_JSONL, read_eval
    from opsa_train.evaluate import evaluate
    from opsa_train.trainer import train

    folder = Path(config.out_dir) / f"rank{rank:03d}-trial{trial.number}"
    folder.mkdir(parents=True, exist_ok=True)
    export = folder / "context.json"
    if not export.is_file():
        write_export(export, export_of(study, trial))
    train_config = load_train_config(
        None,
        {**dict(config.train), "context_file": str(export), "out_dir": str(folder / "run")},
        base=TrainConfig.cpu_default(),
    )
    eval_dir = folder / "eval"
    found = read_eval(eval_dir)
    if found is None:
        logger.info("validate: training with the context of trial %d (rank %d)", trial.number, rank)
        result = train(train_config)
        evaluate(
            EvalConfig(
                models={"base": train_config.model, "student": str(result.final_dir)},
                harmful_sets=config.harmful_sets,
                over_refusal_sets=config.over_refusal_sets,
                reasoning_sets=(),
                retention_set=None,
                limit=config.limit,
                max_tokens=config.max_tokens,
                engine=config.engine,
                judge=config.judge,
                cache=config.cache,
                teacher=TeacherSpec.of_training(str(export), train_config),
                out_dir=str(eval_dir),
            )
        )
        found = read_eval(eval_dir)
        assert found is not None
    records = [obj for _, obj in iter_jsonl_objects(eval_dir / SAMPLES_JSONL, OpsaConfigError)]
    return records, found[1]


def _proxy_scores(config: ValidateConfig) -> dict[tuple[str, str], float]:
    if config.proxy is None:
        return {}
    path = Path(config.proxy)
    if not path.is_file():
        raise OpsaConfigError(
            f"`proxy` must be a CSV of `flipsearch proxy`, got {path}: no such file"
        )
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and config.proxy_column not in rows[0]:
        raise OpsaConfigError(
            f"{path}: `proxy_column` must be a column of the file ({sorted(rows[0])}), "
            f"got {config.proxy_column!r}"
        )
    return {
        (r["text"], r["placement"]): float(r[config.proxy_column])
        for r in rows
        if r.get(config.proxy_column) not in (None, "")
    }


@dataclass(frozen=True)
class Agreement:
    """The validation's rank correlations."""

    flip_vs_gain: RankAgreement
    flip_vs_teacher_gain: RankAgreement
    proxy_vs_gain: RankAgreement | None


def agreement(rows: Sequence[ValidationRow]) -> Agreement:
    """Spearman's rho (bootstrap 95% CI over contexts) of flip rate and proxy vs gain."""
    flips = [r.flip_rate for r in rows]
    gains = [r.gain for r in rows]
    with_proxy = [r for r in rows if r.proxy is not None]
    return Agreement(
        flip_vs_gain=rank_agreement(flips, gains),
        flip_vs_teacher_gain=rank_agreement(flips, [r.teacher_gain for r in rows]),
        proxy_vs_gain=(
            rank_agreement([float(r.proxy) for r in with_proxy], [r.gain for r in with_proxy])  # type: ignore[arg-type]
            if len(with_proxy) >= 2
            else None
        ),
    )


def write_validation_report(
    rows: Sequence[ValidationRow], out: str | Path, *, header: str, metric: str
) -> list[Path]:
    """``validate.md``, ``validate.csv`` and ``validate.png`` (flip rate vs gain, CIs on
    both axes) in ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    agree = agreement(rows)
    lines = [
        header,
        "",
        f"Flip rate: `{metric}` on the sweep's prompts. Gain: pooled base - student harmful "
        "rate on the held-out harmful sets (paired bootstrap 95% CI); teacher gain: base - "
        "teacher (the base model with the context), the gain OPSA distils towards.",
        "",
        f"- Spearman, flip rate vs student gain: **{agree.flip_vs_gain}**",
        f"- Spearman, flip rate vs teacher gain: {agree.flip_vs_teacher_gain}",
    ]
    if agree.proxy_vs_gain is not None:
        lines.append(f"- Spearman, proxy vs student gain: {agree.proxy_vs_gain}")
    lines += [
        "",
        "| rank | trial | placement | context | flip rate [95% CI] | proxy | gain [95% CI] | "
        "teacher gain | efficiency | student harmful | student over-refusal | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        text = r.context if len(r.context) <= 70 else r.context[:67] + "..."
        proxy = "-" if r.proxy is None else f"{r.proxy:.3f}"
        lines.append(
            f"| {r.rank} | {r.trial} | {r.placement} | {text} | {r.flip_rate:.3f} "
            f"[{r.flip_low:.3f}, {r.flip_high:.3f}] | {proxy} | {r.gain:.3f} "
            f"[{r.gain_low:.3f}, {r.gain_high:.3f}] | {r.teacher_gain:.3f} | "
            f"{r.efficiency:.3f} | {r.student_harmful:.3f} | {r.student_over_refusal:.3f} | "
            f"{r.n_harmful} |"
        )
    md = folder / "validate.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    table = folder / "validate.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return [md, table, _scatter(rows, folder / "validate.png", metric)]


def _scatter(rows: Sequence[ValidationRow], path: Path, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    x = np.array([r.flip_rate for r in rows])
    y = np.array([r.gain for r in rows])
    xerr = np.array(
        [[r.flip_rate - r.flip_low for r in rows], [r.flip_high - r.flip_rate for r in rows]]
    )
    yerr = np.array([[r.gain - r.gain_low for r in rows], [r.gain_high - r.gain for r in rows]])
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, label="student")
    ax.scatter(x, [r.teacher_gain for r in rows], marker="x", color="black", label="teacher")
    for r in rows:
        ax.annotate(str(r.rank), (r.flip_rate, r.gain), textcoords="offset points", xytext=(4, 4))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"{metric} of the context (sweep prompts, 95% CI)")
    ax.set_ylabel("held-out safety gain (base - model harmful rate)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
