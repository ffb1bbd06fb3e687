"""Shares of one GPU for the generating engine and a model judge, checked at start.

vLLM reserves ``gpu_memory_utilization`` of the *whole* GPU (default 0.9), so a
generating vLLM engine and a vLLM model judge (Llama Guard 3, WildGuard) on one GPU must
get shares that add up to less than 1.0. :func:`plan_gpu_shares` fills the shares a user
left unset (:data:`DEFAULT_GENERATOR_SHARE`, :data:`DEFAULT_JUDGE_SHARE`) and stops a run
whose shares cannot fit, naming both numbers, before either engine loads.
:func:`judge_shares_gpu` says when the two engines meet on one GPU at all.

Example:
    >>> plan_gpu_shares(None, None, shared=True)
    (0.55, 0.35)
    >>> plan_gpu_shares(0.9, None, shared=False)  # the judge is not on this GPU
    (0.9, None)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flipsearch.errors import ConfigError

if TYPE_CHECKING:
    from flipsearch.engines import EngineConfig
    from flipsearch.judges import JudgeConfig
    from flipsearch.machine import MachineFacts

__all__ = ["DEFAULT_GENERATOR_SHARE", "DEFAULT_JUDGE_SHARE", "judge_shares_gpu", "plan_gpu_shares"]

DEFAULT_GENERATOR_SHARE = 0.55
"""The generator's share when a vLLM judge shares its GPU and the user set none."""
DEFAULT_JUDGE_SHARE = 0.35
"""The judge's share in that case (Llama Guard 3 8B in bf16 holds ~16 GB of weights)."""


def plan_gpu_shares(
    generator: float | None, judge: float | None, *, shared: bool
) -> tuple[float | None, float | None]:
    """The (generator, judge) ``gpu_memory_utilization`` to start the engines with.

    ``shared``: both are vLLM engines on one GPU (:func:`judge_shares_gpu`). Otherwise the
    values are returned unchanged (each engine has its device to itself).

    Raises:
        ConfigError: a share outside (0, 1], or shares of one GPU adding up to >= 1.0.
    """
    for name, value in (("gpu_memory_utilization", generator), ("judge_gpu_memory_utilization",
                                                                judge)):  # fmt: skip
        if value is not None and not 0.0 < value <= 1.0:
            raise ConfigError(f"`{name}` must lie in (0, 1], got {value!r}")
    if not shared:
        return generator, judge
    g = DEFAULT_GENERATOR_SHARE if generator is None else generator
    j = DEFAULT_JUDGE_SHARE if judge is None else judge
    if g + j >= 1.0:
        raise ConfigError(
            f"`gpu_memory_utilization` {g} (generator) + `judge_gpu_memory_utilization` {j} "
            f"(model judge) = {g + j:.2f} must be < 1.0: both are vLLM engines on one GPU. "
            "Lower one (e.g. 0.55 and 0.35), or run the judge with --judge-engine hf."
        )
    return g, j


def judge_shares_gpu(
    engine: EngineConfig, judge: JudgeConfig, *, facts: MachineFacts | None = None
) -> bool:
    """Whether the generating engine and ``judge`` are both vLLM engines on one CUDA GPU
    (the offline ``refusal`` judge runs no engine)."""
    from flipsearch.engines._choice import choose_engine
    from flipsearch.machine import machine_facts

    if judge.name == "refusal":
        return False
    facts = facts or machine_facts()
    if facts.cuda is None:
        return False
    generator = choose_engine(engine.engine, engine.dtype, facts=facts).engine
    judging = choose_engine(judge.engine, judge.dtype, facts=facts).engine
    return generator == "vllm" and judging == "vllm"
