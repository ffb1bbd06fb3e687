"""docs/GPU.md's recipe at a tiny size, on a CUDA GPU only (skipped elsewhere, with why).

The whole pipeline on the embedded model with the GPU settings of the recipe: vLLM for
the sweep and the evaluation at a set share of the GPU, OPSA with vLLM rollouts beside the
student and the frozen teacher. The offline judge keeps it runnable without gated
weights; the judge/generator share plan is covered on CPU by tests/test_gpu_shares.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_pipeline import TINY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU: runs docs/GPU.md's recipe (vLLM sweep and eval, OPSA with "
        "vLLM rollouts) at a tiny size",
    ),
]


GPU_OVERRIDES = [o for o in TINY if not o.startswith("engine=")] + [
    "engine=vllm",
    "gpu_memory_utilization=0.3",
    "train.engine=vllm",
    "train.gpu_memory_utilization=0.2",
    "train.dtype=bfloat16",
]
"""The tiny pipeline of tests/test_pipeline.py with docs/GPU.md's engine settings."""


def test_gpu_recipe_runs_every_stage_with_vllm(tmp_path):
    from opsa_train.demo import DEFAULT_CONFIG
    from opsa_train.pipeline import run_pipeline
    from opsa_train.pipeline_config import load_pipeline_config

    overrides = [
        *GPU_OVERRIDES,
        f"results_dir={tmp_path / 'results'}",
        f"runs_dir={tmp_path / 'runs'}",
        f"cache={tmp_path / 'cache.sqlite'}",
    ]
    cfg = load_pipeline_config(DEFAULT_CONFIG, overrides, run="gpu")
    report = run_pipeline(cfg)
    assert "## 3. Evaluation" in report.read_text()
    marker = tmp_path / "runs" / "gpu" / "opsa" / "final" / "opsa_final.json"
    assert json.loads(marker.read_text())["step"] == 2
    doc = json.loads((tmp_path / "results" / "gpu" / "eval" / "eval.json").read_text())
    assert {m["model"] for m in doc["metrics"]} == {"base", "opsa", "baseline", "teacher"}
