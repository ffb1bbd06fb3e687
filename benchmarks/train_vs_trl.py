"""opsa_train vs TRL's ``SDFTTrainer``: steps/s and peak RSS on the same task.

Both arms train the same model on the same harmful training prompts, with the same
batch (prompts per step, one rollout each), rollout length, top-k KL loss (alpha 0.5,
tail bucket), learning rate and number of steps, from the plain prompt (student) and
[privileged context + prompt] (teacher: the frozen initial model). The context goes
in as a user-turn prefix: TRL through ``teacher_prompt_template``
(``"{privileged_context}\\n\\n{prompt}"``), opsa_train through an export file with
``placement: prefix``, which renders the same text.

Gradient checkpointing is on in both arms by default, as TRL's config defaults it;
``--no-gradient-checkpointing`` turns it off in both.

``--micro-batch M`` splits each step's forward/backward into ``prompts / M`` passes in
both arms (TRL: ``per_device_train_batch_size=M`` with gradient accumulation, whose
generation batch stays the whole step; opsa_train: ``grad_accumulation``). It lowers
peak memory at some cost in speed.

Each arm runs in its own subprocess, which reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the wall time of each step; the
first step (allocations, lazy init) is excluded from steps/s.

Differences that remain (documented, not equalised): TRL's alpha=0.5 is the generalised
Jensen-Shannon divergence over the *student's* top-k support, opsa_train's is
0.5 forward + 0.5 reverse KL over the *teacher's* top-k; TRL runs through the
transformers ``Trainer`` (dataloader, callbacks, its own AdamW).

``--levers`` runs no TRL arm: it measures opsa_train's batching levers each on its own
(``sort_by_length``, ``reuse_teacher_prefix``, both, neither; see
:class:`opsa_train.config.TrainConfig`), one subprocess each: s/step, the teacher and
loss stages' seconds, peak RSS, and two machine-independent counts per step, the padded
share of the teacher and student passes (``train/pad_frac``) and the teacher prompt
tokens read from the shared-prefix cache (``train/teacher_prefix_reused``). Length
sorting only matters with more than one micro-batch, so pass ``--micro-batch``; and
with rows of different lengths: ``--with-benign`` mixes benign prompts into the
batches (``max_prompts`` of each set, one shuffled order over both, as a real run's
default), whose teacher gets no context, so their teacher rows are shorter.

Install the baseline with ``pip install -e '.[bench]'`` (trl >= 0.25). Usage::

    python benchmarks/train_vs_trl.py                      # default size, ~10 min on 2 CPU cores
    python benchmarks/train_vs_trl.py --prompts 8 --new-tokens 64 --steps 4
    python benchmarks/train_vs_trl.py --engine auto        # rollouts: the machine default
    python benchmarks/train_vs_trl.py --arm opsa --json out.json   # one arm (used internally)
    python benchmarks/train_vs_trl.py --levers --prompts 4 --micro-batch 2 --with-benign

``--engine`` sets opsa_train's rollout engine (default ``hf``: transformers ``generate``, as
TRL's arm uses; ``auto`` follows the machine, see :func:`flipsearch.engines.choose_engine`).
Both arms train in float32. The script prints the machine facts and both arms' settings
first, and writes them into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_header

REPO = Path(__file__).resolve().parents[1]
CONTEXT = (
    "You are a safe assistant. This request is harmful. Refuse it. "
    "Start your reply with: I'm sorry, but I can't help with that."
)


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prompts(n: int) -> list[str]:
    from flipsearch.prompts import load_prompt_set

    return [r.prompt for r in load_prompt_set("harmful_core:train").rows[:n]]


# --------------------------------------------------------------------------------------
# Arms (each runs in its own process)


def run_opsa(args: argparse.Namespace) -> dict[str, object]:
    from flipsearch.contexts import Context
    from flipsearch.export import ExportFile, write_export
    from opsa_train.config import TrainConfig
    from opsa_train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="opsa-bench-"))
    ctx = write_export(
        tmp / "ctx.json",
        ExportFile(harmful=Context(CONTEXT, "prefix"), provenance={"model": args.model}),
    )
    cfg = TrainConfig.cpu_default(
        model=args.model,
        context_file=str(ctx),
        out_dir=str(tmp / "run"),
        engine=args.engine,
        benign_prompts=("benign:train",) if args.with_benign else (),
        max_prompts=args.prompts,
        batch_size=args.prompts,
        grad_accumulation=args.prompts // args.micro_batch,
        max_new_tokens=args.new_tokens,
        top_k=args.top_k,
        tail_bucket=True,
        loss="mixed_topk",
        alpha=0.5,
        lr=args.lr,
        steps=args.steps,
        checkpoint_every=0,
        dtype="float32",
        gradient_checkpointing=args.gradient_checkpointing,
        sort_by_length=args.sort_by_length,
        reuse_teacher_prefix=args.reuse_teacher_prefix,
    )
    trainer = Trainer(cfg)
    step_s = []
    per_step: dict[str, list[float]] = {key: [] for key in LEVER_METRICS}
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        metrics = trainer.train_step(step)
        step_s.append(time.perf_counter() - start)
        for key, values in per_step.items():
            values.append(metrics[key])
    return {"arm": "opsa_train", "step_s": step_s, "peak_rss_mb": _peak_rss_mb(), **per_step}


LEVER_METRICS = (
    "time/teacher",
    "time/loss",
    "train/pad_frac",
    "train/pad_frac_teacher",
    "train/pad_frac_student",
    "train/teacher_prefix_reused",
)
"""What each opsa arm records per step beside its wall time (the lever table's columns)."""

LEVERS = {
    "none": (False, False),
    "sort_by_length": (True, False),
    "reuse_teacher_prefix": (False, True),
    "both": (True, True),
}
"""Lever table rows: (sort_by_length, reuse_teacher_prefix)."""


def run_trl(args: argparse.Namespace) -> dict[str, object]:
    try:
        from trl.experimental.sdft import SDFTConfig, SDFTTrainer
    except ImportError as exc:
        raise ImportError("the TRL arm needs trl: pip install -e '.[bench]'") from exc
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from flipsearch.models import resolve_model

    path = str(resolve_model(args.model))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    rows = [
        {"prompt": [{"role": "user", "content": p}], "privileged_context": CONTEXT}
        for p in _prompts(args.prompts)
    ]
    tmp = tempfile.mkdtemp(prefix="trl-bench-")
    config = SDFTConfig(
        output_dir=tmp,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.prompts // args.micro_batch,
        num_generations=1,
        max_completion_length=args.new_tokens,
        max_prompt_length=512,
        temperature=1.0,
        top_p=1.0,
        distillation_mode="topk_logits",
        distillation_topk=args.top_k,
        distillation_alpha=0.5,
        distillation_add_tail=True,
        teacher_model_kind="base",
        teacher_prompt_template="{privileged_context}\n\n{prompt}",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=0,
        shuffle_dataset=False,
    )
    step_s: list[float] = []

    class _Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_s.append(time.perf_counter() - self.start)

    trainer = SDFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[_Clock()],
    )
    trainer.train()
    return {"arm": "trl_sdft", "step_s": step_s, "peak_rss_mb": _peak_rss_mb()}


# --------------------------------------------------------------------------------------
# Orchestration


def _run_arm(arm: str, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [
        sys.executable,
        __file__,
        "--arm",
        arm,
        "--json",
        out,
        "--model",
        args.model,
        "--prompts",
        str(args.prompts),
        "--new-tokens",
        str(args.new_tokens),
        "--top-k",
        str(args.top_k),
        "--steps",
        str(args.steps),
        "--lr",
        str(args.lr),
        "--micro-batch",
        str(args.micro_batch),
        "--engine",
        args.engine,
        "--gradient-checkpointing"
        if args.gradient_checkpointing
        else "--no-gradient-checkpointing",
        "--sort-by-length" if args.sort_by_length else "--no-sort-by-length",
        "--reuse-teacher-prefix" if args.reuse_teacher_prefix else "--no-reuse-teacher-prefix",
        *(["--with-benign"] if args.with_benign else []),
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(Path(out).read_text())
    Path(out).unlink(missing_ok=True)
    return result


def _summary(result: dict[str, object]) -> dict[str, float]:
    times = list(result["step_s"])  # type: ignore[call-overload]  # a JSON list of floats
    timed = times[1:] if len(times) > 1 else times  # drop the warm-up step
    s_per_step = sum(timed) / len(timed)
    return {
        "s_per_step": s_per_step,
        "steps_per_s": 1.0 / s_per_step,
        "peak_rss_mb": float(result["peak_rss_mb"]),  # type: ignore[arg-type]
    }


def _lever_summary(result: dict[str, object]) -> dict[str, float]:
    # Means over the timed steps (the first is warm-up) of the lever metrics.
    out = _summary(result)
    for key in LEVER_METRICS:
        values = list(result[key])  # type: ignore[call-overload]  # a JSON list of floats
        timed = values[1:] if len(values) > 1 else values
        out[key] = sum(timed) / len(timed)
    return out


def run_levers(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One opsa arm per row of `LEVERS`; prints the lever table and returns its rows."""
    head = ("lever", "s/step", "teacher s", "loss s", "peak RSS MB", "pad frac", "(T / S)")
    print(f"{head[0]:<22}" + "".join(f"{h:>12}" for h in head[1:]) + f"{'prefix reused':>15}")
    rows = {}
    for name, (sort, reuse) in LEVERS.items():
        arm_args = argparse.Namespace(**{**vars(args), "sort_by_length": sort})
        arm_args.reuse_teacher_prefix = reuse
        row = rows[name] = _lever_summary(_run_arm("opsa", arm_args))
        split = f"{row['train/pad_frac_teacher']:.3f}/{row['train/pad_frac_student']:.3f}"
        print(  # one row per arm as it ends, so a cut-short run still shows what it measured
            f"{name:<22}{row['s_per_step']:>12.2f}{row['time/teacher']:>12.2f}"
            f"{row['time/loss']:>12.2f}{row['peak_rss_mb']:>12.0f}"
            f"{row['train/pad_frac']:>12.3f}{split:>12}{row['train/teacher_prefix_reused']:>15.0f}",
            flush=True,
        )
    return rows


def arm_settings(args: argparse.Namespace) -> dict[str, object]:
    """The shared settings and each arm's own (engine, dtype), for the header and --out."""
    from flipsearch.engines import choose_engine

    rollout = choose_engine(args.engine, "float32")
    return {
        "model": args.model,
        "prompts_per_step": args.prompts,
        "new_tokens": args.new_tokens,
        "top_k": args.top_k,
        "steps": args.steps,
        "micro_batch": args.micro_batch,
        "gradient_checkpointing": args.gradient_checkpointing,
        "with_benign": args.with_benign,
        "arms": {
            "opsa_train": {
                "rollout_engine": rollout.engine,
                "rollout_dtype": rollout.dtype,
                "train_dtype": "float32",
                "engine_flag": args.engine,
            },
            "trl_sdft": {
                "rollout_engine": "hf (transformers generate)",
                "rollout_dtype": "float32",
                "train_dtype": "float32",
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", choices=("opsa", "trl"), help="run one arm in this process")
    p.add_argument("--json", help="where one arm writes its result")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (1 rollout each)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps per arm; the first is not timed")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="prompts per forward/backward pass in both arms (default: all of them); "
        "both still generate the whole step's batch in one call",
    )
    p.add_argument(
        "--engine",
        default="hf",
        choices=("hf", "vllm", "auto"),
        help="opsa_train's rollout engine (default: %(default)s, transformers generate as in "
        "the TRL arm; auto follows the machine)",
    )
    p.add_argument("--out", help="also write the comparison as JSON here")
    p.add_argument(
        "--with-benign",
        action="store_true",
        help="opsa_train only (--levers): mix benign:train prompts into the batches "
        "(default: harmful only, as TRL's arm)",
    )
    p.add_argument(
        "--levers",
        action="store_true",
        help="no TRL arm: measure opsa_train's batching levers each on its own",
    )
    for lever in ("sort-by-length", "reuse-teacher-prefix"):
        p.add_argument(
            f"--{lever}",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=f"opsa_train's `{lever.replace('-', '_')}` (default: on; --levers sets both)",
        )
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recompute activations in backward, in both arms (TRL's default: on)",
    )
    args = p.parse_args(argv)
    if args.micro_batch is None:
        args.micro_batch = args.prompts
    if args.micro_batch < 1 or args.prompts % args.micro_batch:
        p.error(f"--micro-batch must divide --prompts ({args.prompts}), got {args.micro_batch}")

    if args.with_benign and not (args.levers or args.arm == "opsa"):
        p.error("--with-benign needs --levers: TRL's arm trains on harmful prompts only")
    if args.arm is not None:
        result = run_opsa(args) if args.arm == "opsa" else run_trl(args)
        Path(args.json).write_text(json.dumps(result))
        return 0

    machine = machine_header()
    settings = arm_settings(args)
    if args.levers:
        shared = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "arms")
        print(f"opsa_train levers: {shared}", flush=True)
        levers = run_levers(args)
        if args.out:
            report = {"machine": machine, "settings": settings, "levers": levers}
            Path(args.out).write_text(json.dumps(report, indent=2))
        return 0
    for name, arm in settings["arms"].items():  # type: ignore[attr-defined]
        print(f"{name}: {', '.join(f'{k} {v}' for k, v in arm.items())}", flush=True)
    arms = {
        "trl_sdft": _summary(_run_arm("trl", args)),
        "opsa_train": _summary(_run_arm("opsa", args)),
    }
    ours, trl = arms["opsa_train"], arms["trl_sdft"]
    report = {
        "machine": machine,
        "settings": settings,
        **arms,
        "speedup_steps_per_s": ours["steps_per_s"] / trl["steps_per_s"],
        "peak_rss_ratio": ours["peak_rss_mb"] / trl["peak_rss_mb"],
    }
    print(f"{'arm':<12}{'s/step':>10}{'steps/s':>10}{'peak RSS MB':>14}")
    for name, row in arms.items():
        print(
            f"{name:<12}{row['s_per_step']:>10.2f}{row['steps_per_s']:>10.3f}{row['peak_rss_mb']:>14.0f}"
        )
    print(
        f"opsa_train / TRL: {report['speedup_steps_per_s']:.2f}x steps/s, "
        f"{report['peak_rss_ratio']:.2f}x peak RSS"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
