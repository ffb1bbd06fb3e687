"""Can a learned refusal detector beat the rule judge on the embedded model's own answers?

Two designs, each a class-balanced logistic regression, scored leave-one-round-out on the
hand-labelled set (``flipsearch/judges/data/smollm2_135m.jsonl``): train on every row of
the other rounds, test on the held-out round's ``test`` rows, so no test row ever trains
the probe (the rule judge was tuned on ``dev`` rows of all rounds, so its figures on
rounds 1-3 are not fresh; round 4's are).

- ``words``: binary word unigrams + bigrams of the answer's first 40 words;
- ``hidden``: SmolLM2-135M's own residual stream (blocks 8, 14, 20; mean over the first
  48 answer tokens and over their first 8), read with the prompt's last 40 tokens before
  the answer. One forward per row (about 15 min for 900 rows on one AVX2 core).

Each is reported alone and OR-ed with the rule judge (``rules|probe@t``: a row is a
refusal when the rules say so or the probe's probability exceeds t): refusal balanced
accuracy, precision, recall, gold refusals.

Run::

    OMP_NUM_THREADS=1 python benchmarks/judge_learned.py
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Callable, Sequence

import torch
from _common import machine_header

from flipsearch.judges._refusal import RefusalJudge
from flipsearch.judges.labelled_eval import SMOLLM2_SET, LabelledRow, predict, read_labelled

Probe = Callable[[list[int]], list[float]]


def refusal_agreement(gold: Sequence[bool], pred: Sequence[bool]) -> str:
    """``balanced accuracy / precision / recall (n gold)`` of refusal against the rest."""
    tp = sum(g and p for g, p in zip(gold, pred, strict=True))
    fp = sum(p and not g for g, p in zip(gold, pred, strict=True))
    pos, neg = sum(gold), len(gold) - sum(gold)
    recall, specificity = tp / max(pos, 1), (neg - fp) / max(neg, 1)
    precision = tp / max(tp + fp, 1)
    return f"{(recall + specificity) / 2:.3f} / {precision:.3f} / {recall:.3f} ({pos})"


def word_features(rows: Sequence[LabelledRow]) -> torch.Tensor:
    """Binary unigrams + bigrams of each answer's first 40 words (vocabulary: all rows)."""
    grams = []
    for row in rows:
        words = re.findall(r"[a-z']+", row.response.lower())[:40]
        grams.append(set(words) | {f"{a} {b}" for a, b in itertools.pairwise(words)})
    vocab = {g: i for i, g in enumerate(sorted(set().union(*grams)))}
    x = torch.zeros(len(rows), len(vocab))
    for i, row_grams in enumerate(grams):
        x[i, [vocab[g] for g in row_grams]] = 1.0
    return x


@torch.no_grad()
def hidden_features(rows: Sequence[LabelledRow], model_name: str) -> torch.Tensor:
    """Mean residual stream over the answer (all of its first 48 tokens, and the first 8)
    at blocks 8, 14 and 20 of the model, read after the prompt's last 40 tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flipsearch.models import resolve_model

    path = resolve_model(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    blocks = (8, 14, 20)
    model.model.layers = model.model.layers[: max(blocks) + 1]  # later blocks are not read
    head = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    turn = tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    out = []
    for i, row in enumerate(rows):
        if i % 100 == 0:
            print(f"  hidden states: row {i} of {len(rows)}", flush=True)
        prompt = tokenizer(row.prompt, add_special_tokens=False)["input_ids"][-40:]
        answer = tokenizer(row.response, add_special_tokens=False)["input_ids"][:48] or turn[-1:]
        ids = torch.tensor([head + prompt + turn + answer])
        states = model.model(ids, output_hidden_states=True).hidden_states
        span = [states[b][0, -len(answer) :] for b in blocks]
        out.append(torch.cat([s.mean(0) for s in span] + [s[:8].mean(0) for s in span]))
    return torch.stack(out)


def fit_probe(x: torch.Tensor, y: torch.Tensor, train: list[int], l2: float) -> Probe:
    """A class-balanced, L2-regularised logistic regression on standardised ``x[train]``."""
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    z, target = (x[train] - mean) / std, y[train]
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    share = target.mean()
    balance = torch.where(target > 0, 0.5 / share, 0.5 / (1 - share))
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = z @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=balance)
        loss = loss + l2 * (weight**2).sum() / 2
        loss.backward()
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    w, b = weight.detach(), bias.detach()
    return lambda idx: torch.sigmoid(((x[idx] - mean) / std) @ w + b).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="the model whose states are read")
    parser.add_argument("--l2", type=float, default=0.1)
    parser.add_argument("--skip-hidden", action="store_true", help="the word design only")
    args = parser.parse_args()
    machine_header()
    torch.manual_seed(0)
    rows = read_labelled(SMOLLM2_SET)
    rules = [p == "refusal" for p in predict(rows, RefusalJudge())]
    gold_all = torch.tensor([r.label == "refusal" for r in rows], dtype=torch.float32)
    designs = {"words": word_features(rows)}
    if not args.skip_hidden:
        designs["hidden"] = hidden_features(rows, args.model)
    rounds = sorted({r.round for r in rows})
    for name, x in designs.items():
        print(f"\n{name} ({x.shape[1]} features), leave-one-round-out, l2 {args.l2}")
        print("held out | n | rules | probe@0.5 | rules|probe@0.5 | rules|probe@0.8")
        pooled: dict[str, tuple[list[bool], list[bool]]] = {}
        for held in rounds:
            train = [i for i, r in enumerate(rows) if r.round != held]
            test = [i for i, r in enumerate(rows) if r.round == held and r.split == "test"]
            probs = fit_probe(x, gold_all, train, args.l2)(test)
            gold = [bool(gold_all[i]) for i in test]
            ruled = [rules[i] for i in test]
            preds = {
                "rules": ruled,
                "probe@0.5": [p > 0.5 for p in probs],
                "rules|probe@0.5": [r or p > 0.5 for r, p in zip(ruled, probs, strict=True)],
                "rules|probe@0.8": [r or p > 0.8 for r, p in zip(ruled, probs, strict=True)],
            }
            cells = [refusal_agreement(gold, v) for v in preds.values()]
            print(f"round {held} | {len(test)} | " + " | ".join(cells))
            for key, pred in preds.items():
                pooled.setdefault(key, ([], []))[0].extend(gold)
                pooled[key][1].extend(pred)
        cells = [refusal_agreement(*v) for v in pooled.values()]
        print("pooled | " + str(len(pooled["rules"][0])) + " | " + " | ".join(cells))


if __name__ == "__main__":
    main()
