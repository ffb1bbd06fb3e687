"""Capability retention: how close each model stays to a reference on benign answers.

The reference model's (``base``) own greedy answers to benign prompts are teacher-forced
through each model, giving per prompt the mean per-token NLL of those answers under the
model and the mean per-token KL(reference || model) over the full vocabulary at the
same positions. A model that kept the base's helpful behaviour has NLL near the base's
and KL near 0; both are averaged over prompts with normal 95% intervals
(:func:`retention_metrics`). KL is the primary measure: NLL can fall *below* the base's
own when a model is sharpened towards those answers (e.g. SFT on the base's greedy
answers), which is not better retention. Works on any model, even where reasoning
accuracy is near 0 (the embedded 135M model).

Example::

    records = retention_scores({"base": "path/a", "opsa": "runs/R/final"}, reference="base",
                               rows=rows, answers=base_answers)
    metrics = retention_metrics(records, ["base", "opsa"], "benign:eval")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from flipsearch.types import Generation, make_conversation
from opsa_train.eval_metrics import Metric, mean_metric

if TYPE_CHECKING:
    from flipsearch.prompts import PromptRow

__all__ = ["retention_metrics", "retention_scores"]


def retention_scores(
    paths: Mapping[str, str],
    *,
    reference: str,
    rows: Sequence[PromptRow],
    answers: Sequence[Generation],
    batch_size: int = 16,
    enable_thinking: bool | None = None,
) -> list[dict[str, object]]:
    """Per model and prompt: mean NLL of the reference's answer and mean KL(ref || model).

    The reference's answers (its own greedy responses to ``rows``) are teacher-forced
    through each model after the same plain prompt; empty answers are skipped. Models
    load one at a time beside the reference (float32 on CPU, bfloat16 on CUDA).
    ``enable_thinking``: the chat-template switch the answers were generated with (the
    prompts are rendered with it too).

    Returns:
        One record per model and kept prompt: ``model``, ``id``, ``n_tokens``, ``nll``,
        ``kl`` (models in ``paths`` order, prompts in ``rows`` order).
    """
    import torch

    from flipsearch.engines._hf import load_hf_model
    from flipsearch.engines.chat import pad_token_id, render_prompt_ids, set_enable_thinking
    from flipsearch.engines.teacher_forcing import build_completion_batch, completion_logits
    from opsa_train.losses import per_token_kl, token_logprobs

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref_model, tokenizer = load_hf_model(paths[reference], dtype)
    ref_model.to(device)
    set_enable_thinking(tokenizer, enable_thinking)
    pad = pad_token_id(tokenizer)
    keep = [(r, a) for r, a in zip(rows, answers, strict=True) if a.token_ids]
    prompts = [render_prompt_ids(tokenizer, make_conversation(r.prompt)) for r, _ in keep]
    completions = [list(a.token_ids) for _, a in keep]
    out: list[dict[str, object]] = []
    for name, path in paths.items():
        model = ref_model if name == reference else load_hf_model(path, dtype)[0].to(device)
        for start in range(0, len(keep), batch_size):
            batch = build_completion_batch(
                prompts[start : start + batch_size], completions[start : start + batch_size], pad
            )
            with torch.inference_mode():
                ref_logits = completion_logits(ref_model, batch).float()
                logits = (
                    ref_logits if model is ref_model else completion_logits(model, batch).float()
                )
                nll_B_T = -token_logprobs(logits, batch.targets_B_T.to(logits.device))
                kl_B_T, _ = per_token_kl(ref_logits, logits)
            for b, n_tok in enumerate(batch.completion_lens):
                row, _ = keep[start + b]
                out.append(
                    {
                        "model": name,
                        "id": row.id,
                        "n_tokens": n_tok,
                        "nll": float(nll_B_T[b, :n_tok].mean()),
                        "kl": float(kl_B_T[b, :n_tok].mean()),
                    }
                )
        if model is not ref_model:
            del model
    return out


def retention_metrics(
    records: Sequence[Mapping[str, object]], models: Sequence[str], set_name: str
) -> list[Metric]:
    """``retention_nll`` and ``retention_kl`` per model (means over prompts, normal CIs).

    Example:
        >>> recs = [{"model": "m", "nll": 1.0, "kl": 0.0}, {"model": "m", "nll": 3.0, "kl": 0.2}]
        >>> [(m.metric, m.value, m.n) for m in retention_metrics(recs, ["m"], "benign:eval")]
        [('retention_nll', 2.0, 2), ('retention_kl', 0.1, 2)]
    """
    out: list[Metric] = []
    for name in models:
        mine = [r for r in records if r["model"] == name]
        for key in ("nll", "kl"):
            values = [float(r[key]) for r in mine]  # type: ignore[arg-type]
            out.append(mean_metric(name, f"retention_{key}", set_name, values))
    return out
