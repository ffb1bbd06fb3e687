"""Generate the embedded model's own answers for the labelled judge set.

120 prompts (80 harmful: ``harmful_core``, AdvBench, HarmBench; 40 benign:
``benign_lookalike``, ``benign_plain``) x 4 conditions = 480 rows, 64 new tokens each,
through the project's HF engine. Per prompt: no context + greedy; a system context +
greedy; a user-prefix context + greedy; and one sampled row (temperature 1, seed 0) with
no context, a system or a prefix context. Contexts come from the built-in spaces
``paper_axes`` and ``baselines``. Rows are unlabelled (``label: null``); the labels in
``flipsearch/judges/data/smollm2_135m.jsonl`` were written by hand (see that folder's
README). ``split`` is ``dev`` or ``test`` by a hash of the prompt (about 50/50).
Rows are appended batch by batch in a shuffled order; a rerun with the same ``--out``
resumes (the committed set was generated this way: 120 rows in plan order, the rest
shuffled).

``--from-eval RUN_DIR`` draws rows from a pipeline run's evaluated answers instead
(:func:`rows_from_eval`; round 3 of the committed set), with no generation.

Run (about 5 to 8 minutes per batch of 40 on 2 shared CPU cores; the last 280 rows of
the committed set took 55 minutes)::

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/build_judge_set.py --out rows.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from flipsearch.contexts import apply_context
from flipsearch.engines import EngineConfig
from flipsearch.prompts import load_prompt_set
from flipsearch.space import load_search_space
from flipsearch.types import Sampling, make_conversation

SETS = {
    "harmful_core": 36,
    "advbench": 22,
    "harmbench": 22,
    "benign_lookalike": 20,
    "benign_plain": 20,
}
SEED = 0


def split_of(prompt: str) -> str:
    """``dev`` or ``test``: the first byte of the prompt's SHA-256, even/odd."""
    return "dev" if hashlib.sha256(prompt.encode()).digest()[0] % 2 == 0 else "test"


def plan(rng: random.Random) -> list[dict]:
    """The rows to generate, without responses."""
    contexts = [c.context.text for c in load_search_space("paper_axes").enumerate(unique=True)]
    contexts += [c.context.text for c in load_search_space("baselines").enumerate(unique=True)]
    contexts = sorted({t for t in contexts if t.strip()})
    rows = []
    for source, k in SETS.items():
        prompt_rows = [r for r in load_prompt_set(source) if not getattr(r, "context", "")]
        for pr in rng.sample(prompt_rows, k):
            sampled_placement = rng.choice(["none", "system", "prefix"])
            for placement, decoding in (
                ("none", "greedy"),
                ("system", "greedy"),
                ("prefix", "greedy"),
                (sampled_placement, "sampled"),
            ):
                context = "" if placement == "none" else rng.choice(contexts)
                rows.append(
                    {
                        "prompt": pr.prompt,
                        "context": context,
                        "placement": placement,
                        "decoding": decoding,
                        "source": source,
                        "type": pr.type,
                        "split": split_of(pr.prompt),
                    }
                )
    return rows


ROUND_SETS = {
    "harmful_core": 6,
    "advbench": 12,
    "harmbench": 10,
    "strongreject": 14,
    "xstest": 8,
    "benign_lookalike": 5,
    "benign_plain": 5,
}
"""Prompts per set in a later greedy round (:func:`plan_round`)."""


def plan_round(round_no: int, known: set[str]) -> list[dict]:
    """A later labelling round: new prompts (none in ``known``) from :data:`ROUND_SETS`,
    each with no context, a system context and a user-prefix context, all greedy, as in
    rounds 1-2; seeded by the round number."""
    rng = random.Random(SEED + round_no)
    contexts = [c.context.text for c in load_search_space("paper_axes").enumerate(unique=True)]
    contexts += [c.context.text for c in load_search_space("baselines").enumerate(unique=True)]
    contexts = sorted({t for t in contexts if t.strip()})
    rows = []
    for source, k in ROUND_SETS.items():
        prompt_rows = [
            r for r in load_prompt_set(source)
            if not getattr(r, "context", "") and r.prompt not in known
        ]  # fmt: skip
        for pr in rng.sample(prompt_rows, k):
            for placement in ("none", "system", "prefix"):
                rows.append(
                    {
                        "prompt": pr.prompt,
                        "context": "" if placement == "none" else rng.choice(contexts),
                        "placement": placement,
                        "decoding": "greedy",
                        "source": source,
                        "type": pr.type,
                        "split": split_of(pr.prompt),
                        "round": round_no,
                    }
                )
    return rows


def schedule(rows: list[dict], batch_size: int) -> list[tuple[str, list[dict]]]:
    """Batches of one decoding each, in a shuffled order that mixes prompt sets, so a
    run stopped early still covers every set and both decodings."""
    rng = random.Random(SEED + 1)
    chunks = []
    for decoding in ("greedy", "sampled"):
        todo = [r for r in rows if r["decoding"] == decoding]
        rng.shuffle(todo)
        chunks += [(decoding, todo[i : i + batch_size]) for i in range(0, len(todo), batch_size)]
    rng.shuffle(chunks)
    return chunks


def generate(rows: list[dict], model: str, batch_size: int, out: Path) -> None:
    """Generate each row's ``response`` and append the rows to ``out`` batch by batch.

    Rows whose ``id`` is already in ``out`` are skipped, so a stopped run resumes.
    """
    done = set()
    if out.is_file():
        done = {json.loads(line)["id"] for line in out.open(encoding="utf-8") if line.strip()}
    engine = EngineConfig(model=model, engine="hf", batch_size=batch_size).build()
    samplings = {
        "greedy": Sampling(greedy=True, max_tokens=64),
        "sampled": Sampling(temperature=1.0, max_tokens=64, seed=SEED),
    }
    todo = [r for r in rows if r["id"] not in done]
    for decoding, batch in schedule(todo, batch_size):
        convs = [
            make_conversation(r["prompt"])
            if r["placement"] == "none"
            else apply_context(make_conversation(r["prompt"]), r["context"], r["placement"])
            for r in batch
        ]
        outs = engine.generate(convs, samplings[decoding])
        with out.open("a", encoding="utf-8") as f:
            for r, gens in zip(batch, outs, strict=True):
                row = {**r, "response": gens[0].text, "label": None}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        done.update(r["id"] for r in batch)
        print(f"{decoding}: {len(done)}/{len(rows)}", flush=True)
    engine.close()


EVAL_MODELS = ("base", "teacher", "opsa", "baseline")
EVAL_TASKS = {"harmful": 48, "over_refusal": 12}
"""Rows drawn per evaluated model from an eval's ``samples.jsonl``, by task."""


def rows_from_eval(
    samples: Path, teacher_context: str, teacher_placement: str, known: set[str]
) -> list[dict]:
    """Unlabelled rows drawn from ``opsa-train eval``'s ``samples.jsonl``.

    Per model in :data:`EVAL_MODELS`, :data:`EVAL_TASKS` rows at random (seeded), skipping
    prompts in ``known`` (already in the labelled set). The judge's fields (``outcome``,
    ``unsafe``, ``refusal``) are dropped, so a labeller reading the rows never sees them.
    """
    rng = random.Random(SEED + 3)
    by_key: dict[tuple[str, str], list[dict]] = {}
    for line in samples.open(encoding="utf-8"):
        s = json.loads(line)
        if s["model"] in EVAL_MODELS and s["task"] in EVAL_TASKS and s["prompt"] not in known:
            by_key.setdefault((s["model"], s["task"]), []).append(s)
    rows = []
    for model in EVAL_MODELS:
        for task, k in EVAL_TASKS.items():
            for s in rng.sample(by_key.get((model, task), []), k):
                is_teacher = model == "teacher" and task == "harmful"
                rows.append(
                    {
                        "prompt": s["prompt"],
                        "context": teacher_context if is_teacher else "",
                        "placement": teacher_placement if is_teacher else "none",
                        "decoding": "greedy",
                        "source": s["set"].split(":")[0],
                        "type": "harmful" if task == "harmful" else "benign",
                        "model": model,
                        "max_tokens": s["n_tokens"] if s["finish_reason"] == "length" else None,
                        "response": s["response"],
                        "label": None,
                        "split": split_of(s["prompt"]),
                    }
                )
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument(
        "--from-eval", type=Path, metavar="RUN_DIR",
        help="draw rows from a pipeline run's eval answers (RUN_DIR/eval/samples.jsonl, "
        "teacher context from RUN_DIR/best.json) instead of generating",
    )  # fmt: skip
    parser.add_argument(
        "--labelled", type=Path, default=Path("flipsearch/judges/data/smollm2_135m.jsonl")
    )
    parser.add_argument("--id-prefix", default="r")
    parser.add_argument(
        "--round", type=int, default=None,
        help="a later greedy round (3 conditions per new prompt) with this number; ids use "
        "--id-prefix",
    )  # fmt: skip
    args = parser.parse_args()
    if args.from_eval:
        best = json.loads((args.from_eval / "best.json").read_text(encoding="utf-8"))
        harmful = best["contexts"]["harmful"]
        known = {json.loads(line)["prompt"] for line in args.labelled.open(encoding="utf-8")}
        drawn = rows_from_eval(
            args.from_eval / "eval" / "samples.jsonl", harmful["text"], harmful["placement"], known
        )
        with args.out.open("w", encoding="utf-8") as f:
            for i, r in enumerate(drawn):
                f.write(
                    json.dumps({"id": f"{args.id_prefix}{i:03d}", **r}, ensure_ascii=False) + "\n"
                )
        print(f"wrote {len(drawn)} unlabelled rows -> {args.out}")
        return
    if args.round is not None:
        known = {json.loads(line)["prompt"] for line in args.labelled.open(encoding="utf-8")}
        planned = plan_round(args.round, known)
        rows = [{"id": f"{args.id_prefix}{i:03d}", **r} for i, r in enumerate(planned)]
    else:
        rows = [{"id": f"s{i:03d}", **r} for i, r in enumerate(plan(random.Random(SEED)))]
    generate(rows, args.model, args.batch_size, args.out)
    print(f"wrote {len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
