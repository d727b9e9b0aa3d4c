"""Confidence intervals: every rate refusalscope reports carries one, and its sample size.

With tens of prompts per cell (all a CPU can afford), a refusal rate of 0.40 means
anything from ~0.25 to ~0.57; a table without intervals invites over-reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int
    method: str = "bootstrap"

    def to_dict(self) -> dict:
        return asdict(self)

    def negated(self) -> Estimate:
        """The estimate of −value: the bounds swap sides (−high is the new low).

        For turning a difference the other way round (a gain into a cost, gated − ungated
        into what the gate saves) without each caller remembering to swap the bounds."""
        return Estimate(-self.value, -self.high, -self.low, self.n, self.method)

    def complement(self) -> Estimate:
        """The estimate of 1 − value for a proportion (e.g. the share a gate leaves alone
        from its fire rate): the bounds swap sides as in `negated`."""
        return Estimate(1 - self.value, 1 - self.high, 1 - self.low, self.n, self.method)

    def __str__(self) -> str:
        if self.n == 0 or math.isnan(self.value):
            return "n/a"
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


def bootstrap(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap interval of `statistic` over `values` (seeded, so reproducible)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    point = float(statistic(data))
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, data.size, size=(n_boot, data.size))
    stats = np.array([statistic(data[row]) for row in samples]) if statistic is not np.mean else data[samples].mean(1)
    alpha = (1 - confidence) / 2
    return Estimate(point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)), int(data.size))


def rate(flags: Sequence[bool] | np.ndarray, seed: int = 0) -> Estimate:
    """A proportion with its bootstrap interval."""
    return bootstrap([float(f) for f in flags], seed=seed)


def difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """mean(a) − mean(b) for independent samples, with a bootstrap interval (e.g. Δs)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    by = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(1)
    diffs = bx - by
    alpha = (1 - confidence) / 2
    return Estimate(
        float(x.mean() - y.mean()),
        float(np.quantile(diffs, alpha)),
        float(np.quantile(diffs, 1 - alpha)),
        int(min(x.size, y.size)),
    )
