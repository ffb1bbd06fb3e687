"""Shared bits of the benchmark scripts: workloads, a timing helper, the machine line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# ~180 tokens with the SmolLM2 tokenizer: a realistic shared safety system message.
SYSTEM_MESSAGE = (
    "You are a careful, honest and helpful assistant. Before you answer, decide whether the "
    "request could cause serious harm: weapons capable of mass casualties, malware or "
    "intrusion into systems the user does not own, instructions for synthesising drugs, fraud "
    "and scams, harassment, hate, self-harm, or the exposure of private information. If it "
    "could, decline briefly and politely, say that you cannot help with that, and where it "
    "fits point to a safe alternative or to professional help. Do not lecture and do not "
    "repeat the harmful details. If the request is benign, even when it uses words that sound "
    "dangerous, such as killing a process, shooting a photo or blowing up a balloon, answer it "
    "fully, clearly and accurately. Keep answers short and well organised, use plain language, "
    "and never invent facts; if you do not know something, say so. Be respectful to everyone."
)

TOPICS = [
    "photosynthesis",
    "the French revolution",
    "black holes",
    "sourdough bread",
    "volcanoes",
    "the stock market",
    "honey bees",
    "the printing press",
    "rainbows",
    "chess openings",
    "the immune system",
    "jazz music",
    "plate tectonics",
    "solar panels",
    "the Roman empire",
    "coral reefs",
]
TASKS = [
    "Explain {} to a child.",
    "Write a short poem about {}.",
    "Give three facts about {}.",
    "Summarise the history of {} in a paragraph.",
]


def chat_prompts(n: int) -> list[str]:
    """``n`` distinct benign chat prompts."""
    out = [t.format(topic) for t in TASKS for topic in TOPICS]
    if n > len(out):
        raise ValueError(f"`n` must be <= {len(out)}, got {n!r}")
    return out[:n]


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def machine_header() -> dict[str, object]:
    """Print the machine facts line (CPU model, capability, bf16, threads) and return the
    facts for the files the benchmark writes: a figure only compares with figures of the
    same machine type."""
    from flipsearch.machine import machine_facts

    facts = machine_facts()
    print(f"machine: {facts.describe()}, {facts.cores} cores", flush=True)
    return facts.to_dict()
