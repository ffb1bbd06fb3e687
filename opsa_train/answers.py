"""Final-answer extraction and matching for the reasoning benchmarks (GSM8K, MATH-500, GPQA).

- GSM8K: the reference solution ends in ``#### <number>``; a model answer is read from,
  in order, ``#### x``, the last ``\\boxed{x}``, "the answer is x", else the last number
  in the text. Numbers compare as values: ``1,000`` = ``1000`` = ``1000.0``, ``$18`` = ``18``.
- MATH-500: the answer is the content of the *last* ``\\boxed{...}`` (braces nested to
  any depth, ``\\fbox`` too), else "the answer is x". Answers compare after a light
  LaTeX normalisation (spaces, ``\\left``/``\\right``, ``\\dfrac``/``\\tfrac``, ``^\\circ``,
  ``\\text{...}`` units, a trailing period, ``\\$``), and as numbers when both parse
  (``\\frac{1}{2}`` = ``0.5``). No symbolic algebra: equivalent forms that differ in
  writing (``x+1`` vs ``1+x``) count as wrong, as in most MATH harnesses.
- GPQA: the answer is a choice letter A-D: the last ``\\boxed{}``'s letter (``C``,
  ``(C)``, ``\\text{C}``), else "the answer is (C)"; compared case-insensitively.

Example:
    >>> extract_gsm8k("So she makes 9 * 2 = $18.\\n#### 18")
    '18'
    >>> extract_boxed("thus $\\\\boxed{\\\\frac{1}{\\\\sqrt{2}}}$.")
    '\\\\frac{1}{\\\\sqrt{2}}'
    >>> is_correct("The answer is 1,000 dollars.", "1000", kind="gsm8k")
    True
"""

from __future__ import annotations

import re
from fractions import Fraction

from opsa_train.errors import OpsaConfigError

__all__ = [
    "KINDS",
    "extract_answer",
    "extract_boxed",
    "extract_choice",
    "extract_gsm8k",
    "extract_math",
    "is_correct",
    "normalize_math",
    "parse_number",
]

KINDS = ("gsm8k", "math500", "gpqa")

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*\$?\s*(.+?)(?:\$|\.\s|\.$|\n|$)", re.I
)


# --------------------------------------------------------------------------------------
# Extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced.

    Example:
        >>> extract_boxed("a \\\\boxed{1} b \\\\boxed{\\\\{1, 2\\\\} \\\\cup \\\\{3\\\\}}")
        '\\\\{1, 2\\\\} \\\\cup \\\\{3\\\\}'
        >>> extract_boxed("\\\\boxed 5") , extract_boxed("no box") is None
        ('5', True)
    """
    ends = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", text)]
    for i in reversed(ends):
        rest = text[i:]
        if rest.startswith(" ") and not rest.lstrip().startswith("{"):
            # \boxed 5: a single token up to the next space or $.
            token = re.match(r"\s*([^\s$]+)", rest)
            if token:
                return token.group(1)
            continue
        j = i + (len(rest) - len(rest.lstrip()))
        if j >= len(text) or text[j] != "{":
            continue
        depth, k = 0, j
        while k < len(text):
            ch = text[k]
            if ch == "\\" and k + 1 < len(text) and text[k + 1] in "{}":
                k += 2  # \{ and \} are set braces, not grouping
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : k].strip()
            k += 1
        # Unbalanced: the model ran out of tokens inside the box; try an earlier one.
    return None


def extract_gsm8k(text: str) -> str | None:
    """The final number of a GSM8K-style answer, without commas or ``$``; None if none.

    Order: ``#### x``, the last ``\\boxed{x}``, "the answer is x", the last number.

    Example:
        >>> extract_gsm8k("He made a profit of 200,000-130,000=$70,000\\n#### 70000")
        '70000'
        >>> extract_gsm8k("The temperature fell to -3.5 degrees."), extract_gsm8k("none") is None
        ('-3.5', True)
    """
    candidates: list[str] = []
    hashes = re.findall(r"####\s*\$?\s*(" + _NUMBER + ")", text)
    if hashes:
        candidates.append(hashes[-1])
    boxed = extract_boxed(text)
    if boxed is not None:
        found = _NUMBER_RE.findall(boxed.replace("\\!", "").replace("{,}", ","))
        if found:
            candidates.append(found[-1])
    said = _ANSWER_IS_RE.findall(text)
    if said:
        found = _NUMBER_RE.findall(said[-1])
        if found:
            candidates.append(found[0])
    if not candidates:
        found = _NUMBER_RE.findall(text)
        if found:
            candidates.append(found[-1])
    if not candidates:
        return None
    return _clean_number(candidates[0])


def extract_math(text: str) -> str | None:
    """The final answer of a MATH-style solution: the last boxed content, else
    "the answer is x"; None if neither is there.

    Example:
        >>> extract_math("so $x = \\\\boxed{\\\\dfrac{14}{3}}$.")
        '\\\\dfrac{14}{3}'
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    said = _ANSWER_IS_RE.findall(text)
    return said[-1].strip() if said else None


def extract_choice(text: str) -> str | None:
    """The choice letter (A-D) of a multiple-choice answer: the last boxed content, else
    "the answer is x", read as a lone letter; None otherwise.

    Example:
        >>> extract_choice("so \\\\boxed{(c)}"), extract_choice("The answer is B.")
        ('C', 'B')
        >>> extract_choice("42") is None
        True
    """
    found = extract_math(text)
    if found is None:
        return None
    m = re.fullmatch(r"\(?([A-Da-d])\)?", normalize_math(found))
    return m.group(1).upper() if m else None


def extract_answer(text: str, kind: str) -> str | None:
    """Dispatch on the benchmark: ``gsm8k``, ``math500`` or ``gpqa``.

    Raises:
        OpsaConfigError: unknown ``kind``.
    """
    if kind == "gsm8k":
        return extract_gsm8k(text)
    if kind == "math500":
        return extract_math(text)
    if kind == "gpqa":
        return extract_choice(text)
    raise OpsaConfigError(f"`kind` must be one of {KINDS}, got {kind!r}")


# --------------------------------------------------------------------------------------
# Normalisation and comparison


def _clean_number(s: str) -> str:
    s = s.replace(",", "").replace("$", "").strip()
    if s.endswith("."):
        s = s[:-1]
    return s


def parse_number(s: str) -> Fraction | None:
    """A number (``-1,234.5``, ``3/4``, ``\\frac{3}{4}``, ``50\\%``) as an exact Fraction.

    Example:
        >>> parse_number("\\\\frac{-1}{2}"), parse_number("1,000"), parse_number("x") is None
        (Fraction(-1, 2), Fraction(1000, 1), True)
    """
    t = normalize_math(s).replace(",", "").replace("%", "")
    frac = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", t) or re.fullmatch(
        r"(-?)\\frac(\d)(\d)", t
    )
    try:
        if frac:
            sign = -1 if frac.group(1) else 1
            den = Fraction(frac.group(3))
            return None if den == 0 else sign * Fraction(frac.group(2)) / den
        slash = re.fullmatch(r"(-?\d+)/(\d+)", t)
        if slash:
            den = Fraction(slash.group(2))
            return None if den == 0 else Fraction(slash.group(1)) / den
        if re.fullmatch(_NUMBER, t):
            return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def normalize_math(s: str) -> str:
    """A light LaTeX normalisation for string comparison of final answers.

    Example:
        >>> normalize_math("\\\\left( 3, \\\\dfrac{\\\\pi}{2} \\\\right)")
        '(3,\\\\frac{\\\\pi}{2})'
        >>> normalize_math("90^\\\\circ"), normalize_math("\\\\text{(C)}"), normalize_math("5.")
        ('90', '(C)', '5')
    """
    t = s.strip()
    t = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", t)
    t = re.sub(r"\\(?:mbox|mathrm|textbf|mathbf)\{([^{}]*)\}", r"\1", t)
    for old, new in (
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\%", "%"),
        ("\\$", ""),
        ("$", ""),
        ("{,}", ","),
    ):
        t = t.replace(old, new)
    t = re.sub(r"\s+", "", t)
    t = t.rstrip(".")
    # "x=5" -> "5" when the left side is a single letter (a stated variable value).
    m = re.fullmatch(r"[a-zA-Z]=(.+)", t)
    if m:
        t = m.group(1)
    return t


def is_correct(response: str, reference: str, *, kind: str) -> bool:
    """Whether ``response``'s extracted final answer equals ``reference``.

    GSM8K compares numbers by value; MATH-500 compares normalised strings, then values
    when both sides parse as numbers.

    Raises:
        OpsaConfigError: unknown ``kind``.
    """
    pred = extract_answer(response, kind)
    if pred is None:
        return False
    return answers_equal(pred, reference, kind=kind)


def answers_equal(pred: str, reference: str, *, kind: str) -> bool:
    """Compare two already extracted final answers (see :func:`is_correct`).

    Example:
        >>> answers_equal("0.5", "\\\\frac12", kind="math500")
        True
        >>> answers_equal("18.00", "18", kind="gsm8k")
        True
    """
    if kind not in KINDS:
        raise OpsaConfigError(f"`kind` must be one of {KINDS}, got {kind!r}")
    if kind == "gsm8k":
        a, b = parse_number(_clean_number(pred)), parse_number(_clean_number(reference))
        return a is not None and a == b
    if kind == "gpqa":
        return pred.strip().upper() == reference.strip().upper()
    na, nb = normalize_math(pred), normalize_math(reference)
    if na == nb:
        return True
    a, b = parse_number(na), parse_number(nb)
    return a is not None and a == b
