"""Judges: (prompt, response) pairs in, :class:`~flipsearch.types.Verdict` objects out.

- ``refusal`` (the default): the offline refusal/compliance matcher, no weights.
  Outcomes refusal / compliance / other (non-answers); ``unsafe`` is
  ``outcome == "compliance"``, meaningful on harmful prompts only.
- ``llamaguard`` (Llama Guard 3), ``wildguard`` (WildGuard), ``harmbench`` (the HarmBench
  Llama-2-13b classifier): guard models run through the engine layer with their official
  prompt formats; output that does not parse gives an invalid verdict (``unsafe=None``).

Example:
    >>> judge = make_judge("refusal")
    >>> [v.outcome for v in judge.judge(["How do I make a bomb?"] * 2,
    ...                                 ["I'm sorry, I can't help with that.", "Step 1: buy"])]
    ['refusal', 'compliance']

Reasoning models: judge through :func:`judge_responses`, which hands the judge the final
answer after ``</think>`` (or the trace, ``read="trace"``) and gives a response whose
trace never closed the outcome ``unfinished`` (:mod:`flipsearch.judges.final_answer`).

Score the XSTest human labels: ``flipsearch xstest-eval``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from flipsearch.checks import check_choice
from flipsearch.errors import ConfigError, JudgeError
from flipsearch.judges._base import Judge, check_batch, judge_cache_id
from flipsearch.judges._file import judge_file, read_pairs
from flipsearch.judges._guards import (
    HarmBenchJudge,
    LlamaGuardJudge,
    WildGuardJudge,
    harmbench_prompt,
    llama_guard_prompt,
    parse_harmbench,
    parse_llama_guard,
    parse_wildguard,
    wildguard_prompt,
)
from flipsearch.judges._refusal import RefusalJudge, classify_response
from flipsearch.judges.final_answer import JUDGE_READS, UNFINISHED, judge_responses

if TYPE_CHECKING:
    from flipsearch.engines import Engine

__all__ = [
    "JUDGES",
    "JUDGE_READS",
    "UNFINISHED",
    "HarmBenchJudge",
    "Judge",
    "JudgeConfig",
    "LlamaGuardJudge",
    "RefusalJudge",
    "WildGuardJudge",
    "check_batch",
    "classify_response",
    "harmbench_prompt",
    "judge_cache_id",
    "judge_file",
    "judge_responses",
    "llama_guard_prompt",
    "make_judge",
    "parse_harmbench",
    "parse_llama_guard",
    "parse_wildguard",
    "read_pairs",
    "wildguard_prompt",
]

JUDGES: dict[str, str | None] = {
    "refusal": None,
    "llamaguard": "meta-llama/Llama-Guard-3-8B",
    "wildguard": "allenai/wildguard",
    "harmbench": "cais/HarmBench-Llama-2-13b-cls",
}
"""Judge names and the default model of each (None: no model)."""

_MODEL_JUDGES = {
    "llamaguard": LlamaGuardJudge,
    "wildguard": WildGuardJudge,
    "harmbench": HarmBenchJudge,
}


@dataclass(frozen=True)
class JudgeConfig:
    """How to build a judge; JSON-serialisable so any run can be recreated.

    Example:
        >>> JudgeConfig().build().name
        'refusal'
    """

    name: str = "refusal"
    """``refusal`` (offline, default), ``llamaguard``, ``wildguard`` or ``harmbench``."""
    model: str | None = None
    """Model of a model judge (hub id or local folder); None takes the judge's default
    (see :data:`JUDGES`). Must stay None for ``refusal``."""
    engine: str = "auto"
    """Engine for a model judge: ``vllm``, ``hf`` or ``auto``."""
    dtype: str = "bfloat16"
    """Guard model dtype."""
    max_model_len: int = 4096
    """Context window for vLLM; guard prompts plus long responses need room."""
    batch_size: int = 16
    """Prompts per ``generate`` call in the HF engine."""
    gpu_memory_utilization: float | None = None
    """A vLLM judge's share of the GPU; None: vLLM's default, or, when it shares the GPU
    with the generator, :data:`flipsearch.engines.gpu_shares.DEFAULT_JUDGE_SHARE`."""

    def __post_init__(self) -> None:
        check_choice("name", self.name, sorted(JUDGES))
        if self.name == "refusal" and self.model is not None:
            raise ConfigError(
                f"`model` must be None for the offline `refusal` judge, got {self.model!r}"
            )

    @classmethod
    def coerce(cls, value: JudgeConfig | dict[str, object] | str) -> JudgeConfig:
        """``value`` as a config: a dict of fields (JSON, YAML) or a judge name is built;
        a config is returned as it is.

        Example:
            >>> JudgeConfig.coerce("refusal") == JudgeConfig.coerce({"name": "refusal"})
            True
        """
        if isinstance(value, dict):
            return cls(**value)  # type: ignore[arg-type]
        if isinstance(value, str):
            return cls(value)
        return value

    @property
    def resolved_model(self) -> str | None:
        return self.model or JUDGES[self.name]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def build(self, engine: Engine | None = None) -> Judge:
        """Build the judge; model judges start an engine unless one is passed in.

        Raises:
            JudgeError: the guard model cannot be loaded (e.g. gated weights offline).
        """
        if self.name == "refusal":
            return RefusalJudge()
        model = self.resolved_model or ""
        if engine is None:
            engine = _start_engine(self, model)
        return _MODEL_JUDGES[self.name](engine, model=model)


def _start_engine(config: JudgeConfig, model: str) -> Engine:
    from flipsearch.engines import EngineConfig

    engine_config = EngineConfig(
        model=model,
        engine=config.engine,
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        batch_size=config.batch_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
    )
    try:
        return engine_config.build()
    except Exception as e:  # model resolution / loading raise several types
        raise JudgeError(
            f"`model` {model!r} for judge {config.name!r} must be loadable: {e}. "
            "Use the offline judge (name='refusal') or point `model` at a local copy."
        ) from e


def make_judge(name: str = "refusal", **kwargs: object) -> Judge:
    """Shorthand for ``JudgeConfig(name, **kwargs).build()``.

    Raises:
        ConfigError: unknown judge name.
    """
    return JudgeConfig(name, **kwargs).build()  # type: ignore[arg-type]
