"""The pipeline's config (one YAML file, ``--set`` overrides) and each stage's typed config.

:class:`PipelineConfig` holds every size of the study; the builders below turn it into the
config each stage runs with (:class:`~flipsearch.sweep.SweepConfig`,
:class:`~opsa_train.config.TrainConfig`, :class:`~opsa_train.evaluate.EvalConfig`, ...).

Example:
    >>> cfg = PipelineConfig.from_dict({"run": "t", "train": {"steps": 2}})
    >>> cfg.train["steps"], str(cfg.work_dir)
    (2, 'runs/t')
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flipsearch.engines import EngineConfig
from flipsearch.judges import JudgeConfig
from flipsearch.sweep import SweepConfig
from opsa_train.analysis import AnalysisConfig
from opsa_train.baseline import BaselineOptions
from opsa_train.checks import check_choice
from opsa_train.config import TrainConfig, load_train_config
from opsa_train.errors import OpsaConfigError
from opsa_train.eval_config import TeacherSpec
from opsa_train.evaluate import EvalConfig

__all__ = ["PipelineConfig", "load_pipeline_config", "yaml_document"]

_SECTIONS = ("sweep", "export", "train", "baseline", "eval", "analysis")


@dataclass(frozen=True)
class PipelineConfig:
    """Every size of the pipeline; sections pass through to each stage's own config.

    - ``sweep``: :class:`flipsearch.sweep.SweepConfig` fields (``space``, ``trials``,
      ``limit_harmful``, ``limit_benign``, ``max_tokens``, ``minibatch``, ...);
    - ``export``: ``benign_from`` (a space file whose first candidate is I_b) or
      ``benign_context`` (text), ``benign_placement``; both None: no I_b;
    - ``train``: :class:`opsa_train.config.TrainConfig` fields over ``TrainConfig.cpu_default``
      (or ``TrainConfig.paper`` with ``preset: paper``);
    - ``baseline``: :class:`opsa_train.baseline.BaselineOptions` fields;
    - ``eval``: :class:`opsa_train.evaluate.EvalConfig` fields (sets, ``limit``, tokens);
    - ``analysis``: :class:`opsa_train.analysis.AnalysisConfig` fields.
    """

    run: str = "demo"
    """Run name: ``<results_dir>/<run>/`` (sweep study, eval, analysis, report) and
    ``<runs_dir>/<run>/{opsa,baseline}/`` (training runs)."""
    model: str = "smollm2-135m"
    """The model under study (embedded name, HF folder or hub id)."""
    engine: str = "auto"
    """Generation engine of sweep, baseline data and eval: ``vllm``, ``hf``, ``auto``."""
    judge: str = "refusal"
    """Judge of sweep, baseline filter, eval and the analysis's outcome split (``refusal``
    is offline)."""
    judge_engine: str = "auto"
    """Engine of a model judge (``hf`` keeps it off vLLM's GPU memory pool)."""
    gpu_memory_utilization: float | None = None
    """vLLM GPU memory fraction of the sweep and eval generators; None: vLLM's default, or
    0.55 beside a vLLM model judge (:mod:`flipsearch.engines.gpu_shares`)."""
    judge_gpu_memory_utilization: float | None = None
    """A vLLM model judge's GPU share; None: 0.35 beside a vLLM generator. The two must add
    up to < 1.0 (checked before the sweep loads a model)."""
    enable_thinking: bool | None = None
    """The chat template's thinking switch (Qwen3's ``enable_thinking``) for the sweep,
    training, baseline and eval engines (a stage section's own value wins); None passes
    nothing (the template's default)."""
    results_dir: str = "results"
    runs_dir: str = "runs"
    cache: str | None = None
    """Generation cache; None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""
    preset: str = "cpu"
    """Training preset under ``train``: ``cpu`` or ``paper``."""
    sweep: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.run or "/" in self.run or self.run.startswith("."):
            raise OpsaConfigError(f"`run` must be a folder name without '/', got {self.run!r}")
        check_choice("preset", self.preset, ("cpu", "paper"))
        for name in _SECTIONS:
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif not isinstance(value, dict):
                raise OpsaConfigError(f"`{name}` must be a mapping of options, got {value!r}")

    @property
    def folder(self) -> Path:
        """Where the report and its artifacts are published: ``<results_dir>/<run>``."""
        return Path(self.results_dir) / self.run

    @property
    def work_dir(self) -> Path:
        """The run's working files and stage state: ``<runs_dir>/<run>``."""
        return Path(self.runs_dir) / self.run

    @property
    def export_path(self) -> Path:
        return self.work_dir / "best.json"

    def run_dir(self, kind: str) -> Path:
        return Path(self.runs_dir) / self.run / kind

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise OpsaConfigError(
                f"pipeline config keys must be among {sorted(known)}, got {unknown!r}"
            )
        return cls(**copy.deepcopy(dict(d)))


def load_pipeline_config(
    path: str | Path | None, overrides: Sequence[str] = (), **top: Any
) -> PipelineConfig:
    """Read a YAML file, then apply ``section.key=value`` overrides (YAML-parsed values)
    and keyword overrides of top-level fields that are not None.

    Example:
        >>> load_pipeline_config(None, ["train.steps=3", "run=x"]).train
        {'steps': 3}

    Raises:
        OpsaConfigError: missing file, bad YAML, malformed override or unknown key.
    """
    doc = yaml_document(path, overrides)
    doc.update({k: v for k, v in top.items() if v is not None})
    where = f"pipeline config {str(path)!r}" if path is not None else "pipeline config"
    try:
        cfg = PipelineConfig.from_dict(doc)
    except (OpsaConfigError, TypeError) as e:
        raise OpsaConfigError(f"{where}: {e}") from e
    try:  # the `train` section, checked now rather than after the sweep
        _train_config(cfg, "opsa")
    except OpsaConfigError as e:
        raise OpsaConfigError(f"{where}: `train` section: {e}") from e
    return cfg


def yaml_document(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A YAML mapping (``yaml.safe_load``: data only) with ``key=value`` and
    ``section.key=value`` overrides applied, values YAML-parsed (``grid.lr=[1e-4,3e-4]``).

    Example:
        >>> yaml_document(None, ["a.b=1", "c=[x, y]"])
        {'a': {'b': 1}, 'c': ['x', 'y']}

    Raises:
        OpsaConfigError: missing file, bad YAML, a non-mapping, or a malformed override.
    """
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise OpsaConfigError(f"`config` must be an existing YAML file, got {str(p)!r}")
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise OpsaConfigError(f"`config` {str(p)!r} is not valid YAML: {e}") from e
        if not isinstance(doc, dict):
            raise OpsaConfigError(
                f"`config` {str(p)!r} must hold a mapping, got {type(doc).__name__}"
            )
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise OpsaConfigError(f"override must look like `section.key=value`, got {item!r}")
        value = yaml.safe_load(raw) if raw else ""
        head, dot, tail = key.partition(".")
        if dot:
            doc.setdefault(head, {})
            if not isinstance(doc[head], dict):
                raise OpsaConfigError(
                    f"`{head}` must be a section to set {key!r}, got {doc[head]!r}"
                )
            doc[head][tail] = value
        else:
            doc[head] = value
    return doc


# --------------------------------------------------------------------------------------
# Stage configs (built from the pipeline config; each is the stage's own typed config)


def _engine_config(cfg: PipelineConfig) -> EngineConfig:
    return EngineConfig(
        model=cfg.model,
        engine=cfg.engine,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enable_thinking=cfg.enable_thinking,
    )


def _judge_config(cfg: PipelineConfig) -> JudgeConfig:
    if cfg.judge == "refusal":
        return JudgeConfig("refusal")
    return JudgeConfig(
        cfg.judge, engine=cfg.judge_engine, gpu_memory_utilization=cfg.judge_gpu_memory_utilization
    )


def _sweep_config(cfg: PipelineConfig) -> SweepConfig:
    fields = {"space": "paper_axes", "trials": 6, **cfg.sweep}
    return SweepConfig(
        study=cfg.run,
        results_dir=str(cfg.work_dir / "sweep"),
        engine=_engine_config(cfg),
        judge=_judge_config(cfg),
        cache=cfg.cache,
        **fields,
    )


def _train_config(cfg: PipelineConfig, kind: str) -> TrainConfig:
    base = TrainConfig.cpu_default() if cfg.preset == "cpu" else TrainConfig.paper()
    overrides = {
        "enable_thinking": cfg.enable_thinking,
        **cfg.train,
        "model": cfg.model,
        "context_file": str(cfg.export_path),
        "out_dir": str(cfg.run_dir(kind)),
    }
    return load_train_config(None, overrides, base=base)


def _baseline_options(cfg: PipelineConfig) -> BaselineOptions:
    return BaselineOptions(**{"judge": _judge_config(cfg), "cache": cfg.cache, **cfg.baseline})


def _trained_models(cfg: PipelineConfig) -> dict[str, str]:
    return {
        "base": cfg.model,
        "opsa": str(cfg.run_dir("opsa") / "final"),
        "baseline": str(cfg.run_dir("baseline") / "final"),
    }


def _eval_config(cfg: PipelineConfig) -> EvalConfig:
    train = _train_config(cfg, "opsa")
    teacher = TeacherSpec.of_training(str(cfg.export_path), train)
    fields = {
        "teacher": teacher,
        "engine": cfg.engine,
        "judge": _judge_config(cfg),
        "cache": cfg.cache,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "enable_thinking": cfg.enable_thinking,
        **cfg.eval,
    }
    return EvalConfig(models=_trained_models(cfg), out_dir=str(cfg.work_dir / "eval"), **fields)


def _analysis_config(cfg: PipelineConfig) -> AnalysisConfig:
    fields = {
        "engine": cfg.engine,
        "judge": _judge_config(cfg),
        "cache": cfg.cache,
        "enable_thinking": cfg.enable_thinking,
        # The trained teacher's rendering of a system-placed I_h.
        "keep_default_system": bool(cfg.train.get("keep_default_system", False)),
        **cfg.analysis,
    }
    return AnalysisConfig(
        context_file=str(cfg.export_path),
        models=_trained_models(cfg),
        out_dir=str(cfg.work_dir / "analysis"),
        **fields,
    )
