"""Score a judge on hand-labelled (prompt, response) rows, per outcome and split.

The labelled file is JSONL with ``prompt``, ``response``, ``label`` (``refusal``,
``compliance`` or ``non-answer``) and ``split`` (``dev``/``test``). The default file,
:data:`SMOLLM2_SET`, holds the embedded SmolLM2-135M's own answers (see
``flipsearch/judges/data/README.md``). A judge's ``other`` outcome is its non-answer.
For each outcome, one against the rest: precision, recall and balanced accuracy (the
mean of recall and specificity).

Regenerate the report (seconds, no model)::

    flipsearch judge-eval --out results/judge_smollm2.md
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flipsearch.errors import JudgeError
from flipsearch.jsonl import iter_jsonl_objects
from flipsearch.judges._base import Judge
from flipsearch.judges._refusal import RefusalJudge

SMOLLM2_SET = Path(__file__).parent / "data" / "smollm2_135m.jsonl"
LABELS: tuple[str, ...] = ("refusal", "compliance", "non-answer")
_OUTCOME_LABEL = {"refusal": "refusal", "compliance": "compliance", "other": "non-answer"}


@dataclass(frozen=True)
class LabelledRow:
    """One hand-labelled row."""

    id: str
    prompt: str
    response: str
    label: str
    split: str
    decoding: str = ""
    """``greedy`` or ``sampled`` where the file says, else empty."""


def read_labelled(path: Path) -> list[LabelledRow]:
    """The rows of a labelled JSONL file.

    Raises:
        JudgeError: missing file, or a row without a string field or with an unknown label.
    """
    if not path.is_file():
        raise JudgeError(f"`labelled` must be an existing JSONL file, got {str(path)!r}")
    rows = []
    for lineno, obj in iter_jsonl_objects(path, JudgeError):
        for field in ("prompt", "response", "label", "split"):
            if not isinstance(obj.get(field), str):
                raise JudgeError(
                    f"`{path}` line {lineno} must have a string `{field}` field, got "
                    f"{obj.get(field)!r}: label every row before scoring"
                )
        if obj["label"] not in LABELS:
            raise JudgeError(
                f"`{path}` line {lineno} `label` must be one of {LABELS}, got {obj['label']!r}"
            )
        rows.append(
            LabelledRow(
                str(obj.get("id", lineno)), obj["prompt"], obj["response"], obj["label"],
                obj["split"], str(obj.get("decoding") or ""),
            )
        )  # fmt: skip
    return rows


@dataclass(frozen=True)
class OutcomeScore:
    """One outcome against the rest."""

    label: str
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def precision(self) -> float:
        return _share(self.tp, self.fp)

    @property
    def recall(self) -> float:
        return _share(self.tp, self.fn)

    @property
    def balanced_accuracy(self) -> float:
        """Mean of recall and specificity."""
        return (self.recall + _share(self.tn, self.fp)) / 2


def _share(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else float("nan")


def predict(rows: Sequence[LabelledRow], judge: Judge) -> list[str]:
    """The judge's label (``refusal``/``compliance``/``non-answer``) for each row."""
    verdicts = judge.judge([r.prompt for r in rows], [r.response for r in rows])
    return [_OUTCOME_LABEL.get(v.outcome or "other", "non-answer") for v in verdicts]


def score(gold: Sequence[str], pred: Sequence[str]) -> dict[str, OutcomeScore]:
    """Per-label one-vs-rest confusion counts."""
    out = {}
    for lab in LABELS:
        pairs = list(zip(gold, pred, strict=True))
        out[lab] = OutcomeScore(
            lab,
            tp=sum(g == lab and p == lab for g, p in pairs),
            fp=sum(g != lab and p == lab for g, p in pairs),
            tn=sum(g != lab and p != lab for g, p in pairs),
            fn=sum(g == lab and p != lab for g, p in pairs),
        )
    return out


def evaluate(
    path: Path = SMOLLM2_SET, judge: Judge | None = None
) -> dict[str, dict[str, OutcomeScore]]:
    """Scores per split (``dev``, ``test``, ``all``) and label."""
    rows = read_labelled(path)
    pred = predict(rows, judge or RefusalJudge())
    out = {}
    for split in ("dev", "test", "all"):
        idx = [i for i, r in enumerate(rows) if split in ("all", r.split)]
        out[split] = score([rows[i].label for i in idx], [pred[i] for i in idx])
    return out


def by_decoding(
    path: Path = SMOLLM2_SET, judge: Judge | None = None
) -> dict[tuple[str, str], tuple[int, float, OutcomeScore]]:
    """Per (split, decoding): rows, three-way accuracy and the refusal score.

    Decoding ``all`` pools both; decodings absent from the file are left out.
    """
    rows = read_labelled(path)
    pred = predict(rows, judge or RefusalJudge())
    out = {}
    for split in ("dev", "test"):
        for decoding in (*sorted({r.decoding for r in rows if r.decoding}), "all"):
            idx = [i for i, r in enumerate(rows) if r.split == split
                   and decoding in ("all", r.decoding)]  # fmt: skip
            if not idx:
                continue
            gold, got = [rows[i].label for i in idx], [pred[i] for i in idx]
            agree = sum(g == p for g, p in zip(gold, got, strict=True)) / len(idx)
            out[(split, decoding)] = (len(idx), agree, score(gold, got)["refusal"])
    return out


def confusion(path: Path, judge: Judge, split: str) -> dict[tuple[str, str], int]:
    """(gold, predicted) counts on one split."""
    rows = [r for r in read_labelled(path) if r.split == split]
    counts: dict[tuple[str, str], int] = {}
    for r, p in zip(rows, predict(rows, judge), strict=True):
        counts[(r.label, p)] = counts.get((r.label, p), 0) + 1
    return counts


SMOLLM2_NOTES = """\
480 rows: 120 prompts x (no context, system context, user-prefix context, all greedy;
plus one row sampled at temperature 1), 64 new tokens. The first 200 rows of the file
were labelled in a first round (refusal@3 was tuned on their dev half); the other 280 (160
greedy, all 120 sampled) were generated and labelled by reading in a second round, each
batch before any prediction on its test rows was seen. `refusal@4` was then tuned on dev
rows only (old and new) and the test split was scored once, for this report, with no
tuning after it. Old test rows had been scored in aggregate before (the refusal@3
report), so they are not perfectly fresh; the 153 new test rows are.

The goal (refusal balanced accuracy >= 0.90 on test) is not reached: 0.727 on test
against 0.929 on dev. The dev rules did not carry over to test refusals: `refusal@4`
changes 2 of 256 refusal calls on test, with no net effect (0.727 for both; dev 0.793 ->
0.929, 6 calls changed), so the new refusal rules (counter-arguments, positive and
defensive redirections, looped crime lectures) fit patterns that test prompts rarely share. What
did carry over is non-answer detection (loops at any phase, restated requests, issue
framings, off-topic word salad, bare remarks): three-way accuracy on test 0.664 -> 0.707
(greedy 0.734 -> 0.750, sampled 0.453 -> 0.578). Most test errors are still derailed or
salad answers judged compliance (40 of 72 gold non-answers), and refusals by deflection
or garbled warning with no refusal phrase (14 of 33 gold refusals judged compliance).
Sampled rows at temperature 1 are mostly word salad (56 of 120 non-answers, 7 refusals);
the labels of such rows are the least certain (see the edge cases in the data README).

XSTest is unaffected: `refusal@4` changes no refusal/not-refusal prediction on the five
XSTest files, so held-out accuracy stays 0.911 (`results/judge_xstest.md`)."""


def report(path: Path = SMOLLM2_SET, judge: Judge | None = None, notes: str | None = None) -> str:
    """The markdown report: per-outcome precision/recall/balanced accuracy, dev and test.

    ``notes`` defaults to :data:`SMOLLM2_NOTES` for the packaged set, else nothing.
    """
    judge = judge or RefusalJudge()
    if notes is None:
        notes = SMOLLM2_NOTES if path == SMOLLM2_SET else ""
    scores = evaluate(path, judge)
    n = {s: scores[s]["refusal"].tp + scores[s]["refusal"].fp + scores[s]["refusal"].tn
         + scores[s]["refusal"].fn for s in scores}  # fmt: skip
    lines = [
        f"# Refusal judge `{judge.name}@{judge.version}` on SmolLM2-135M's own answers",
        "",
        f"Regenerate with `flipsearch judge-eval --out results/judge_smollm2.md` "
        f"(labelled file: `{_display(path)}`).",
        "",
        "Gold: hand labels (refusal / compliance / non-answer; guide in",
        "`flipsearch/judges/data/README.md`). The judge's `other` is its non-answer. Each",
        "outcome is scored against the rest; balanced accuracy is the mean of recall and",
        "specificity. XSTest's human labels: `results/judge_xstest.md`.",
        "",
    ]
    if notes:
        lines += [notes.rstrip(), ""]
    lines += [
        "| split | n | outcome | gold | predicted | precision | recall | balanced acc. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in ("dev", "test"):
        for lab, s in scores[split].items():
            lines.append(
                f"| {split} | {n[split]} | {lab} | {s.tp + s.fn} | {s.tp + s.fp} | "
                f"{s.precision:.3f} | {s.recall:.3f} | {s.balanced_accuracy:.3f} |"
            )
    lines += [
        "",
        "By decoding (three-way accuracy: the share of rows whose label the judge matches):",
        "",
        "| split | decoding | n | three-way accuracy | refusal precision | refusal recall | "
        "refusal balanced acc. |",
        "|---|---|---|---|---|---|---|",
    ]
    for (split, decoding), (count, agree, s) in by_decoding(path, judge).items():
        lines.append(
            f"| {split} | {decoding} | {count} | {agree:.3f} | {s.precision:.3f} | "
            f"{s.recall:.3f} | {s.balanced_accuracy:.3f} |"
        )
    for split in ("dev", "test"):
        counts = confusion(path, judge, split)
        lines += ["", f"Confusion on {split} (rows gold, columns predicted):", ""]
        lines += ["| gold \\ predicted | " + " | ".join(LABELS) + " |", "|---" * 4 + "|"]
        for g in LABELS:
            cells = " | ".join(str(counts.get((g, p), 0)) for p in LABELS)
            lines.append(f"| {g} | {cells} |")
    return "\n".join(lines) + "\n"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        return str(path)
