"""The generation/verdict cache: hits, misses, interruption, no pickle."""

from __future__ import annotations

import sqlite3

import pytest

from flipsearch.cache import GenerationCache, cached_generate, cached_judge
from flipsearch.types import Generation, Sampling, Verdict, make_conversation

CONVS = [make_conversation(f"prompt {i}") for i in range(5)]
SAMPLING = Sampling(greedy=True, max_tokens=4)


def fake_generate(calls):
    def generate(convs):
        calls.append(len(convs))
        return [[Generation(c[-1]["content"][::-1], (1, 2), (-0.1, -0.2), "stop")] for c in convs]

    return generate


def test_rerun_is_served_from_the_cache(tmp_path):
    cache = GenerationCache(tmp_path / "c.sqlite")
    calls: list[int] = []
    kw = dict(model="m", engine="hf", sampling=SAMPLING, conversations=CONVS)
    first = cached_generate(cache, fake_generate(calls), **kw)
    second = cached_generate(GenerationCache(tmp_path / "c.sqlite"), fake_generate(calls), **kw)
    assert first == second
    assert calls == [5]
    assert cache.stats.generation_misses == 5


def test_key_depends_on_model_engine_sampling_and_conversation():
    k = GenerationCache.generation_key
    base = k("m", "hf", SAMPLING, CONVS[0])
    assert base != k("m2", "hf", SAMPLING, CONVS[0])
    assert base != k("m", "vllm", SAMPLING, CONVS[0])
    assert base != k("m", "hf", Sampling(greedy=True, max_tokens=5), CONVS[0])
    assert base != k("m", "hf", SAMPLING, CONVS[1])
    seeded = Sampling(temperature=1.0, seed=1)
    assert k("m", "hf", seeded, CONVS[0]) != k(
        "m", "hf", Sampling(temperature=1.0, seed=2), CONVS[0]
    )


def test_interrupted_run_keeps_finished_chunks(tmp_path):
    path = tmp_path / "c.sqlite"
    calls: list[int] = []
    inner = fake_generate(calls)

    def crashing(convs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return inner(convs)

    kw = dict(model="m", engine="hf", sampling=SAMPLING, conversations=CONVS, chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        cached_generate(GenerationCache(path), crashing, **kw)
    resumed = GenerationCache(path)
    cached_generate(resumed, fake_generate(calls), **kw)
    assert resumed.stats.generation_hits == 4  # two finished chunks survived
    assert resumed.stats.generation_misses == 1


def test_verdicts_are_cached_per_judge(tmp_path):
    cache = GenerationCache(tmp_path / "c.sqlite")
    seen: list[int] = []

    def judge(prompts, responses):
        seen.append(len(prompts))
        return [Verdict("refusal", False, r, "j@1") for r in responses]

    kw = dict(prompts=["p", "p", "q"], responses=["a", "a", "b"])
    cached_judge(cache, judge, judge_id="j@1", **kw)
    cached_judge(cache, judge, judge_id="j@1", **kw)
    cached_judge(cache, judge, judge_id="j@2", **kw)
    assert seen == [2, 2]  # duplicates judged once; another judge id misses


def test_payloads_are_json_not_pickle(tmp_path):
    cache = GenerationCache(tmp_path / "c.sqlite")
    cached_generate(
        cache, fake_generate([]), model="m", engine="hf", sampling=SAMPLING, conversations=CONVS[:1]
    )
    (payload,) = (
        sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT payload FROM generations").fetchone()
    )
    assert payload.startswith("[{") and '"token_ids"' in payload


def test_processes_opening_a_new_cache_together_all_succeed(tmp_path):
    # Switching a new database to WAL is not covered by SQLite's busy timeout; workers of
    # one sweep open the same fresh cache at the same moment.
    import subprocess
    import sys
    import time

    path = tmp_path / "cache.sqlite"
    start = time.time() + 2.0
    code = (
        "import sys, time\n"
        "from flipsearch.cache import GenerationCache\n"
        f"time.sleep(max(0.0, {start} - time.time()))\n"
        "for _ in range(20):\n"
        f"    GenerationCache({str(path)!r})._db.close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
