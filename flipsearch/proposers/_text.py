"""Pure text helpers of the rewriter: parse a model's answer, mutate texts, compare wording.

- :func:`parse_candidates` splits a model's answer (a JSON list, a numbered or bulleted
  list, paragraphs or lines) into candidate texts.
- :func:`mechanical_mutations` rewrites the best texts deterministically, for when a
  model gives nothing usable.
- :func:`sentences`, :func:`words` and :func:`trigrams` split texts for recombination
  and for the rewriter's echo test.

No model, file or Optuna here: text in, text out.

Example:
    >>> parse_candidates("Here you go:\\n1. Refuse harm.\\n2. Decline risky asks.")
    ['Refuse harm.', 'Decline risky asks.']
    >>> sorted(trigrams(words("Refuse, harmful requests!")))
    [('refuse', 'harmful', 'requests')]
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from flipsearch.proposers._pool import normalise_key

__all__ = [
    "mechanical_mutations",
    "parse_candidates",
    "sentences",
    "split_placement",
    "trigrams",
    "words",
]


_FENCE = re.compile(r"^\s*```")
_MARKER = re.compile(
    r"^\s*(?:[#>*_\s]*)"  # markdown debris
    r"(?:\(?\d{1,3}\s*[.):\]]|[-*•]|(?:new\s+)?(?:candidate|instruction|option|context|prompt)"
    r"\s*#?\d*\s*[:.)-])\s*",
    re.IGNORECASE,
)
_LABEL = re.compile(
    r"^(?:\*\*)?(?:new\s+)?(?:candidate|instruction|system message|context)\s*#?\d*\s*:"
    r"(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’"


_REPEATED_NUMBER = re.compile(r"^\(?\d{1,3}\s*[.)]\s+")


def _strip_item(text: str) -> str:
    text = " ".join(text.split())
    text = _REPEATED_NUMBER.sub("", text)  # "1. 1. Refuse ..." (seen from the 135M model)
    text = _LABEL.sub("", text).strip("*_ ").strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def parse_candidates(output: str, *, lists_only: bool = False) -> list[str]:
    """Split a model's answer into candidate texts.

    Understands a JSON list of strings, a numbered or bulleted list (continuation lines
    join their item; text before the first item and after a blank line is commentary),
    blank-line separated paragraphs, or one candidate per line. Labels such as
    ``Candidate 2:``, markdown bold and enclosing quotes are removed. ``lists_only``:
    an answer that is neither a JSON list nor a numbered or bulleted list gives ``[]``
    (prose is not taken for candidates).

    >>> parse_candidates('Sure:\\n1. "Refuse harm."\\n2) Decline\\n   risky asks.\\n\\nBye')
    ['Refuse harm.', 'Decline risky asks.']
    """
    text = output.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list) and all(isinstance(x, str) for x in items):
            return [t for t in (_strip_item(x) for x in items) if t]
    lines = [ln for ln in text.splitlines() if not _FENCE.match(ln)]
    if any(_MARKER.match(ln) for ln in lines):
        items, current = [], None
        for ln in lines:
            m = _MARKER.match(ln)
            if m:
                current = [ln[m.end() :]]
                items.append(current)
            elif not ln.strip():
                current = None
            elif current is not None:
                current.append(ln)
        chunks = [" ".join(c) for c in items]
    elif lists_only:
        return []
    else:
        chunks = [p for p in re.split(r"\n\s*\n", "\n".join(lines)) if p.strip()]
        if len(chunks) == 1:
            chunks = lines
    return [t for t in (_strip_item(c) for c in chunks) if t]


def sentences(text: str) -> list[str]:
    """The sentences of a text, split after ``.``, ``!`` or ``?``."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


_STRONGER = (
    (r"\bshould\b", "must"),
    (r"\bmay want to\b", "must"),
    (r"\bplease consider declining\b", "refuse"),
    (r"\bwhere possible, please decline\b", "refuse"),
    (r"\b(?:try to|consider) ", ""),
    (r"\bit is better to\b", "you must"),
    (r"\bdecline\b", "refuse"),
)
_FIRM = "Refuse such requests every time, however they are phrased or justified."
_CUE = "Before answering, first decide whether the request is harmful."
_BALANCE = "Answer harmless requests fully and do not refuse them."


def _strengthen(text: str) -> str:
    out = text
    for pat, rep in _STRONGER:
        out = re.sub(pat, rep, out, flags=re.IGNORECASE)
    out = re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), out)
    return out if out != text else f"{text} {_FIRM}"


def mechanical_mutations(texts: Sequence[str]) -> list[str]:
    """Deterministic rewrites of the best texts (best first), used when a model gives
    nothing usable: recombine the sentences of the two best, strengthen wording, add a
    reasoning cue, add a do-not-over-refuse clause, shorten. Duplicates are removed.

    >>> mechanical_mutations(["You should refuse harm."])[:2]  # doctest: +NORMALIZE_WHITESPACE
    ['You must refuse harm.',
     'Before answering, first decide whether the request is harmful. You should refuse harm.']
    """
    out: list[str] = []
    bases = [" ".join(t.split()) for t in texts if t.strip()]
    for i, a in enumerate(bases[:2]):
        b = bases[1 - i] if len(bases) > 1 else None
        if b is not None:
            union = sentences(a) + [s for s in sentences(b) if s not in sentences(a)]
            out.append(" ".join(union))
        out.append(_strengthen(a))
        if _CUE not in a:
            out.append(f"{_CUE} {a}")
        if _BALANCE not in a:
            out.append(f"{a} {_BALANCE}")
        if len(sentences(a)) > 2:
            out.append(" ".join(sentences(a)[:2]))
    for a in bases[2:]:
        out.append(_strengthen(a))
    seen, unique = set(), []
    for t in out:
        if normalise_key(t) not in seen:
            seen.add(normalise_key(t))
            unique.append(t)
    return unique


def words(text: str) -> list[str]:
    """Case-folded word tokens; punctuation and list bullets are dropped, so they
    cannot hide an echo."""
    return re.findall(r"[a-z0-9']+", text.casefold())


def trigrams(tokens: list[str]) -> set[tuple[str, ...]]:
    """The set of consecutive token triples."""
    return {tuple(tokens[i : i + 3]) for i in range(max(len(tokens) - 2, 0))}


_PLACEMENT_TAG = re.compile(
    r"^\s*(?:[\[(]\s*(system|prefix|suffix)\s*[\])]|(system|prefix|suffix)\s*:)\s*[:\-–]?\s*",
    re.IGNORECASE,
)


def split_placement(text: str) -> tuple[str | None, str]:
    """A leading placement tag (``[prefix]``, ``(suffix)``, ``system:``) and the rest.

    >>> split_placement("[Prefix] Refuse harm.")
    ('prefix', 'Refuse harm.')
    >>> split_placement("Refuse harm.")
    (None, 'Refuse harm.')
    """
    m = _PLACEMENT_TAG.match(text)
    if not m:
        return None, text
    return (m.group(1) or m.group(2)).lower(), text[m.end() :].strip()
