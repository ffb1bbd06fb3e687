"""The template renderer: substitutes ``{slot}`` names and nothing else (no code runs)."""

from __future__ import annotations

import re
from collections.abc import Mapping

# "{{" and "}}" are literal braces; "{name}" a placeholder; any other brace is an error.
TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def placeholders(template: str) -> list[str | None]:
    # Placeholder names in order; None marks a stray brace.
    out: list[str | None] = []
    for m in TOKEN.finditer(template):
        tok = m.group(0)
        if tok in ("{{", "}}"):
            continue
        out.append(m.group(1) if m.group(1) is not None else None)
    return out


def substitute(template: str, texts: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        return texts[m.group(1)]

    return TOKEN.sub(repl, template)
