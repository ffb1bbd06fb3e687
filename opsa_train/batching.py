"""How a step's rows become forward passes: length order, shared prefixes, padding counts.

Pure helpers over token-id lists and :class:`~flipsearch.engines.teacher_forcing.CompletionBatch`
(no model), used by :meth:`opsa_train.trainer.Trainer.teacher_score`:

- `length_order`: the order that puts rows of similar length in the same micro-batch,
  so each pads to a similar width (right padding costs compute on every padded slot);
- `common_prefix` / `split_prefix`: the token ids every row of a type starts with (chat
  header + context), whose KV cache the teacher computes once;
- `pad_counts`: the padded share of a set of forward passes, a machine-independent
  measure of the waste the first two remove.

Example:
    >>> length_order([3, 9, 5])
    [1, 2, 0]
    >>> common_prefix([[1, 2, 3, 4], [1, 2, 5]])
    (1, 2)
    >>> split_prefix([[1, 2, 3], [7, 8]], {"h": (1, 2)})
    [('h', [0]), (None, [1])]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from flipsearch.engines.teacher_forcing import common_prefix

__all__ = ["common_prefix", "length_order", "pad_counts", "split_prefix"]

if TYPE_CHECKING:
    from flipsearch.engines.teacher_forcing import CompletionBatch


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices of ``lengths``, longest first (ties keep their order).

    Longest first so that a micro-batch too large for memory fails on the first pass.
    """
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def split_prefix(
    prompts: Sequence[Sequence[int]], prefixes: Mapping[str, tuple[int, ...]]
) -> list[tuple[str | None, list[int]]]:
    """Group prompt indices by the longest prefix of ``prefixes`` each starts with.

    A prompt joins a prefix's group only if at least one of its tokens follows the prefix
    (the last prompt position predicts the first completion token, so it must be run).
    Prompts that match no prefix form the ``None`` group.

    Returns:
        ``(prefix key or None, indices)`` pairs, in order of first appearance; each
        index appears once.
    """
    longest_first = sorted(prefixes.items(), key=lambda item: -len(item[1]))
    groups: dict[str | None, list[int]] = {}
    for i, prompt in enumerate(prompts):
        key = next(
            (
                k
                for k, ids in longest_first
                if ids and len(prompt) > len(ids) and tuple(prompt[: len(ids)]) == ids
            ),
            None,
        )
        groups.setdefault(key, []).append(i)
    return list(groups.items())


def pad_counts(batches: Iterable[CompletionBatch]) -> tuple[int, int]:
    """``(padded, total)`` input positions over the forward passes of ``batches``."""
    padded = total = 0
    for batch in batches:
        mask_B_L = batch.attention_mask_B_L
        total += mask_B_L.numel()
        padded += mask_B_L.numel() - int(mask_B_L.sum())
    return padded, total
