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

from flipsearch.judges import JudgeConfig
from opsa_train.checks import check_choice, check_int
from opsa_train.errors import OpsaConfigError

__all__ = ["REASONING_KINDS", "EvalConfig", "reasoning_kind", "reasoning_prompt"]

REASONING_KINDS = {"gsm8k": "gsm8k", "math500": "math500"}
"""Reasoning set name -> answer format of :mod:`opsa_train.answers`."""


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
    """Reasoning sets with reference answers: ``gsm8k`` and/or ``math500`` (any split)."""
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
    """New tokens of reasoning answers (greedy); chain-of-thought needs room."""
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
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The judge (default: the offline refusal judge)."""
    cache: str | None = None
    """Generation/verdict cache (SQLite); None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "judge", JudgeConfig.coerce(self.judge))
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
        if self.reference is not None and self.reference not in models:
            raise OpsaConfigError(
                f"`reference` must be one of the models {sorted(models)}, got {self.reference!r}"
            )

    def _check_sizes_and_sets(self) -> None:
        for kind_set in self.reasoning_sets:
            if reasoning_kind(kind_set) is None:
                raise OpsaConfigError(
                    f"`reasoning_sets` entries must be gsm8k or math500 (optionally :split), "
                    f"got {kind_set!r}: answer extraction is written for those formats"
                )
        for name in ("limit", "reasoning_limit"):
            check_int(name, getattr(self, name), optional=True)
        for name in ("max_tokens", "reasoning_max_tokens", "retention_max_tokens", "batch_size"):
            check_int(name, getattr(self, name))
        check_choice("engine", self.engine, ("auto", "vllm", "hf"))
        if not (self.harmful_sets or self.over_refusal_sets or self.reasoning_sets):
            raise OpsaConfigError(
                "at least one of the harmful, over-refusal or reasoning sets is needed"
            )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["models"] = dict(self.models)
        d["judge"] = self.judge.to_dict()
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


def reasoning_kind(spec: str) -> str | None:
    """The answer format of a reasoning set spec (``gsm8k:test`` -> ``gsm8k``), or None."""
    return REASONING_KINDS.get(spec.split(":")[0])


def reasoning_prompt(question: str) -> str:
    """The user turn of a reasoning question: ask for a step-by-step answer in ``\\boxed{}``.

    Example:
        >>> reasoning_prompt("1+1?").endswith("within \\\\boxed{}.")
        True
    """
    return (
        f"{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    )
