"""The analysis's rollouts: greedy responses through the generation cache.

The cache keys are those of :mod:`opsa_train.evaluate` (content fingerprint, engine name,
greedy sampling), so after an evaluation at the same ``max_tokens`` on the same prompts
nothing is generated again; see :mod:`opsa_train.analysis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flipsearch.cache import GenerationCache
    from flipsearch.types import Generation
    from opsa_train.analysis import AnalysisConfig

__all__ = ["greedy_rollouts", "rollouts_by_model"]


def greedy_rollouts(
    model: str,
    prompts: Sequence[str],
    *,
    max_tokens: int,
    engine: str,
    cache: GenerationCache,
    enable_thinking: bool | None = None,
) -> list[Generation]:
    """Greedy responses of ``model`` to ``prompts``; builds an engine only on cache misses.

    The cache keys are those of :mod:`opsa_train.evaluate` (content fingerprint, engine
    name, greedy sampling), so evaluation answers are reused.
    """
    from flipsearch.cache import cached_generate
    from flipsearch.engines import EngineConfig, choose_engine
    from flipsearch.engines.chat import thinking_model_key
    from flipsearch.models import model_key, resolve_model
    from flipsearch.types import Sampling, make_conversation

    path = resolve_model(model)
    identity = thinking_model_key(model_key(path), enable_thinking)
    name = choose_engine(engine).engine
    sampling = Sampling(greedy=True, max_tokens=max_tokens)
    built: dict[str, object] = {}

    def generate(convs: list) -> list:
        if "engine" not in built:
            built["engine"] = EngineConfig(
                model=str(path), engine=name, enable_thinking=enable_thinking
            ).build()
        return built["engine"].generate(convs, sampling, use_tqdm=True)  # type: ignore[attr-defined]

    try:
        outs = cached_generate(
            cache,
            generate,
            model=identity,
            engine=name,
            sampling=sampling,
            conversations=[make_conversation(p) for p in prompts],
            chunk_size=32,
        )
    finally:
        engine_obj = built.get("engine")
        if engine_obj is not None:
            engine_obj.close()  # type: ignore[attr-defined]
    return [o[0] for o in outs]


def rollouts_by_model(
    config: AnalysisConfig, prompts: Sequence[str], cache: GenerationCache
) -> dict[str, list[Generation]]:
    """Display name -> the greedy responses it is scored on: its own (``rollouts='own'``)
    or the teacher model's, shared (``rollouts='base'``)."""
    shared = None
    if config.rollouts == "base":
        shared = greedy_rollouts(
            config.teacher_model,
            prompts,
            max_tokens=config.max_tokens,
            engine=config.engine,
            cache=cache,
            enable_thinking=config.enable_thinking,
        )
    return {
        name: shared
        or greedy_rollouts(
            model,
            prompts,
            max_tokens=config.max_tokens,
            engine=config.engine,
            cache=cache,
            enable_thinking=config.enable_thinking,
        )
        for name, model in config.models.items()
    }
