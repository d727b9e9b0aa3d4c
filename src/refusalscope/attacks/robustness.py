"""Robustness numbers with their intervals: Wilson intervals for attack success rates.

Attack tables are small (20 behaviours, 14 templates) and their rates often sit at 0 or 1,
where a bootstrap interval collapses to a point; the Wilson score interval stays honest
there (0 of 20 broken is [0.00, 0.16], not [0, 0]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..stats import Estimate


def wilson(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """successes / n with its Wilson score interval (method 'wilson')."""
    if n <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, "wilson")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(p, low, high, n, "wilson")


def rate_of(flags: Sequence[bool], confidence: float = 0.95) -> Estimate:
    flags = [bool(f) for f in flags]
    return wilson(sum(flags), len(flags), confidence)


def gcg_robustness(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """GCG robustness score (O'Brien et al.): the share of behaviours the attack did not
    break within its budget, with a Wilson interval, plus the steps-to-break of the rest."""
    broken = [bool(r["broken"]) for r in results]
    steps = sorted(int(r["steps_to_break"]) for r in results if r.get("broken"))
    score = wilson(len(broken) - sum(broken), len(broken))
    return {
        "robustness": score.to_dict(),
        "n": len(broken),
        "broken": sum(broken),
        "steps_to_break": steps,
        "median_steps_to_break": steps[len(steps) // 2] if steps else None,
    }


def format_estimate(e: Estimate | dict[str, Any]) -> str:
    d = e.to_dict() if isinstance(e, Estimate) else e
    if not d.get("n") or d["value"] != d["value"]:
        return "n/a"
    return f"{d['value']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"
