"""What a study records about itself: its config (``config.json``) and its provenance.

A resumed study must keep the :data:`~flipsearch.sweep.IDENTITY_FIELDS` recorded in
``<results_dir>/<study>/config.json`` (and its storage), and the resolved engine and dtype
recorded in ``engine.json`` (with the machine facts they were chosen on: ``auto`` resolves
differently on another machine): :func:`check_config` compares, then writes the files.
Both records hold paths portably, no tokens and the storage password masked
(:func:`flipsearch.paths.recordable`, :func:`flipsearch.storage.mask_storage`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from flipsearch import __version__
from flipsearch.engines import EngineChoice, engine_choice_record
from flipsearch.errors import ConfigError
from flipsearch.models import model_identity
from flipsearch.paths import recordable
from flipsearch.storage import mask_storage, storage_identity
from flipsearch.sweep._config import IDENTITY_FIELDS, SweepConfig
from flipsearch.sweep._workers import write_json
from flipsearch.trials import CONFIG_FILE
from flipsearch.version import version_info

if TYPE_CHECKING:
    from flipsearch.flip import FlipScorer
    from flipsearch.prompts import PromptSet
    from flipsearch.space import SearchSpace

__all__ = [
    "ENGINE_FILE",
    "check_config",
    "check_engine_choice",
    "check_resolved_config",
    "provenance",
    "recorded_config",
]

ENGINE_FILE = "engine.json"
"""The study's resolved engine and dtype, with the machine facts (``EngineChoice.to_dict``)."""


def check_config(config: SweepConfig, engine: object | None = None) -> None:
    """Write ``config.json`` and ``engine.json``; if the study has them, first check that
    ``config`` may resume it.

    A resumed study must keep the :data:`IDENTITY_FIELDS`, its storage, and the resolved
    engine and dtype: ``config.engine.choose()``, or the decision a given, already built
    ``engine`` was built from (``engine.choice``; an engine without one, such as a test
    fake, is not checked). The rest may change between runs. Call it under the study's lock.

    Raises:
        ConfigError: an identity field, the storage, the engine or the dtype differs from
            the recorded one.
    """
    _check_identity(config)
    choice = config.engine.choose() if engine is None else getattr(engine, "choice", None)
    if isinstance(choice, EngineChoice):
        check_engine_choice(config, choice)


def check_engine_choice(config: SweepConfig, choice: EngineChoice) -> None:
    """Refuse to resume a study on another resolved engine or dtype; record the first.

    Raises:
        ConfigError: ``engine.json`` records another engine or dtype than ``choice``.
    """
    path = config.folder / ENGINE_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for name, new in (("engine", choice.engine), ("dtype", choice.dtype)):
            if old.get(name) != new:
                machine = old.get("machine") or {}
                raise ConfigError(
                    f"resolved `{name}` must match the study's {path} ({old.get(name)!r}, "
                    f"chosen on {machine.get('cpu_model')} {machine.get('capability')}) to "
                    f"resume {config.study!r}, got {new!r} ({choice.reason}; on "
                    f"{choice.facts.cpu_model} {choice.facts.capability}): one study keeps "
                    f"one engine and dtype. Set --engine/--dtype to {old.get('engine')!r}/"
                    f"{old.get('dtype')!r}, or use a new --study."
                )
        return
    write_json(path, recordable(choice.to_dict()))


def _check_identity(config: SweepConfig) -> None:
    # config.json: the identity fields and the storage must match the recorded ones.
    path = config.folder / CONFIG_FILE
    record = config
    if path.is_file():
        old = SweepConfig.from_dict(json.loads(path.read_text()))
        old_id, new_id = old.identity(), config.identity()
        for name in IDENTITY_FIELDS:
            if name == "max_tokens" and None in (old_id[name], new_id[name]):
                continue  # model-aware, not resolved yet: compared once the model has loaded
            # config.json records paths portably (recordable): compare in that form.
            if recordable(old_id[name]) != recordable(new_id[name]):
                hint = _RESUME_HINTS.get(name, "").format(old=old_id[name])
                raise ConfigError(
                    f"`{name}` must match the study's {path} ({old_id[name]!r}) to resume "
                    f"{config.study!r}, got {new_id[name]!r}: scores on other settings are "
                    f"not comparable. {hint}Use a new --study."
                )
        # The file holds the masked URL: compare the URLs without passwords.
        if storage_identity(old.storage) != storage_identity(config.storage):
            raise ConfigError(
                f"`storage` must match the study's {path} ({mask_storage(old.storage)!r}), "
                f"got {mask_storage(config.storage)!r}: the trials live there"
            )
        if config.max_tokens is None:  # keep the recorded window until this one is resolved
            record = replace(config, max_tokens=old.max_tokens)
    write_json(path, recorded_config(record))


# What to pass to resume anyway, for the identity fields a flag sets.
_RESUME_HINTS = {
    "max_tokens": "An unset --max-tokens is model-aware (64, or 1024 for a chat template "
    "that thinks): pass --max-tokens {old} to resume, or ",
    "judge_reads": "Pass --judge-trace to resume a study whose judge read the trace, "
    "leave it out for one that read the answer, or ",
}


def check_resolved_config(config: SweepConfig) -> None:
    """Compare and record ``config`` again once its model-aware ``max_tokens`` is resolved
    (:func:`flipsearch.flip.default_max_tokens` on the loaded model's tokenizer), so
    ``config.json`` holds the window used and a resumed study compares it. Call it under
    the study's lock.

    Raises:
        ConfigError: the study recorded another ``max_tokens``.
    """
    if config.max_tokens is None:
        raise ConfigError("`max_tokens` must be resolved before check_resolved_config, got None")
    _check_identity(config)


def recorded_config(config: SweepConfig) -> dict[str, object]:
    """``config`` as ``config.json`` and the study's ``sweep_config`` hold it: paths
    portable, no tokens, the storage URL's password masked (``open_study`` reconnects
    with PGPASSWORD or .pgpass)."""
    doc = config.to_dict(masked=True)
    return {**recordable(doc), "storage": doc["storage"]}


def provenance(
    config: SweepConfig, scorer: FlipScorer, space: SearchSpace, sets: Sequence[PromptSet]
) -> dict[str, object]:
    """What the study's scores were measured with, for its export files: the model by
    identity, engine, what ``system`` placement does with its chat template, judge,
    prompt sets, scoring, space and code version (paths portable, no tokens)."""
    return recordable(
        {
            **model_identity(config.engine.model, scorer.engine.model_path),
            "engine": scorer.engine.name,
            "engine_choice": engine_choice_record(scorer.engine),
            # What `system` placement does with the chat template (folded, default kept...).
            **scorer.template_record(),
            **scorer.thinking_record(),  # enable_thinking, what the judge read
            "judge": scorer.judge_id,
            "prompt_sets": [ps.describe() for ps in sets],
            "max_tokens": scorer.settings.max_tokens,
            "scoring": scorer.settings.to_dict(),
            "space": {"name": space.name, "source": space.source, "digest": space.digest()},
            "target": config.target,
            "objective": config.objective,
            "objective_metric": config.objective_metric,
            "max_over_refusal": config.max_over_refusal,
            "max_helpfulness_loss": config.max_helpfulness_loss,
            "package_version": __version__,
            "code": version_info(),  # version + git commit of the code (None if installed)
        }
    )
