"""Token-level KL between the context-conditioned teacher and a student (the paper's Fig. 2).

The teacher is the *initial* model reading [I_h + harmful prompt]; the student is a
model (base, OPSA, baseline) reading the plain prompt. Both are teacher-forced on the
same response tokens and compared position by position over the full vocabulary:

- ``kl_fwd`` = KL(teacher || student), ``kl_rev`` = KL(student || teacher), and
  ``kl`` = 0.5 * (kl_fwd + kl_rev), the mix OPSA trains on (arXiv 2605.15239);
- per position (mean over prompts: where in the answer the teacher and student differ)
  and per token (the KL mass each token string carries: compliance openers such as
  "Sure" / "Here" on the base model are where the context acts);
- per outcome: each rollout is judged (the configured judge, verdicts cached as in
  evaluation) and the KL is summarised separately over refusals, compliances and
  non-answers (:mod:`opsa_train.analysis_outcomes`);
- reasoning models: each token row says whether it lies in the ``<think>`` trace
  (``in_trace``, ``</think>`` included), so where the trace ends shows in
  ``token_kl.csv``; the KL is taken over the whole sequence, trace included, as the
  trainer distils it.

Rollouts (``rollouts=``): ``own`` (default) scores each model on *its own* greedy
responses, i.e. the on-policy view the OPSA loss sees, and the quantity a trained
student should have lowered; ``base`` scores every model on the reference (base)
model's greedy responses, a shared set, so differences come from the weights alone.
Greedy generations go through the flipsearch cache with the same keys as
:mod:`opsa_train.evaluate`, so after an evaluation at the same ``max_tokens`` on the same
prompts nothing is generated again.

Outputs in ``out_dir``: ``token_kl.csv`` (one row per model, prompt and position),
``kl_by_position.csv``, ``kl_top_tokens.csv``, ``kl_by_outcome.csv``, ``kl_summary.json``,
``kl_by_position.png``, ``kl_top_tokens.png``, ``kl_by_position_outcome.png`` (tables,
plots and files: :mod:`opsa_train.analysis_report` and :mod:`opsa_train.analysis_outcomes`;
per-token KL: :func:`opsa_train.losses.per_token_kl`).

Example::

    opsa-train analyze --context results/demo/best.json \\
        --models base=smollm2-135m opsa=runs/R/final --out results/demo/analysis --limit 8

    >>> AnalysisConfig("results/demo/best.json", models={"opsa": "runs/R/final"}).teacher
    'opsa'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flipsearch.atomic import atomic_write_text
from flipsearch.judges import JudgeConfig
from flipsearch.paths import recordable
from opsa_train.analysis_outcomes import (
    judge_rollouts,
    outcome_summary,
    outcome_table,
    plot_by_outcome,
)
from opsa_train.analysis_report import (
    FIRST_N,
    SUMMARY_JSON,
    analysis_complete,
    kl_by_position_table,
    plot_analysis,
    summary_table,
    top_tokens_table,
    write_csv,
)
from opsa_train.analysis_rollouts import greedy_rollouts, rollouts_by_model
from opsa_train.checks import check_choice, check_int
from opsa_train.errors import OpsaConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from flipsearch.cache import GenerationCache
    from flipsearch.contexts import Context
    from flipsearch.judges import Judge
    from flipsearch.prompts import PromptRow

logger = logging.getLogger(__name__)

__all__ = [
    "FIRST_N",
    "SUMMARY_JSON",
    "AnalysisConfig",
    "analysis_complete",
    "greedy_rollouts",
    "kl_by_position_table",
    "plot_analysis",
    "run_analysis",
    "summary_table",
    "top_tokens_table",
    "write_analysis",
]

ROLLOUTS = ("own", "base")


@dataclass(frozen=True)
class AnalysisConfig:
    """What to analyse; JSON-serialisable (dumped into ``kl_summary.json``)."""

    context_file: str
    """flipsearch export file: I_h (text + placement) is the teacher's context."""
    models: Mapping[str, str] = field(default_factory=lambda: {"base": "smollm2-135m"})
    """Display name -> student model; order is kept in the plots."""
    teacher: str | None = None
    """The teacher's weights (the *initial* model); None: the ``base`` model if present,
    else the first of ``models``. Also the reference for ``rollouts='base'``."""
    prompts: str = "harmful_core:eval"
    """Harmful prompt set (harmful rows only)."""
    limit: int | None = 16
    """First N prompts; None keeps all."""
    max_tokens: int = 48
    """New tokens per greedy rollout."""
    rollouts: str = "own"
    """``own``: each model's greedy rollouts; ``base``: the teacher model's, shared."""
    engine: str = "auto"
    """Engine for rollouts not yet in the cache: ``vllm``, ``hf`` or ``auto``."""
    batch_size: int = 8
    """Teacher-forcing batch."""
    top_tokens: int = 15
    """Tokens shown per model in ``kl_top_tokens``."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The judge whose outcome splits the KL (default: the offline refusal judge)."""
    out_dir: str = "results/analysis"
    cache: str | None = None
    """Generation cache; None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""
    enable_thinking: bool | None = None
    """The chat template's thinking switch (Qwen3's ``enable_thinking``) for rollouts and
    teacher forcing; None passes nothing. Use the evaluation's value to reuse its answers."""
    keep_default_system: bool = False
    """As :attr:`opsa_train.config.TrainConfig.keep_default_system`: a ``system``-placed I_h
    goes before the template's default system prompt instead of replacing it, so the
    teacher here reads what the trained teacher read."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", dict(self.models))
        if self.enable_thinking is not None and not isinstance(self.enable_thinking, bool):
            raise OpsaConfigError(
                f"`enable_thinking` must be true, false or null, got {self.enable_thinking!r}"
            )
        object.__setattr__(self, "judge", JudgeConfig.coerce(self.judge))
        if not self.models:
            raise OpsaConfigError("`models` must name at least one model, got {}")
        check_choice("rollouts", self.rollouts, ROLLOUTS)
        check_int("limit", self.limit, optional=True)
        for name in ("max_tokens", "batch_size", "top_tokens"):
            check_int(name, getattr(self, name))
        if self.teacher is None:
            models = list(self.models)
            object.__setattr__(self, "teacher", "base" if "base" in models else models[0])

    @property
    def teacher_model(self) -> str:
        """The teacher's model path: a key of ``models`` resolves to its value."""
        return self.models.get(str(self.teacher), str(self.teacher))

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["models"] = dict(self.models)
        d["judge"] = self.judge.to_dict()
        return d


# --------------------------------------------------------------------------------------
# Running


def run_analysis(
    config: AnalysisConfig,
    *,
    cache: GenerationCache | None = None,
    judge: Judge | None = None,
) -> dict:
    """Compute the token-level KL of every model, split it by outcome, write the files.

    Args:
        config: models, prompts, sizes and the judge.
        cache, judge: already built objects to use (tests); default from ``config``.

    Returns:
        The summary (per model: mean KL, first-tokens vs rest, mass share; per model
        and outcome: the same means over that outcome's rollouts).

    Raises:
        ExportFileError: the context file cannot be read.
        OpsaConfigError: bad config or prompt set.
    """
    from flipsearch.cache import GenerationCache
    from flipsearch.export import read_export
    from flipsearch.models import cache_dir
    from flipsearch.prompts import load_prompt_set

    export = read_export(config.context_file)
    rows = list(load_prompt_set(config.prompts).harmful().rows)
    rows = rows if config.limit is None else rows[: config.limit]
    if cache is None:
        cache = GenerationCache(config.cache or cache_dir() / "generations.sqlite")
    prompts = [r.prompt for r in rows]
    gens = rollouts_by_model(config, prompts, cache)
    texts = {name: [g.text for g in gs] for name, gs in gens.items()}
    outcomes = judge_rollouts(
        judge or config.judge.build(),
        cache,
        prompts,
        texts,
        opened_in_prompt=_template_opens_trace(config.teacher_model, config.enable_thinking),
    )
    completions = {name: [list(g.token_ids) for g in gs] for name, gs in gens.items()}
    token_rows, identities = _score_models(config, rows, export.harmful, completions, outcomes)
    return write_analysis(config, token_rows, identities=identities)


def _template_opens_trace(model: str, enable_thinking: bool | None) -> bool:
    # Whether the model's chat template opens <think> in the prompt (tokenizer only).
    from transformers import AutoTokenizer

    from flipsearch.engines.chat import set_enable_thinking, template_opens_trace
    from flipsearch.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    set_enable_thinking(tokenizer, enable_thinking)
    return template_opens_trace(tokenizer)


def _score_models(
    config: AnalysisConfig,
    rows: Sequence[PromptRow],
    context: Context,
    completions: Mapping[str, Sequence[list[int]]],
    outcomes: Mapping[str, Sequence[str]],
) -> tuple[list[dict[str, object]], dict[str, dict[str, str]]]:
    # Teacher-force every model's completions; token rows and the models' identities.
    import torch

    from flipsearch.engines._hf import load_hf_model
    from flipsearch.engines.chat import pad_token_id, render_prompt_ids, set_enable_thinking
    from flipsearch.engines.template_caps import template_caps
    from flipsearch.models import model_identity, resolve_model
    from flipsearch.types import make_conversation

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher, tokenizer = load_hf_model(str(resolve_model(config.teacher_model)), dtype)
    teacher.to(device)
    set_enable_thinking(tokenizer, config.enable_thinking)
    pad = pad_token_id(tokenizer)
    convs = [make_conversation(r.prompt) for r in rows]
    student_prompts = [render_prompt_ids(tokenizer, c) for c in convs]
    kept = template_caps(tokenizer).kept_default(config.keep_default_system)
    teacher_prompts = [
        render_prompt_ids(tokenizer, context.apply(c, default_system=kept)) for c in convs
    ]
    token_rows: list[dict[str, object]] = []
    identities: dict[str, dict[str, str]] = {}
    for name, model in config.models.items():
        identities[name] = model_identity(model, resolve_model(model))
        student = load_hf_model(str(resolve_model(model)), dtype)[0].to(device)
        for start in range(0, len(rows), config.batch_size):
            sl = slice(start, start + config.batch_size)
            if not any(completions[name][sl]):
                continue
            token_rows += _token_rows(
                name,
                rows[sl],
                completions[name][sl],
                outcomes[name][sl],
                teacher=teacher,
                teacher_prompts=teacher_prompts[sl],
                student=student,
                student_prompts=student_prompts[sl],
                pad=pad,
                tokenizer=tokenizer,
            )
        del student
    return token_rows, identities


def _token_rows(
    name: str,
    rows: Sequence[PromptRow],
    completions: Sequence[list[int]],
    outcomes: Sequence[str],
    *,
    teacher: torch.nn.Module,
    teacher_prompts: Sequence[list[int]],
    student: torch.nn.Module,
    student_prompts: Sequence[list[int]],
    pad: int,
    tokenizer: PreTrainedTokenizerBase,
) -> list[dict[str, object]]:
    # One batch: the teacher (context prompts) and the student (plain prompts) are
    # teacher-forced on the same completions; one row per response token, carrying the
    # outcome of its rollout.
    import torch

    from flipsearch.engines.chat import template_opens_trace
    from flipsearch.engines.teacher_forcing import build_completion_batch, completion_logits
    from flipsearch.think import trace_token_end
    from opsa_train.losses import per_token_kl, token_logprobs

    s_batch = build_completion_batch(list(student_prompts), list(completions), pad)
    t_batch = build_completion_batch(list(teacher_prompts), list(completions), pad)
    with torch.inference_mode():
        t_logits = completion_logits(teacher, t_batch).float()
        s_logits = completion_logits(student, s_batch).float()
        fwd, rev = per_token_kl(t_logits, s_logits)
        targets = s_batch.targets_B_T.to(s_logits.device)
        t_lp = token_logprobs(t_logits, targets)
        s_lp = token_logprobs(s_logits, targets)
    opened = template_opens_trace(tokenizer)
    out: list[dict[str, object]] = []
    for b, n_tok in enumerate(s_batch.completion_lens):
        ids = completions[b]
        pieces = [tokenizer.decode([i]) for i in ids[:n_tok]]
        trace_end = trace_token_end(pieces, opened_in_prompt=opened)
        for t in range(n_tok):
            out.append(
                {
                    "model": name,
                    "prompt_id": rows[b].id,
                    "position": t,
                    "token_id": ids[t],
                    "token": pieces[t],
                    # A reasoning model's <think> trace, </think> included.
                    "in_trace": trace_end is not None and t < trace_end,
                    "kl": 0.5 * (float(fwd[b, t]) + float(rev[b, t])),
                    "kl_fwd": float(fwd[b, t]),
                    "kl_rev": float(rev[b, t]),
                    "teacher_lp": float(t_lp[b, t]),
                    "student_lp": float(s_lp[b, t]),
                    "outcome": outcomes[b],
                }
            )
    return out


def write_analysis(
    config: AnalysisConfig,
    token_rows: Sequence[Mapping[str, object]],
    *,
    identities: Mapping[str, Mapping[str, str]] | None = None,
) -> dict:
    """Write the CSVs, the two plots and ``kl_summary.json`` (last: marks completion).

    Token rows carry their rollout's ``outcome`` (:mod:`opsa_train.analysis_outcomes`);
    the per-outcome numbers go to ``kl_by_outcome.csv``, the summary's ``outcomes`` and
    ``kl_by_position_outcome.png``.

    ``identities`` (display name -> :func:`flipsearch.models.model_identity`) is recorded
    as ``model_identity``; the config's paths are recorded portably, without tokens.
    """
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_pos = kl_by_position_table(token_rows)
    top = top_tokens_table(token_rows, top=config.top_tokens)
    by_outcome = outcome_table(token_rows)
    write_csv(out / "token_kl.csv", token_rows)
    write_csv(out / "kl_by_position.csv", by_pos)
    write_csv(out / "kl_top_tokens.csv", top)
    write_csv(out / "kl_by_outcome.csv", by_outcome)
    plot_analysis(by_pos, top, out, models=list(config.models))
    plot_by_outcome(token_rows, out, models=list(config.models))
    summary = {
        "config": recordable(config.to_dict()),
        "model_identity": recordable({k: dict(v) for k, v in (identities or {}).items()}),
        "first_n": FIRST_N,
        "models": summary_table(token_rows),
        "outcomes": outcome_summary(by_outcome),
    }
    atomic_write_text(out / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return summary
