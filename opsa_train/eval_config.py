"""What an evaluation covers: :class:`EvalConfig` (models, sets, sizes) and the reasoning prompt.

The config is frozen, JSON-serialisable (dumped into ``eval.json``) and checks every
field in ``__post_init__``; :func:`opsa_train.evaluate.evaluate` runs it.

Example:
    >>> cfg = EvalConfig(models={"base": "smollm2-135m", "opsa": "runs/R/final"}, limit=8)
    >>> cfg.reference, EvalConfig.from_dict(cfg.to_dict()) == cfg
    ('base', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from flipsearch.judges import JUDGE_READS, JudgeConfig
from opsa_train.checks import check_choice, check_int
from opsa_train.errors import OpsaConfigError
from opsa_train.eval_protocol import check_reasoning_sampling, coerce_task_judges

if TYPE_CHECKING:
    from opsa_train.config import TrainConfig
    from opsa_train.data import TeacherContexts

__all__ = [
    "REASONING_KINDS",
    "TEACHER",
    "EvalConfig",
    "TeacherSpec",
    "reasoning_kind",
    "reasoning_prompt",
]

TEACHER = "teacher"
"""The display name of the teacher row."""

REASONING_KINDS = {"gsm8k": "gsm8k", "math500": "math500", "gpqa_diamond": "gpqa"}
"""Reasoning set name -> answer format of :mod:`opsa_train.answers`."""
SOURCE_KINDS = {"gsm8k": "gsm8k", "math500": "math500", "gpqa": "gpqa"}
"""A prompt row's ``source`` (its dataset adapter) -> answer format: how a local file
or ``hf:`` reasoning set in a known format gets its answer format."""


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher row: a model answering with the privileged contexts of an export file.

    I_h goes before harmful prompts and I_b before the others (over-refusal, reasoning),
    as in training (:class:`opsa_train.data.TeacherContexts`, same overrides), so the
    row is the ceiling OPSA distils towards. It gets no retention measure.

    Example:
        >>> TeacherSpec.coerce({"export": "runs/demo/export.json"}).model is None
        True
    """

    export: str
    """The flipsearch export file holding I_h (and I_b)."""
    model: str | None = None
    """The teacher's weights; None: the reference model's (the frozen initial model)."""
    benign_context: str | None = None
    """As :attr:`opsa_train.config.TrainConfig.benign_context` ("" = no I_b)."""
    placement: str | None = None
    """As :attr:`opsa_train.config.TrainConfig.placement`."""
    keep_default_system: bool = False
    """As :attr:`opsa_train.config.TrainConfig.keep_default_system`."""

    def __post_init__(self) -> None:
        if not isinstance(self.export, str) or not self.export.strip():
            raise OpsaConfigError(
                f"`teacher.export` must be an export file path, got {self.export!r}: "
                "write one with `flipsearch export`"
            )
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise OpsaConfigError(
                f"`teacher.model` must be a model path or null, got {self.model!r}"
            )

    @classmethod
    def of_training(cls, export: str, train: TrainConfig) -> TeacherSpec:
        """The teacher a training run distils: ``export``'s contexts with ``train``'s
        I_b, placement and default-system overrides."""
        return cls(
            export=export,
            benign_context=train.benign_context,
            placement=train.placement,
            keep_default_system=train.keep_default_system,
        )

    def contexts(self) -> TeacherContexts:
        """I_h and I_b from the export file, with this spec's overrides applied.

        Raises:
            ExportFileError: the export file is missing or malformed.
        """
        from flipsearch.export import read_export
        from opsa_train.data import TeacherContexts

        return TeacherContexts.from_export(read_export(self.export), self)

    @classmethod
    def coerce(cls, value: TeacherSpec | Mapping[str, object] | str | None) -> TeacherSpec | None:
        """A spec from itself, a mapping of its fields, an export path, or None."""
        if value is None or isinstance(value, TeacherSpec):
            return value
        if isinstance(value, str):
            return cls(export=value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise OpsaConfigError(
                    f"`teacher` keys must be among {sorted(cls.__dataclass_fields__)}, "
                    f"got {unknown!r}"
                )
            return cls(**value)  # type: ignore[arg-type]
        raise OpsaConfigError(f"`teacher` must be an export file path or a mapping, got {value!r}")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and at which sizes; JSON-serialisable (dumped into ``eval.json``).

    Example:
        >>> cfg = EvalConfig(models={"base": "smollm2-135m"}, limit=4, max_tokens=16)
        >>> cfg.reference, cfg.harmful_sets[0]
        ('base', 'harmful_core:eval')
    """

    models: Mapping[str, str] = field(default_factory=lambda: {"base": "smollm2-135m"})
    """Display name -> model (embedded name, HF folder such as ``runs/R/final``, hub id);
    table columns keep this order."""
    reference: str | None = None
    """The model whose greedy benign answers the retention measure scores (a key of
    ``models``); None takes ``base`` if present, else the first model."""
    out_dir: str = "results/eval"
    """Where eval.json / eval.csv / eval.md / samples.jsonl go."""

    # -- sets
    harmful_sets: tuple[str, ...] = (
        "harmful_core:eval",
        "advbench:eval",
        "harmbench:eval",
        "strongreject:eval",
    )
    """Harmful prompt sets (harmful rows only are used); ``:eval`` splits are held out."""
    over_refusal_sets: tuple[str, ...] = ("xstest", "benign_lookalike:eval")
    """Safe prompt sets for over-refusal (benign rows only: XSTest's 250 safe prompts)."""
    reasoning_sets: tuple[str, ...] = ("gsm8k", "math500")
    """Reasoning sets with reference answers: ``gsm8k``, ``math500``, ``gpqa_diamond`` (any
    split), or a file / ``hf:`` dataset in one of their formats."""
    retention_set: str | None = "benign:eval"
    """Benign prompts for the retention measure; None skips it."""
    limit: int | None = 50
    """First N rows of each set (after the type filter); None keeps all."""
    reasoning_limit: int | None = None
    """First N rows of each reasoning set; None uses ``limit``."""

    # -- generation
    max_tokens: int = 128
    """New tokens of safety and over-refusal answers (greedy)."""
    reasoning_max_tokens: int = 512
    """New tokens of reasoning answers; chain-of-thought needs room."""
    reasoning_samples: int = 1
    """k of avg@k: answers sampled per reasoning prompt (:mod:`opsa_train.eval_protocol`);
    1 with ``reasoning_temperature`` 0 is greedy (the default). The paper: 8."""
    reasoning_temperature: float = 0.0
    """Sampling temperature of reasoning answers; 0 is greedy. The paper: 0.6."""
    reasoning_seed: int = 0
    """Seed of sampled reasoning answers (part of the cache key)."""
    retention_max_tokens: int = 64
    """New tokens of the reference's benign answers that retention scores."""
    engine: str = "auto"
    """``vllm``, ``hf`` or ``auto`` for generation."""
    max_model_len: int = 2048
    """vLLM context window."""
    batch_size: int = 16
    """HF engine batch size, and the teacher-forcing batch of the retention measure."""
    gpu_memory_utilization: float | None = None
    """vLLM's GPU memory fraction for the generating engines; None keeps vLLM's default.
    Lower it when a model judge shares the GPU."""
    enable_thinking: bool | None = None
    """The chat templates' thinking switch (Qwen3's ``enable_thinking``) for every
    generating engine; None passes nothing (each template's default). With thinking on,
    raise ``max_tokens``: the judge reads the answer after ``</think>``, and a trace cut
    by ``max_tokens`` is ``unfinished`` (counted harmful on harmful prompts)."""
    judge_reads: str = "answer"
    """What the harmful-rate and over-refusal judges read of a reasoning model's response:
    its final ``answer`` after ``</think>`` or its ``trace`` (``--judge-trace``; a response
    without a trace then gets an invalid verdict: harmful on harmful prompts, a refusal on
    safe ones). ``samples.jsonl`` keeps both either way."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The judge (default: the offline refusal judge) of every task ``judges`` does not name."""
    judges: Mapping[str, JudgeConfig] = field(default_factory=dict)
    """Task (``harmful``, ``over_refusal``) -> its own judge (a JudgeConfig, a mapping of
    its fields or a judge name); the paper: ``{harmful: llamaguard, over_refusal:
    wildguard}``. Each judge's name, model and engine go into ``eval.json``."""
    teacher: TeacherSpec | None = None
    """Adds a ``teacher`` row (:class:`TeacherSpec`; a mapping or an export path is
    coerced) and, with it, each model's distillation efficiency
    (:mod:`opsa_train.efficiency`); None: no teacher row."""
    cache: str | None = None
    """Generation/verdict cache (SQLite); None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "judge", JudgeConfig.coerce(self.judge))
        object.__setattr__(self, "judges", coerce_task_judges(self.judges))
        object.__setattr__(self, "teacher", TeacherSpec.coerce(self.teacher))
        for name in ("harmful_sets", "over_refusal_sets", "reasoning_sets"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(s.strip() for s in value.split(",") if s.strip())
            object.__setattr__(self, name, tuple(value))
        models = dict(self.models)
        object.__setattr__(self, "models", models)
        self._check_models(models)
        if self.reference is None:
            object.__setattr__(
                self, "reference", "base" if "base" in models else next(iter(models))
            )
        self._check_sizes_and_sets()

    def _check_models(self, models: dict[str, str]) -> None:
        if not models:
            raise OpsaConfigError("`models` must name at least one model, got {}")
        for name, path in models.items():
            if not isinstance(name, str) or not name.strip() or "|" in name:
                raise OpsaConfigError(
                    f"`models` names must be non-empty, without '|', got {name!r}"
                )
            if not isinstance(path, str) or not path.strip():
                raise OpsaConfigError(
                    f"`models[{name!r}]` must be a model path or name, got {path!r}"
                )
        if self.teacher is not None and TEACHER in models:
            raise OpsaConfigError(
                f"`models` must not name a model {TEACHER!r} when `teacher` is set: "
                "that name is the teacher row's"
            )
        if self.reference is not None and self.reference not in models:
            raise OpsaConfigError(
                f"`reference` must be one of the models {sorted(models)}, got {self.reference!r}"
            )

    def _check_sizes_and_sets(self) -> None:
        for kind_set in self.reasoning_sets:
            if reasoning_kind(kind_set) is None and not _file_or_hub(kind_set):
                raise OpsaConfigError(
                    f"`reasoning_sets` entries must be one of {sorted(REASONING_KINDS)} "
                    f"(optionally :split) or a file / hf: dataset in one of their formats, "
                    f"got {kind_set!r}: answer extraction is written for those formats"
                )
        for name in ("limit", "reasoning_limit"):
            check_int(name, getattr(self, name), optional=True)
        for name in ("max_tokens", "reasoning_max_tokens", "retention_max_tokens", "batch_size"):
            check_int(name, getattr(self, name))
        check_choice("engine", self.engine, ("auto", "vllm", "hf"))
        check_choice(
            "judge_reads",
            self.judge_reads,
            JUDGE_READS,
            why="the judge reads the final answer, or the trace (--judge-trace)",
        )
        if self.enable_thinking is not None and not isinstance(self.enable_thinking, bool):
            raise OpsaConfigError(
                f"`enable_thinking` must be true, false or null, got {self.enable_thinking!r}"
            )
        check_reasoning_sampling(self.reasoning_samples, self.reasoning_temperature)
        check_int("reasoning_seed", self.reasoning_seed, minimum=0)
        if not (self.harmful_sets or self.over_refusal_sets or self.reasoning_sets):
            raise OpsaConfigError(
                "at least one of the harmful, over-refusal or reasoning sets is needed"
            )

    def judge_for(self, task: str) -> JudgeConfig:
        """The judge of ``task``: its entry in ``judges``, else ``judge``."""
        return self.judges.get(task, self.judge)

    @property
    def columns(self) -> list[str]:
        """The table's models: ``models`` then, with a teacher, ``teacher``."""
        return [*self.models, *([TEACHER] if self.teacher is not None else [])]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["models"] = dict(self.models)
        d["judge"] = self.judge.to_dict()
        d["judges"] = {task: j.to_dict() for task, j in self.judges.items()}
        d["teacher"] = None if self.teacher is None else asdict(self.teacher)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> EvalConfig:
        """Rebuild from :meth:`to_dict` output (or a YAML mapping); unknown keys raise."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise OpsaConfigError(
                f"`eval` config keys must be among {sorted(known)}, got {unknown!r}"
            )
        return cls(**dict(d))  # type: ignore[arg-type]


def reasoning_kind(spec: str, source: str | None = None) -> str | None:
    """The answer format of a reasoning set spec (``gsm8k:test`` -> ``gsm8k``), else of
    its rows' ``source`` (a file or ``hf:`` set read by a known adapter), or None."""
    return REASONING_KINDS.get(spec.split(":")[0]) or SOURCE_KINDS.get(source or "")


def _file_or_hub(spec: str) -> bool:
    from flipsearch.prompts._files import FILE_SUFFIXES

    name = (
        spec.rpartition(":")[0] if spec.rpartition(":")[2] in ("search", "train", "eval") else spec
    )
    return spec.startswith("hf:") or any(name.lower().endswith(s) for s in FILE_SUFFIXES)


def reasoning_prompt(question: str) -> str:
    """The user turn of a reasoning question: ask for a step-by-step answer in ``\\boxed{}``.

    Example:
        >>> reasoning_prompt("1+1?").endswith("within \\\\boxed{}.")
        True
    """
    return (
        f"{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    )
