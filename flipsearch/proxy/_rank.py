"""Rank agreement between a proxy and a measured score, with a bootstrap interval."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from flipsearch.errors import ConfigError


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (nan where either is constant).

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 40, 30])
        0.8
    """
    if len(x) != len(y):
        raise ConfigError(f"`x` and `y` must have the same length, got {len(x)} and {len(y)}")
    rx, ry = ranks(x), ranks(y)
    n = len(rx)
    if n < 2:
        return math.nan
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return math.nan
    return round(sxy / math.sqrt(sxx * syy), 12)


@dataclass(frozen=True)
class RankAgreement:
    """Spearman's rho with a percentile bootstrap 95% interval over the paired items."""

    rho: float
    ci_low: float
    ci_high: float
    n: int

    def __str__(self) -> str:
        return f"{self.rho:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] n={self.n}"


def rank_agreement(
    x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> RankAgreement:
    """Spearman's rho of ``x`` and ``y`` and a bootstrap interval (pairs resampled;
    resamples where either side is constant are skipped)."""
    rho = spearman(x, y)
    rng = random.Random(seed)
    n = len(x)
    draws = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        r = spearman([x[i] for i in idx], [y[i] for i in idx])
        if not math.isnan(r):
            draws.append(r)
    if not draws:
        return RankAgreement(rho, math.nan, math.nan, n)
    draws.sort()
    lo = draws[int(0.025 * (len(draws) - 1))]
    hi = draws[math.ceil(0.975 * (len(draws) - 1))]
    return RankAgreement(rho, lo, hi, n)
