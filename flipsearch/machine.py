"""Facts about the machine a result was measured on: CPU model, ISA capability, bf16, threads.

CPUs of one cloud machine type differ (some AVX2 only, some AVX-512 with AVX512_BF16), and
speed figures, engine choice and dtype choice depend on which: every result file that
records a timing or a default names the machine with :func:`machine_facts`.

Example:
    >>> facts = machine_facts()
    >>> facts.capability in {"DEFAULT", "AVX2", "AVX512", "AVX512_BF16", "AMX"} or facts.cuda
    True
    >>> facts.describe()  # doctest: +SKIP
    'AMD EPYC (AVX2, no native bf16), 2 threads'
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "MachineFacts",
    "PeakRssSampler",
    "machine_facts",
    "peak_rss_mb",
    "tree_rss_mb",
]


@dataclass(frozen=True)
class MachineFacts:
    """What decides speed on this machine; JSON-serialisable via :meth:`to_dict`."""

    cpu_model: str
    """``model name`` from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    capability: str
    """``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``, ``AVX512``, ..."""
    cpu_flags: tuple[str, ...]
    """The ISA flags that matter here, of those the CPU reports (avx2, avx512f, ...)."""
    bf16_native: bool
    """The CPU multiplies bf16 natively (AVX512_BF16 or AMX-BF16)."""
    threads: int
    """torch's intra-op threads."""
    cores: int
    """``os.cpu_count()``."""
    cuda: str | None
    """The first CUDA device's name; None without one."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs, report footers and benchmark headers."""
        bf16 = "native bf16" if self.bf16_native else "no native bf16"
        line = f"{self.cpu_model} ({self.capability}, {bf16}), {self.threads} threads"
        return f"{line}; GPU {self.cuda}" if self.cuda else line


_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def _cpuinfo() -> tuple[str, set[str]]:
    # Linux: the first processor's model name and flags; elsewhere what platform says.
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown CPU", set()
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        if model and flags:
            break
    return model or platform.processor() or "unknown CPU", flags


@functools.lru_cache(maxsize=1)
def machine_facts() -> MachineFacts:
    """The facts of this machine (computed once per process)."""
    import torch

    model, flags = _cpuinfo()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return MachineFacts(
        cpu_model=model,
        capability=str(torch.backends.cpu.get_cpu_capability()),
        cpu_flags=tuple(f for f in _FLAGS_OF_INTEREST if f in flags),
        bf16_native=bool(flags & {"avx512_bf16", "amx_bf16"}),
        threads=torch.get_num_threads(),
        cores=os.cpu_count() or 1,
        cuda=cuda,
    )


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def tree_rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process and all its descendants, in MB (0 off Linux)."""
    todo, seen, total = [pid or os.getpid()], set(), 0
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_kib(p)
        todo += _children(p)
    return total / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, plus that of its waited-for children."""
    import resource

    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kib, child_kib) / 1024


class PeakRssSampler:
    """Samples the resident memory of this process tree in a thread; ``peak_mb`` after exit.

    ``ru_maxrss`` only grows over a process's life, so a stage of a long-lived process
    (the pipeline) needs its own sampler to report its own peak.

    Example:
        >>> with PeakRssSampler(interval=0.05) as rss:
        ...     block = bytearray(50 << 20)
        >>> rss.peak_mb > 50
        True
    """

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, tree_rss_mb())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_rss_mb())
