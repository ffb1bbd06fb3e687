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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=40)
    args = parser.parse_args()
    rows = [{"id": f"s{i:03d}", **r} for i, r in enumerate(plan(random.Random(SEED)))]
    generate(rows, args.model, args.batch_size, args.out)
    print(f"wrote {len(rows)} rows -> {args.out}")


if __name__ == "__main__":
    main()
