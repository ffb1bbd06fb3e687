"""``make demo``: the whole study on the embedded model, end to end, in under 30 minutes on CPU.

Runs :func:`opsa_train.pipeline.run_pipeline` with ``opsa_train/configs/demo.yaml`` (package
data, so it works from any folder once installed): a context sweep (the built-in
``baselines`` and one refusal-script prefix first, then the ``paper_axes`` space; objective
``refusal_tfr``) with the offline judge, export, OPSA training with the dev-calibrated
recipe (``results/calibration/``), the off-policy baseline, evaluation of base / OPSA /
baseline / teacher with distillation efficiency, the token-level KL analysis,
and ``results/demo/report.md``. Working files go to ``runs/demo/``; a re-run skips the
stages whose inputs are unchanged (``runs/demo/state.json``), ``--force STAGE`` reruns one.

Example::

    python -m opsa_train.demo                          # the demo
    python -m opsa_train.demo --run demo2 --set train.steps=4 --set eval.limit=8
    python -m opsa_train.demo --config my.yaml --model Qwen/Qwen3-0.6B --engine vllm
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

_DEMO_CONFIG = resources.files("opsa_train") / "configs" / "demo.yaml"
# A package installed as files (the wheel, an editable checkout) gives a real path, which
# the pipeline reads like any user config; str() covers other resource readers.
DEFAULT_CONFIG = _DEMO_CONFIG if isinstance(_DEMO_CONFIG, Path) else Path(str(_DEMO_CONFIG))
"""The demo's pipeline config, shipped inside ``opsa_train`` as package data."""


def build_parser() -> argparse.ArgumentParser:
    from opsa_train.commands.pipeline import add_arguments

    p = argparse.ArgumentParser(
        prog="python -m opsa_train.demo", description=(__doc__ or "").splitlines()[0]
    )
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from flipsearch.errors import FlipsearchError
    from opsa_train.commands.pipeline import run
    from opsa_train.errors import OpsaTrainError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return run(args)
    except (OpsaTrainError, FlipsearchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
