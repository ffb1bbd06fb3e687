"""Checks that run before the first step, each failing with a specific `PreflightError`.

A training run costs hours on a GPU; these checks cost seconds and catch the inputs
that would otherwise train silently on garbage. `prepare` runs them all (no model
weights loaded) and returns the run's checked inputs (`Prepared`):

- `check_context_file`: a context file is given and readable (`read_context_file`);
  `hand_written_export` builds the in-memory export of ``opsa-train run --context-text``.
- `check_tokenizers`: student and teacher share tokenizer and vocabulary (the KL is
  taken id by id, so a different vocabulary compares unrelated tokens).
- `check_conversations`: every prompt conversation ends with a user turn.
- `check_window`: context + prompt + ``max_new_tokens`` fit the model's window.
- `check_has_harmful`: at least one harmful prompt when I_h is given.
- `check_run_folder`: a run folder that already holds a run (``config.json``) was made
  for the same ``model``; resuming another model's checkpoints would fail late or mix
  weights, and its config would be overwritten.
- `check_export_model`: the export file was searched on the model being trained
  (``config.export_model_mismatch``: ``error``, the default, or ``warn``). A context
  found for another model rarely flips this one, so the teacher would not be the safe
  teacher the search measured.

Example:
    >>> from flipsearch.prompts import PromptRow  # doctest: +ELLIPSIS
    >>> check_has_harmful([PromptRow("1", "Hi", "benign")], has_harmful_context=True)
    Traceback (most recent call last):
    ...
    opsa_train.errors.PreflightError: `harmful_prompts` must yield at least one harmful ...
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flipsearch.contexts import PLACEMENTS, Context
from flipsearch.engines.chat import render_prompt_ids, set_enable_thinking
from flipsearch.errors import ExportFileError, FlipsearchError
from flipsearch.export import ExportFile, read_export
from flipsearch.models import fingerprint_matches, model_fingerprint, resolve_model
from flipsearch.prompts import PromptRow
from flipsearch.types import Conversation
from opsa_train.config import TrainConfig
from opsa_train.data import (
    TeacherContexts,
    load_train_prompts,
    make_sampler,
    student_conversation,
)
from opsa_train.errors import PreflightError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

HAND_WRITTEN = "hand-written"
"""``provenance.source`` of an export built from ``--context-text`` (never searched)."""


def read_context_file(context_file: str | Path | None) -> ExportFile:
    """Read the export file named by ``context_file``.

    Raises:
        PreflightError: ``context_file`` is None, missing or malformed.
    """
    if context_file is None:
        raise PreflightError(
            "`context_file` must name a flipsearch export file, got None: "
            "run `flipsearch export --study S --out best.json`, then pass --context best.json "
            "(or write one: --context-text TEXT --placement system|prefix)"
        )
    try:
        return read_export(context_file)
    except ExportFileError as exc:
        raise PreflightError(f"`context_file` must be a valid export file: {exc}") from exc


check_context_file = read_context_file


def hand_written_export(text: str, placement: str) -> ExportFile:
    """An in-memory export holding a hand-written harmful context (I_h) and no I_b.

    Its provenance says it was hand-written, so `check_export_model` does not ask for
    the model it was searched on (it was not searched), and it carries no scores.

    Example:
        >>> hand_written_export("Refuse harmful requests.", "prefix").provenance
        {'source': 'hand-written'}

    Raises:
        PreflightError: ``text`` is blank or ``placement`` is unknown.
    """
    if not isinstance(text, str) or not text.strip():
        raise PreflightError(
            f"`--context-text` must be a non-empty context, got {text!r}: the teacher reads it"
        )
    if placement not in PLACEMENTS:
        raise PreflightError(f"`--placement` must be one of {PLACEMENTS}, got {placement!r}")
    return ExportFile(
        harmful=Context(text, placement),  # type: ignore[arg-type]
        provenance={"source": HAND_WRITTEN},
    )


def check_tokenizers(
    student: PreTrainedTokenizerBase,
    teacher: PreTrainedTokenizerBase,
    *,
    student_vocab_size: int | None = None,
    teacher_vocab_size: int | None = None,
) -> None:
    """Student and teacher must tokenize identically and share the output vocabulary.

    Args:
        student, teacher: the two tokenizers (the rollout engine's and the teacher's).
        student_vocab_size, teacher_vocab_size: each model's output width (logits' V),
            from ``model.config.vocab_size``; checked equal when both are given.

    Raises:
        PreflightError: vocabularies, special tokens or chat templates differ.
    """
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    if s_vocab != t_vocab:
        only_s = sorted(set(s_vocab) - set(t_vocab))[:5]
        only_t = sorted(set(t_vocab) - set(s_vocab))[:5]
        moved = [tok for tok in s_vocab if tok in t_vocab and s_vocab[tok] != t_vocab[tok]][:5]
        raise PreflightError(
            f"`teacher` tokenizer vocabulary must equal the student's ({len(s_vocab)} ids), got "
            f"{len(t_vocab)} ids (only in student: {only_s!r}, only in teacher: {only_t!r}, "
            f"different ids: {moved!r}): the per-token KL compares ids"
        )
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        s_val, t_val = getattr(student, attr, None), getattr(teacher, attr, None)
        if s_val != t_val:
            raise PreflightError(
                f"`teacher` tokenizer `{attr}` must equal the student's ({s_val!r}), got {t_val!r}"
            )
    s_tpl = getattr(student, "chat_template", None)
    t_tpl = getattr(teacher, "chat_template", None)
    if s_tpl != t_tpl:
        raise PreflightError(
            "`teacher` chat template must equal the student's, got a different template: "
            "the teacher must score the student's tokens under the same chat format"
        )
    if (
        student_vocab_size is not None
        and teacher_vocab_size is not None
        and student_vocab_size != teacher_vocab_size
    ):
        raise PreflightError(
            f"`teacher` output vocabulary size must equal the student's ({student_vocab_size}), "
            f"got {teacher_vocab_size}"
        )
    if student_vocab_size is not None and len(s_vocab) > student_vocab_size:
        raise PreflightError(
            f"the model's vocabulary size must cover the tokenizer's {len(s_vocab)} ids, "
            f"got {student_vocab_size}"
        )


def check_conversations(conversations: Sequence[Conversation], ids: Sequence[str]) -> None:
    """Every conversation must be non-empty and end with a user turn.

    Raises:
        PreflightError: naming the first bad prompt's id and its roles.
    """
    for conversation, prompt_id in zip(conversations, ids, strict=True):
        roles = [m.get("role") for m in conversation]
        if not roles or roles[-1] != "user":
            raise PreflightError(
                f"prompt {prompt_id!r} must end with a user turn, got roles {roles!r}: the "
                "student answers the last user turn"
            )


def check_window(
    prompt_lengths: Sequence[int], ids: Sequence[str], *, max_new_tokens: int, window: int
) -> None:
    """The longest (teacher) prompt plus ``max_new_tokens`` must fit the model window.

    Args:
        prompt_lengths: token counts of the rendered teacher prompts (context + prompt,
            the longer of the two conversations).
        ids: the matching prompt ids, for the message.
        max_new_tokens: the rollout length.
        window: the model's context window (``max_position_embeddings``).

    Raises:
        PreflightError: naming the prompt, its length and the window.
    """
    if not prompt_lengths:
        return
    longest = max(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    need = prompt_lengths[longest] + max_new_tokens
    if need > window:
        raise PreflightError(
            f"`max_new_tokens` ({max_new_tokens}) plus the longest teacher prompt "
            f"({prompt_lengths[longest]} tokens, prompt {ids[longest]!r}) must fit the model "
            f"window ({window}), got {need}: shorten the context or lower max_new_tokens"
        )


def check_has_harmful(rows: Sequence[PromptRow], *, has_harmful_context: bool) -> None:
    """At least one harmful prompt when a harmful context (I_h) is given.

    Raises:
        PreflightError: no row has type ``harmful``.
    """
    if not has_harmful_context:
        return
    n_harmful = sum(row.type == "harmful" for row in rows)
    if n_harmful == 0:
        raise PreflightError(
            "`harmful_prompts` must yield at least one harmful prompt when I_h is given, got "
            f"0 of {len(rows)} prompts: the harmful context would never be used"
        )


def check_export_model(
    export: ExportFile, *, model: str, model_path: Path | None, policy: str
) -> bool:
    """The export file's model must be the model being trained.

    The fingerprint (``provenance.model_fingerprint``, ``<folder>:<digest>`` or a bare
    digest of :func:`flipsearch.models.model_fingerprint`) decides when both sides have
    one, so a renamed or moved copy of the same weights passes; else
    the names are compared (the config's name or its resolved folder). An export without
    any model provenance cannot be checked and only warns; a hand-written one
    (`hand_written_export`) was searched on no model and passes.

    Args:
        export: the export file.
        model: ``config.model``.
        model_path: the resolved model folder (None skips the fingerprint).
        policy: ``error`` or ``warn`` (``config.export_model_mismatch``).

    Returns:
        True when the models match (or could not be checked), False on a warned mismatch.

    Raises:
        PreflightError: a mismatch under ``policy="error"``.
    """
    if policy not in ("error", "warn"):
        raise PreflightError(f"`export_model_mismatch` must be 'error' or 'warn', got {policy!r}")
    if export.provenance.get("source") == HAND_WRITTEN:
        logger.info("the context is hand-written: no search model to check against %r", model)
        return True
    exported = export.provenance.get("model")
    exported_fp = export.provenance.get("model_fingerprint")
    if exported is None and exported_fp is None:
        logger.warning(
            "the export file has no provenance.model: cannot check it was searched on %r", model
        )
        return True
    if exported_fp is not None and model_path is not None:
        ours = model_fingerprint(model_path)
        # flipsearch writes "<folder>:<digest>" (models.model_key); the digest decides, and
        # digests of older flipsearch versions (fewer files hashed) count too.
        if fingerprint_matches(str(exported_fp), model_path):
            return True
        detail = f"fingerprint {exported_fp!r} (model {exported!r}), ours is {ours!r}"
    else:
        names = {model, str(model_path)} if model_path is not None else {model}
        if str(exported) in names:
            return True
        detail = f"model {exported!r}"
    message = (
        f"`model` ({model!r}) must be the model the context was searched on, got {detail} in "
        "the export file: a context found for another model rarely flips this one. "
        "Set export_model_mismatch=warn to train anyway"
    )
    if policy == "error":
        raise PreflightError(message)
    logger.warning(message)
    return False


def check_run_folder(out_dir: str | Path, *, model: str, model_path: Path) -> None:
    """A run folder's recorded ``model`` (its ``config.json``) must be the model given now.

    Names are compared, then resolved local folders; runs whose folder holds no
    ``config.json`` (new runs) pass. Reads one small JSON file: no weights.

    Raises:
        PreflightError: the folder records another model, or its ``config.json`` is not a
            JSON object (nothing in the folder is touched).
    """
    path = Path(out_dir) / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PreflightError(
            f"`out_dir` {str(out_dir)!r} must hold a readable config.json, got {exc}: "
            "choose another --out, or delete the run folder to start over"
        ) from exc
    recorded = old.get("model") if isinstance(old, dict) else None
    if recorded is None or recorded == model:
        return
    recorded_path = Path(str(recorded)).expanduser()
    if recorded_path.is_dir() and recorded_path.resolve() == model_path.resolve():
        return
    raise PreflightError(
        f"`model` must be the run folder's model {recorded!r} (recorded in {str(path)!r}), "
        f"got {model!r}: its checkpoints belong to that model. Resume with "
        f"model={recorded!r}, or choose another --out for a new run"
    )


# --------------------------------------------------------------------------------------
# All of them, in order


@dataclass
class Prepared:
    """What `prepare` checked and built: the run's inputs, ready for the first step."""

    export: ExportFile
    model_path: Path
    contexts: TeacherContexts
    rows: list[PromptRow]
    tokenizer: PreTrainedTokenizerBase
    window: int
    longest_student_prompt: int


def prepare(config: TrainConfig, *, export: ExportFile | None = None) -> Prepared:
    """Run every pre-flight check that needs no model weights (seconds).

    Args:
        config: the run's options.
        export: an in-memory export (e.g. `preflight.hand_written_export`) used instead
            of reading ``config.context_file``.

    Raises:
        PreflightError: naming the field and value at fault (see `opsa_train.preflight`).
    """
    from transformers import AutoConfig, AutoTokenizer

    if export is None:
        export = read_context_file(config.context_file)
    try:
        model_path = resolve_model(config.model)
    except FlipsearchError as exc:
        raise PreflightError(
            f"`model` must resolve to a model folder, got {config.model!r}: {exc}"
        ) from exc
    check_run_folder(config.out_dir, model=config.model, model_path=model_path)
    check_export_model(
        export, model=config.model, model_path=model_path, policy=config.export_model_mismatch
    )
    contexts = TeacherContexts.from_export(export, config)
    rows = load_train_prompts(config)
    check_has_harmful(rows, has_harmful_context=contexts.harmful is not None)
    make_sampler(rows, seed=config.seed, benign_share=config.benign_share)  # both types present

    student_tok = AutoTokenizer.from_pretrained(model_path)
    teacher_tok = AutoTokenizer.from_pretrained(model_path)
    for tok in (student_tok, teacher_tok):  # every render of the run passes the switch
        set_enable_thinking(tok, config.enable_thinking)
    contexts = contexts.with_template(teacher_tok, keep_default_system=config.keep_default_system)
    model_config = AutoConfig.from_pretrained(model_path)
    vocab = getattr(model_config, "vocab_size", None)
    check_tokenizers(student_tok, teacher_tok, student_vocab_size=vocab, teacher_vocab_size=vocab)
    teacher_convs = [contexts.conversation(r) for r in rows]
    ids = [r.id for r in rows]
    check_conversations(teacher_convs, ids)
    teacher_lens = [len(render_prompt_ids(teacher_tok, c)) for c in teacher_convs]
    student_lens = [len(render_prompt_ids(student_tok, student_conversation(r))) for r in rows]
    window = int(getattr(model_config, "max_position_embeddings", 0) or 0) or 2048
    check_window(
        [max(t, s) for t, s in zip(teacher_lens, student_lens, strict=True)],
        ids,
        max_new_tokens=config.max_new_tokens,
        window=window,
    )
    return Prepared(
        export=export,
        model_path=model_path,
        contexts=contexts,
        rows=rows,
        tokenizer=student_tok,
        window=window,
        longest_student_prompt=max(student_lens),
    )
