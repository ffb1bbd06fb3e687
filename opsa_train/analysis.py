"""Token-level KL between the context-conditioned teacher and a student (the paper's Fig. 2).

The teacher is the *initial* model reading [I_h + harmful prompt]; the student is a
model (base, OPSA, baseline) reading the plain prompt. Both are teacher-forced on the
same response tokens and compared position by position over the full vocabulary:

- ``kl_fwd`` = KL(teacher || student), ``kl_rev`` = KL(student || teacher), and
  ``kl`` = 0.5 * (kl_fwd + kl_rev), the mix OPSA trains on (arXiv 2605.15239);
- per position (mean over prompts: where in the answer the teacher and student differ)
  and per token (the KL mass each token string carries: compliance openers such as
  "Sure" / "Here" on the base model are where the context acts).

Rollouts (``rollouts=``): ``own`` (default) scores each model on *its own* greedy
responses, i.e. the on-policy view the OPSA loss sees, and the quantity a trained
student should have lowered; ``base`` scores every model on the reference (base)
model's greedy responses, a shared set, so differences come from the weights alone.
Greedy generations go through the flipsearch cache with the same keys as
:mod:`opsa_train.evaluate`, so after an evaluation at the same ``max_tokens`` on the same
prompts nothing is generated again.

Outputs in ``out_dir``: ``token_kl.csv`` (one row per model, prompt and position),
``kl_by_position.csv``, ``kl_top_tokens.csv``, ``kl_summary.json``,
``kl_by_position.png``, ``kl_top_tokens.png``.

Example::

    opsa-train analyze --context results/demo/best.json \\
        --models base=smollm2-135m opsa=runs/R/final --out results/demo/analysis --limit 8

    >>> import torch
    >>> fwd, rev = per_token_kl(torch.zeros(1, 2, 5), torch.zeros(1, 2, 5))
    >>> float(fwd.abs().max()), float(rev.abs().max())
    (0.0, 0.0)
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flipsearch.atomic import atomic_write_text
from opsa_train.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from flipsearch.cache import GenerationCache

logger = logging.getLogger(__name__)

__all__ = [
    "AnalysisConfig",
    "kl_by_position_table",
    "per_token_kl",
    "run_analysis",
    "top_tokens_table",
]

ROLLOUTS = ("own", "base")
SUMMARY_JSON = "kl_summary.json"
FIRST_N = 8


def per_token_kl(
    p_logits_B_T_V: torch.Tensor, q_logits_B_T_V: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(p || q), KL(q || p))`` per position over the full vocabulary, float32, (B, T).

    Example:
        >>> import torch
        >>> p = torch.tensor([[[0.0, 0.0]]]); q = torch.tensor([[[0.0, math.log(3.0)]]])
        >>> [round(float(x), 4) for x in per_token_kl(p, q)]  # KL(1/2,1/2 || 1/4,3/4)
        [0.1438, 0.1308]
    """
    import torch

    lp = torch.log_softmax(p_logits_B_T_V.float(), dim=-1)
    lq = torch.log_softmax(q_logits_B_T_V.float(), dim=-1)
    diff = lp - lq
    fwd = (lp.exp() * diff).sum(-1)
    rev = (lq.exp() * -diff).sum(-1)
    return fwd.clamp(min=0.0), rev.clamp(min=0.0)


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
    out_dir: str = "results/analysis"
    cache: str | None = None
    """Generation cache; None: ``$FLIPSEARCH_CACHE/generations.sqlite``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", dict(self.models))
        if not self.models:
            raise ConfigError("`models` must name at least one model, got {}")
        if self.rollouts not in ROLLOUTS:
            raise ConfigError(f"`rollouts` must be one of {ROLLOUTS}, got {self.rollouts!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"`limit` must be None or an integer >= 1, got {self.limit!r}")
        for name in ("max_tokens", "batch_size", "top_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}` must be an integer >= 1, got {value!r}")
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
        return d


# --------------------------------------------------------------------------------------
# Aggregation (pure)


def kl_by_position_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ``kl``/``kl_fwd``/``kl_rev`` per (model, position) with the count of prompts.

    Example:
        >>> rows = [{"model": "m", "position": 0, "kl": 1.0, "kl_fwd": 1.0, "kl_rev": 1.0},
        ...         {"model": "m", "position": 0, "kl": 3.0, "kl_fwd": 3.0, "kl_rev": 3.0}]
        >>> kl_by_position_table(rows)[0]["kl"], kl_by_position_table(rows)[0]["n"]
        (2.0, 2)
    """
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["model"]), int(r["position"])), []).append(r)
    out = []
    for (model, pos), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        n = len(rs)
        out.append(
            {
                "model": model,
                "position": pos,
                "n": n,
                **{k: sum(float(r[k]) for r in rs) / n for k in ("kl", "kl_fwd", "kl_rev")},
            }
        )
    return out


def top_tokens_table(
    rows: Sequence[Mapping[str, object]], *, top: int = 15
) -> list[dict[str, object]]:
    """Per model, the ``top`` token strings with the most total ``kl`` (their KL mass).

    ``share`` is the token's fraction of the model's total KL mass.
    """
    by_model: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        by_model.setdefault(str(r["model"]), {}).setdefault(str(r["token"]), []).append(
            float(r["kl"])  # type: ignore[arg-type]
        )
    out = []
    for model, tokens in by_model.items():
        total = sum(sum(v) for v in tokens.values()) or 1.0
        ranked = sorted(tokens.items(), key=lambda kv: -sum(kv[1]))[:top]
        for rank, (tok, vals) in enumerate(ranked, 1):
            out.append(
                {
                    "model": model,
                    "rank": rank,
                    "token": tok,
                    "kl_mass": sum(vals),
                    "share": sum(vals) / total,
                    "count": len(vals),
                    "kl_mean": sum(vals) / len(vals),
                }
            )
    return out


def summary_table(rows: Sequence[Mapping[str, Any]], *, first_n: int = FIRST_N) -> dict:
    """Per model: mean ``kl`` over all tokens, over the first ``first_n`` and the rest,
    and the share of KL mass in the first ``first_n`` positions."""
    out: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        mine = [r for r in rows if r["model"] == model]
        first = [float(r["kl"]) for r in mine if int(r["position"]) < first_n]
        rest = [float(r["kl"]) for r in mine if int(r["position"]) >= first_n]
        total = sum(first) + sum(rest)
        out[model] = {
            "kl_mean": total / len(mine) if mine else math.nan,
            f"kl_first{first_n}": sum(first) / len(first) if first else math.nan,
            "kl_rest": sum(rest) / len(rest) if rest else math.nan,
            f"mass_share_first{first_n}": sum(first) / total if total else math.nan,
            "tokens": len(mine),
            "prompts": len({r["prompt_id"] for r in mine}),
        }
    return out


# --------------------------------------------------------------------------------------
# Running


def greedy_rollouts(
    model: str,
    prompts: Sequence[str],
    *,
    max_tokens: int,
    engine: str,
    cache: GenerationCache,
) -> list[list[int]]:
    """Greedy response ids of ``model`` to ``prompts``; builds an engine only on cache misses.

    The cache keys are those of :mod:`opsa_train.evaluate` (content fingerprint, engine
    name, greedy sampling), so evaluation answers are reused.
    """
    from flipsearch.cache import cached_generate
    from flipsearch.engines import EngineConfig, resolve_engine_name
    from flipsearch.models import resolve_model
    from flipsearch.types import Sampling, make_conversation
    from opsa_train.evaluate import model_identity

    path = resolve_model(model)
    identity = model_identity(path)
    name = resolve_engine_name(engine)
    sampling = Sampling(greedy=True, max_tokens=max_tokens)
    built: dict[str, object] = {}

    def generate(convs: list) -> list:
        if "engine" not in built:
            built["engine"] = EngineConfig(model=str(path), engine=name).build()
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
    return [list(o[0].token_ids) for o in outs]


def run_analysis(config: AnalysisConfig, *, cache: GenerationCache | None = None) -> dict:
    """Compute the token-level KL of every model, write CSVs, plots and the summary.

    Returns:
        The summary (per model: mean KL, first-tokens vs rest, mass share).

    Raises:
        ExportFileError: the context file cannot be read.
        ConfigError: bad config or prompt set.
    """
    import torch

    from flipsearch.cache import GenerationCache
    from flipsearch.engines._hf import load_hf_model
    from flipsearch.engines.chat import render_prompt_ids
    from flipsearch.engines.teacher_forcing import build_completion_batch, completion_logits
    from flipsearch.export import read_export
    from flipsearch.models import cache_dir, resolve_model
    from flipsearch.prompts import load_prompt_set
    from flipsearch.types import make_conversation

    export = read_export(config.context_file)
    rows = list(load_prompt_set(config.prompts).harmful().rows)
    rows = rows if config.limit is None else rows[: config.limit]
    if cache is None:
        cache = GenerationCache(config.cache or cache_dir() / "generations.sqlite")
    prompts = [r.prompt for r in rows]
    shared = None
    if config.rollouts == "base":
        shared = greedy_rollouts(
            config.teacher_model,
            prompts,
            max_tokens=config.max_tokens,
            engine=config.engine,
            cache=cache,
        )
    completions: dict[str, list[list[int]]] = {}
    for name, model in config.models.items():
        completions[name] = shared or greedy_rollouts(
            model, prompts, max_tokens=config.max_tokens, engine=config.engine, cache=cache
        )

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher, tokenizer = load_hf_model(str(resolve_model(config.teacher_model)), dtype)
    teacher.to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    student_prompts = [render_prompt_ids(tokenizer, make_conversation(p)) for p in prompts]
    teacher_prompts = [
        render_prompt_ids(tokenizer, export.harmful.apply(make_conversation(p))) for p in prompts
    ]
    token_rows: list[dict[str, object]] = []
    for name, model in config.models.items():
        student = load_hf_model(str(resolve_model(model)), dtype)[0].to(device)
        comps = completions[name]
        for start in range(0, len(rows), config.batch_size):
            sl = slice(start, start + config.batch_size)
            if not any(comps[sl]):
                continue
            s_batch = build_completion_batch(student_prompts[sl], comps[sl], pad)
            t_batch = build_completion_batch(teacher_prompts[sl], comps[sl], pad)
            with torch.inference_mode():
                t_logits = completion_logits(teacher, t_batch).float()
                s_logits = completion_logits(student, s_batch).float()
                fwd, rev = per_token_kl(t_logits, s_logits)
                targets = s_batch.targets_B_T.to(s_logits.device)[:, :, None]
                t_lp = torch.log_softmax(t_logits, -1).gather(-1, targets).squeeze(-1)
                s_lp = torch.log_softmax(s_logits, -1).gather(-1, targets).squeeze(-1)
            for b, n_tok in enumerate(s_batch.completion_lens):
                row = rows[start + b]
                ids = comps[start + b]
                for t in range(n_tok):
                    token_rows.append(
                        {
                            "model": name,
                            "prompt_id": row.id,
                            "position": t,
                            "token_id": ids[t],
                            "token": tokenizer.decode([ids[t]]),
                            "kl": 0.5 * (float(fwd[b, t]) + float(rev[b, t])),
                            "kl_fwd": float(fwd[b, t]),
                            "kl_rev": float(rev[b, t]),
                            "teacher_lp": float(t_lp[b, t]),
                            "student_lp": float(s_lp[b, t]),
                        }
                    )
        del student
    return write_analysis(config, token_rows)


def write_analysis(config: AnalysisConfig, token_rows: Sequence[Mapping[str, object]]) -> dict:
    """Write the CSVs, the two plots and ``kl_summary.json`` (last: marks completion)."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_pos = kl_by_position_table(token_rows)
    top = top_tokens_table(token_rows, top=config.top_tokens)
    _write_csv(out / "token_kl.csv", token_rows)
    _write_csv(out / "kl_by_position.csv", by_pos)
    _write_csv(out / "kl_top_tokens.csv", top)
    plot_analysis(by_pos, top, out, models=list(config.models))
    summary = {
        "config": config.to_dict(),
        "first_n": FIRST_N,
        "models": summary_table(token_rows),
    }
    atomic_write_text(out / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return summary


def _write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    cols: list[str] = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


def plot_analysis(
    by_pos: Sequence[Mapping[str, Any]],
    top: Sequence[Mapping[str, object]],
    out: Path,
    *,
    models: Sequence[str],
) -> list[Path]:
    """``kl_by_position.png`` (mean KL per position, one line per model) and
    ``kl_top_tokens.png`` (the tokens with the most KL mass, one panel per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in models:
        pts = [r for r in by_pos if r["model"] == model]
        if pts:
            ax.plot([r["position"] for r in pts], [r["kl"] for r in pts], marker=".", label=model)
    ax.set_xlabel("response position (token)")
    ax.set_ylabel("mean KL, 0.5 fwd + 0.5 rev (nats)")
    ax.set_title("Teacher (initial model + I_h) vs student, per position")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "kl_by_position.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    present = [m for m in models if any(r["model"] == m for r in top)] or list(models)
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 4.5), squeeze=False)
    for ax, model in zip(axes[0], present, strict=True):
        rows = [r for r in top if r["model"] == model][::-1]
        ax.barh([repr(str(r["token"]))[1:-1] or "∅" for r in rows], [r["share"] for r in rows])
        ax.set_title(model)
        ax.set_xlabel("share of KL mass")
    fig.suptitle("Tokens carrying the most teacher-student KL")
    fig.tight_layout()
    paths.append(out / "kl_top_tokens.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def analysis_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a finished analysis (summary and both plots)."""
    out = Path(out_dir)
    return all(
        (out / f).is_file() for f in (SUMMARY_JSON, "kl_by_position.png", "kl_top_tokens.png")
    )
