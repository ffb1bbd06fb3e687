"""Validation of a parsed space document; every error names the source and the key."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from flipsearch.contexts import PLACEMENTS
from flipsearch.errors import SearchSpaceError
from flipsearch.space._template import TOKEN, placeholders
from flipsearch.space._types import (
    CANDIDATE_DIM,
    PLACEMENT_DIM,
    Option,
    Slot,
    derived_option_id,
    normalise_whitespace,
)

_RESERVED = (PLACEMENT_DIM, CANDIDATE_DIM)
_TOP_KEYS = ("name", "description", "placement", "slots", "template", "candidates")
_SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Ids go into candidate ids as "slot=id|slot=id@hash", so these separators are banned.
_OPTION_ID = re.compile(r"[A-Za-z0-9_.:+-]+")


def parse_space(d: object, source: str) -> dict[str, Any]:
    """The :class:`~flipsearch.space.SearchSpace` fields of document ``d``.

    Raises:
        SearchSpaceError: the message names ``source``, the key and the problem.
    """
    return _Parser(source).space(d)


class _Parser:
    """Validates a parsed YAML document; every error names the source and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, msg: str) -> SearchSpaceError:
        return SearchSpaceError(f"{self.source}: {msg}")

    def space(self, d: object) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise self.fail(
                f"the document must be a mapping with `slots` or `candidates`, got {d!r}"
            )
        for key in d:
            if key not in _TOP_KEYS:
                close = difflib.get_close_matches(str(key), _TOP_KEYS, n=1)
                hint = f". Did you mean {close[0]!r}?" if close else ""
                raise self.fail(
                    f"top-level keys must be among {_TOP_KEYS}, got unknown key {key!r}{hint}"
                )
        name = d.get("name", Path(self.source).stem if self.source != "<dict>" else "space")
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f"`name` must be a non-empty string, got {name!r}")
        description = d.get("description", "")
        if not isinstance(description, str):
            raise self.fail(f"`description` must be a string, got {description!r}")
        placements = self.placements(d.get("placement", "system"))

        has_slots, has_cands = "slots" in d, "candidates" in d
        if has_slots == has_cands:
            got = "both" if has_slots else "neither"
            raise self.fail(
                f"the document must have exactly one of `slots` (grammar) or `candidates` "
                f"(list), got {got}"
            )
        common: dict[str, Any] = {
            "name": name,
            "description": description.strip(),
            "placements": placements,
            "source": self.source,
        }
        if has_cands:
            if "template" in d:
                raise self.fail(
                    "`template` must only be given with `slots`, got it with `candidates`"
                )
            cands = self.candidates(d["candidates"], placements)
            return {"candidates": cands, **common}
        slots = self.slots(d["slots"])
        template = self.template(d.get("template"), slots)
        return {"slots": slots, "template": template, **common}

    def placements(self, p: object) -> tuple[str, ...]:
        items = p if isinstance(p, list) else [p]
        if not items:
            raise self.fail(f"`placement` must be a placement or a non-empty list, got {p!r}")
        for item in items:
            if item not in PLACEMENTS:
                raise self.fail(f"`placement` must be one of {PLACEMENTS} (or a list), got {p!r}")
        if len(set(items)) != len(items):
            raise self.fail(f"`placement` must list each placement once, got {p!r}")
        return tuple(items)

    def option(self, where: str, raw: object, *, allow_placement: bool) -> Option:
        if isinstance(raw, str):
            return Option(id=derived_option_id(raw), text=raw)
        if not isinstance(raw, dict):
            raise self.fail(
                f"`{where}` must be a string or a mapping with `id` and `text`, got {raw!r}"
                + (': write "" for an empty option' if raw is None else "")
            )
        allowed = ("id", "text", "placement") if allow_placement else ("id", "text")
        extra = [k for k in raw if k not in allowed]
        if extra:
            raise self.fail(f"`{where}` keys must be among {allowed}, got unknown {extra!r}")
        if "text" not in raw or not isinstance(raw["text"], str):
            raise self.fail(f"`{where}.text` must be a string, got {raw.get('text')!r}")
        oid = raw.get("id", derived_option_id(raw["text"]))
        if not isinstance(oid, str) or not _OPTION_ID.fullmatch(oid):
            raise self.fail(
                f"`{where}.id` must be a string of letters, digits and `_.:+-`, got {oid!r}"
            )
        placement = raw.get("placement")
        if placement is not None and placement not in PLACEMENTS:
            raise self.fail(f"`{where}.placement` must be one of {PLACEMENTS}, got {placement!r}")
        return Option(id=oid, text=raw["text"], placement=placement)

    def unique(self, where: str, options: list[Option]) -> None:
        ids = [o.id for o in options]
        dup_ids = sorted({i for i in ids if ids.count(i) > 1})
        if dup_ids:
            raise self.fail(f"`{where}` option ids must be unique, got duplicates {dup_ids!r}")
        # The same text at two placements is two contexts (placement is searched too).
        texts = [(normalise_whitespace(o.text), o.placement) for o in options]
        dup_texts = sorted({t for t, _ in texts if texts.count((t, _)) > 1})
        if dup_texts:
            raise self.fail(f"`{where}` option texts must be unique, got duplicates {dup_texts!r}")

    def slots(self, raw: object) -> tuple[Slot, ...]:
        if not isinstance(raw, dict) or not raw:
            raise self.fail(
                f"`slots` must be a non-empty mapping of slot name -> options, got {raw!r}"
            )
        slots = []
        for name, options in raw.items():
            if not isinstance(name, str) or not _SLOT_NAME.fullmatch(name):
                raise self.fail(f"slot names must be identifiers, got {name!r}")
            if name in _RESERVED:
                raise self.fail(
                    f"slot names must not be one of {_RESERVED} (reserved), got {name!r}"
                )
            if not isinstance(options, list):
                raise self.fail(f"`slots.{name}` must be a list of options, got {options!r}")
            if not options:
                raise self.fail(f"`slots.{name}` must have at least one option, got []")
            opts = [
                self.option(f"slots.{name}[{i}]", o, allow_placement=False)
                for i, o in enumerate(options)
            ]
            self.unique(f"slots.{name}", opts)
            slots.append(Slot(name=name, options=tuple(opts)))
        return tuple(slots)

    def template(self, raw: object, slots: tuple[Slot, ...]) -> str:
        if raw is None:
            raise self.fail("`template` must be given with `slots`, e.g. '{framing} {strength}'")
        if not isinstance(raw, str):
            raise self.fail(f"`template` must be a string, got {raw!r}")
        names = {s.name for s in slots}
        used = placeholders(raw)
        for p in used:
            if p is None:
                raise self.fail(
                    f"`template` must use braces only as `{{slot}}` (or `{{{{`/`}}}}` for a "
                    f"literal brace), got a stray brace in {raw!r}"
                )
            if p not in names:
                raise self.fail(
                    f"`template` must only name declared slots {sorted(names)}, "
                    f"got unknown slot {{{p}}}"
                )
        unused = [s.name for s in slots if s.name not in used]
        if unused:
            raise self.fail(
                f"every slot must appear in `template`, got unused slot(s) {unused}: an unused "
                "slot multiplies the space without changing the text"
            )
        literal = TOKEN.sub("", raw)
        if not literal.strip() and all(any(not o.text.strip() for o in s.options) for s in slots):
            raise self.fail(
                "`template` must not be able to render an empty context, got every slot "
                "with an empty option and no literal text"
            )
        return raw

    def candidates(self, raw: object, placements: tuple[str, ...]) -> tuple[Option, ...]:
        if not isinstance(raw, list):
            raise self.fail(f"`candidates` must be a list, got {raw!r}")
        if not raw:
            raise self.fail("`candidates` must have at least one candidate, got []")
        cands = []
        for i, c in enumerate(raw):
            opt = self.option(f"candidates[{i}]", c, allow_placement=True)
            if not opt.text.strip():
                raise self.fail(f"`candidates[{i}].text` must be non-empty, got {opt.text!r}")
            if opt.placement is not None and len(placements) > 1:
                raise self.fail(
                    f"`candidates[{i}].placement` must not be set when the top-level "
                    f"`placement` is searched over, got {opt.placement!r}"
                )
            cands.append(
                Option(id=opt.id, text=normalise_whitespace(opt.text), placement=opt.placement)
            )
        self.unique("candidates", cands)
        return tuple(cands)
