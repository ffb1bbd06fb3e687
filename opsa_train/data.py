"""Training data for OPSA: labelled prompts, the teacher's contexts, a resumable sampler.

- `load_train_prompts` reads the harmful and benign prompt sets named in the config
  (``name[:split]``, through :func:`flipsearch.prompts.load_prompt_set`; use the
  ``:train`` split, disjoint from the search and eval splits), keeping each row's own
  label, optionally capped per set after a seeded shuffle.
- `TeacherContexts` resolves the type-conditional privileged context from the export
  file and the config: I_h for harmful prompts, I_b for benign ones. Without an I_b
  (no ``contexts.benign`` in the export and no ``benign_context`` override), benign
  prompts' teacher gets *no* context, so the teacher equals the frozen initial model
  there and the KL pulls the student back towards its own starting behaviour (the
  retention term of the safety tax). ``benign_context=""`` says the same explicitly.
- `PromptSampler` walks seeded per-epoch permutations; its `state_dict` is the data
  position saved in checkpoints, so a resumed run sees the same batches.
  `MixedSampler` (``benign_share``) fills a fixed share of every batch from the benign
  prompts, each type walking its own permutations; `make_sampler` picks one.

Example:
    >>> from flipsearch.prompts import PromptRow
    >>> rows = [PromptRow(str(i), f"q{i}", "harmful") for i in range(5)]
    >>> sampler = PromptSampler(rows, seed=0)
    >>> first = [r.id for r in sampler.next_batch(3)]
    >>> state = sampler.state_dict()
    >>> again = PromptSampler(rows, seed=0)
    >>> again.load_state_dict(state)
    >>> [r.id for r in again.next_batch(2)] == [r.id for r in sampler.next_batch(2)]
    True
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flipsearch.contexts import Context
from flipsearch.prompts import PromptRow, load_prompt_set
from flipsearch.types import Conversation, make_conversation
from opsa_train.errors import OpsaConfigError, PreflightError

if TYPE_CHECKING:
    from flipsearch.export import ExportFile
    from opsa_train.config import TrainConfig

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Prompts


def load_train_prompts(config: TrainConfig) -> list[PromptRow]:
    """The training prompts: every row of ``harmful_prompts`` then ``benign_prompts``.

    Each set is shuffled with ``config.seed`` and cut to ``max_prompts`` when set. Rows
    keep their own ``type`` (a mixed file such as XSTest contributes both kinds); a row
    whose prompt text already appeared is dropped, so a prompt is never trained twice
    per epoch.

    Raises:
        PreflightError: a set cannot be loaded (the message names the config field).
    """
    rows: list[PromptRow] = []
    seen: set[str] = set()
    for field_name in ("harmful_prompts", "benign_prompts"):
        for spec in getattr(config, field_name):
            try:
                prompt_set = load_prompt_set(spec)
            except (ValueError, OSError) as exc:
                raise PreflightError(
                    f"`{field_name}` must name loadable prompt sets, got {spec!r}: {exc}"
                ) from exc
            set_rows = list(prompt_set.rows)
            random.Random(f"{config.seed}:{spec}").shuffle(set_rows)
            if config.max_prompts is not None:
                set_rows = set_rows[: config.max_prompts]
            for row in set_rows:
                key = " ".join(row.prompt.split()).lower()
                if key in seen:
                    continue
                seen.add(key)
                rows.append(row)
    return rows


def student_conversation(row: PromptRow) -> Conversation:
    """The student's conversation: the plain prompt as one user turn, no context."""
    return make_conversation(row.prompt)


# --------------------------------------------------------------------------------------
# Teacher contexts


class ContextOverrides(Protocol):
    """What may override an export's contexts: a :class:`TrainConfig`, or the eval's
    :class:`opsa_train.eval_config.TeacherSpec` (so the eval's teacher is the trained one)."""

    @property
    def benign_context(self) -> str | None: ...

    @property
    def placement(self) -> str | None: ...


@dataclass(frozen=True)
class TeacherContexts:
    """The privileged context the teacher sees, per prompt type.

    Example:
        >>> ctx = TeacherContexts(harmful=Context("Refuse.", "prefix"), benign=None)
        >>> ctx.conversation(PromptRow("1", "Hi", "benign"))[0]["content"]
        'Hi'
        >>> ctx.conversation(PromptRow("2", "Do X", "harmful"))[0]["content"]
        'Refuse.\\n\\nDo X'
    """

    harmful: Context | None
    """I_h; None only in tests that train without a context."""
    benign: Context | None
    """I_b; None: benign prompts' teacher gets no context (see the module docstring)."""
    default_system: str | None = None
    """The chat template's default system prompt to keep after a ``system``-placed
    context (``keep_default_system``, :meth:`with_template`); None replaces it."""

    @classmethod
    def from_export(cls, export: ExportFile, config: ContextOverrides) -> TeacherContexts:
        """I_h and I_b from the export file, with the config's overrides applied.

        ``config.placement`` replaces both contexts' placement; ``config.benign_context``
        replaces I_b's text ("" removes it) and takes I_h's placement when the export has
        no I_b.
        """
        harmful = export.harmful
        benign = export.benign
        if config.benign_context is not None:
            placement = benign.placement if benign is not None else harmful.placement
            benign = Context(config.benign_context, placement) if config.benign_context else None
        if config.placement is not None:
            harmful = Context(harmful.text, config.placement)  # type: ignore[arg-type]
            if benign is not None:
                benign = Context(benign.text, config.placement)  # type: ignore[arg-type]
        return cls(harmful=harmful, benign=benign)

    def with_template(self, tokenizer: Any, *, keep_default_system: bool) -> TeacherContexts:
        """These contexts on ``tokenizer``'s chat template: with ``keep_default_system``,
        a ``system``-placed context goes before the template's default system prompt
        instead of replacing it (:mod:`flipsearch.engines.template_caps`)."""
        if not keep_default_system:
            return self
        from flipsearch.engines.template_caps import template_caps

        default = template_caps(tokenizer).kept_default(keep_default_system)
        return dataclasses.replace(self, default_system=default)

    def apply(self, prompt_type: str, conversation: Conversation) -> Conversation:
        """``conversation`` with the context of a ``harmful`` or ``benign`` prompt."""
        context = self.for_type(prompt_type)
        if context is None:
            return conversation
        return context.apply(conversation, default_system=self.default_system)

    def for_type(self, prompt_type: str) -> Context | None:
        """The context of a ``harmful`` or ``benign`` prompt."""
        if prompt_type == "harmful":
            return self.harmful
        if prompt_type == "benign":
            return self.benign
        raise OpsaConfigError(f"`prompt_type` must be 'harmful' or 'benign', got {prompt_type!r}")

    def conversation(self, row: PromptRow) -> Conversation:
        """The teacher's conversation: the row's context applied to the plain prompt, by
        the same function the context search uses (:meth:`flipsearch.contexts.Context.apply`)."""
        return self.apply(row.type, student_conversation(row))

    def describe(self) -> dict[str, Any]:
        """A JSON summary for logs: each context's placement and length."""
        return {
            kind: None if ctx is None else {"placement": ctx.placement, "chars": len(ctx.text)}
            for kind, ctx in (("harmful", self.harmful), ("benign", self.benign))
        }


# --------------------------------------------------------------------------------------
# Sampler


class PromptSampler:
    """Batches of prompts from seeded per-epoch permutations, resumable.

    Epoch ``e`` visits the rows in ``random.Random(f"{seed}:{e}")`` order; a batch that
    crosses an epoch boundary continues into the next permutation, so every batch is
    full and each prompt is seen once per epoch.

    Args:
        rows: the training prompts (at least one).
        seed: the order seed.
    """

    def __init__(self, rows: Sequence[PromptRow], *, seed: int) -> None:
        if not rows:
            raise PreflightError("the training prompts must hold at least one row, got 0")
        self.rows = list(rows)
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, size: int) -> list[PromptRow]:
        """The next ``size`` prompts (``size`` >= 1)."""
        if size < 1:
            raise OpsaConfigError(f"`size` must be >= 1, got {size!r}")
        batch: list[PromptRow] = []
        while len(batch) < size:
            if self.offset == len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            batch.append(self.rows[self._order[self.offset]])
            self.offset += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position, JSON-ready (saved as the checkpoint's ``data.json``)."""
        return {
            "epoch": self.epoch,
            "offset": self.offset,
            "seed": self.seed,
            "n_rows": len(self.rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict`; warns if the prompts changed since."""
        if state.get("n_rows") != len(self.rows) or state.get("seed") != self.seed:
            logger.warning(
                "resuming with different prompts or seed (saved n_rows=%r seed=%r, now %d, %d): "
                "batches will differ from the interrupted run",
                state.get("n_rows"),
                state.get("seed"),
                len(self.rows),
                self.seed,
            )
        self.epoch = int(state.get("epoch", 0))
        self._order = self._permutation(self.epoch)
        self.offset = min(int(state.get("offset", 0)), len(self._order))


class MixedSampler:
    """Batches holding a fixed share of benign prompts, resumable.

    Harmful and benign rows each walk their own :class:`PromptSampler`. Over the run, the
    benign count of the first ``n`` prompts drawn is ``round(n * benign_share)``, so a
    share that does not divide the batch size still holds on average.

    Example:
        >>> rows = [PromptRow(f"h{i}", "q", "harmful") for i in range(6)]
        >>> rows += [PromptRow("b0", "q", "benign")]
        >>> sampler = MixedSampler(rows, seed=0, benign_share=0.5)
        >>> sorted(r.type for r in sampler.next_batch(4))
        ['benign', 'benign', 'harmful', 'harmful']
    """

    def __init__(self, rows: Sequence[PromptRow], *, seed: int, benign_share: float) -> None:
        harmful = [r for r in rows if r.type == "harmful"]
        benign = [r for r in rows if r.type == "benign"]
        if not harmful or not benign:
            raise PreflightError(
                f"`benign_share` needs harmful and benign training prompts, got "
                f"{len(harmful)} harmful and {len(benign)} benign: check `harmful_prompts` "
                "and `benign_prompts`, or set benign_share to None"
            )
        self.harmful = PromptSampler(harmful, seed=seed)
        self.benign = PromptSampler(benign, seed=seed)
        self.benign_share = benign_share
        self.drawn = 0

    def next_batch(self, size: int) -> list[PromptRow]:
        """The next ``size`` prompts (``size`` >= 1): harmful ones, then benign ones."""
        if size < 1:
            raise OpsaConfigError(f"`size` must be >= 1, got {size!r}")
        share = self.benign_share
        n_benign = round((self.drawn + size) * share) - round(self.drawn * share)
        self.drawn += size
        batch = self.harmful.next_batch(size - n_benign) if n_benign < size else []
        return batch + (self.benign.next_batch(n_benign) if n_benign else [])

    def state_dict(self) -> dict[str, Any]:
        """The data position of both types, JSON-ready."""
        return {
            "benign_share": self.benign_share,
            "drawn": self.drawn,
            "harmful": self.harmful.state_dict(),
            "benign": self.benign.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict`; warns if it was saved without this share."""
        if state.get("benign_share") != self.benign_share:
            logger.warning(
                "resuming with benign_share=%r from a checkpoint saved with %r: "
                "batches will differ from the interrupted run",
                self.benign_share,
                state.get("benign_share"),
            )
            return
        self.drawn = int(state.get("drawn", 0))
        self.harmful.load_state_dict(state["harmful"])
        self.benign.load_state_dict(state["benign"])


def make_sampler(
    rows: Sequence[PromptRow], *, seed: int, benign_share: float | None
) -> PromptSampler | MixedSampler:
    """A :class:`MixedSampler` when ``benign_share`` is set, else a :class:`PromptSampler`."""
    if benign_share is None:
        return PromptSampler(rows, seed=seed)
    return MixedSampler(rows, seed=seed, benign_share=benign_share)


def total_steps(config: TrainConfig, n_prompts: int) -> int:
    """Optimiser steps of a run: ``steps`` if set, else ``ceil(epochs * prompts / batch)``.

    Example:
        >>> from opsa_train.config import TrainConfig
        >>> total_steps(TrainConfig(batch_size=64, epochs=3.0), 100)
        5
    """
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * n_prompts / config.batch_size))
