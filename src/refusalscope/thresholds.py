"""One threshold search: the cut on a score that best separates two labelled groups.

Three places calibrate a threshold on labelled scores: the harm gate (refusal-direction
projections of harmful vs harmless prompts, `pipeline.harm_gate`), the first-token refusal
judge (log-odds vs a reply judge's verdicts, `evaluation.tasks.calibrate_first_token_threshold`)
and a linear probe's logit (`probes.linear.best_threshold`). They share this search, so a
fix or a speed-up lands in all of them.

A prompt is predicted positive when its score is *strictly above* the threshold. Candidate
cuts lie midway between neighbouring sorted scores, so no calibration prompt sits on the
cut. The settings that differ between callers are explicit, and each keeps the thresholds
that caller has always produced (cached gates and calibrations stay valid):

- `objective`: "balanced_accuracy" (mean of the two recalls; groups of different sizes) or
  "accuracy" (the share of prompts on which the prediction agrees with the label).
- `distinct`: take midpoints between distinct scores only (repeated scores add no cut), or
  between every neighbouring pair (a repeated score is then a cut of its own).
- `outside`: also try a cut below the lowest score (everything positive) and above the
  highest (nothing positive), one unit beyond them.
- `prefer`: among cuts with the best objective, the lowest ("lowest"), or the one nearest
  to 0 ("zero"; for log-odds, 0 is the uncalibrated P = 0.5 rule).

Balanced accuracy is compared as `(tp/n_pos + tn/n_neg)/2` in float64 with a 1e-12
tolerance, so cuts whose recalls sum to the same value tie whatever the rounding.
Every cut is scored from running counts over the sorted scores: O(n log n), not O(n²).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import RefusalScopeError

Objective = Literal["balanced_accuracy", "accuracy"]
Preference = Literal["lowest", "zero"]
TOLERANCE = 1e-12


@dataclass(frozen=True)
class ThresholdFit:
    """The chosen cut and its objective on the calibration scores."""

    threshold: float
    score: float


def candidate_cuts(scores: Sequence[float], *, distinct: bool = False, outside: bool = False) -> list[float]:
    """Midpoints between neighbouring sorted scores (see the module docstring); a single
    score with neither option is its own cut, so there is always at least one."""
    values = sorted(set(scores)) if distinct else sorted(scores)
    if not values:
        raise RefusalScopeError("no scores to choose a threshold from", "calibrate on at least one labelled prompt")
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:])]
    if outside:
        return [values[0] - 1.0, *cuts, values[-1] + 1.0]
    return cuts or [values[0]]


def best_threshold(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    objective: Objective = "balanced_accuracy",
    distinct: bool = False,
    outside: bool = False,
    prefer: Preference = "lowest",
) -> ThresholdFit:
    """The cut on `scores` (positive when above it) that best predicts `labels`."""
    scores = [float(s) for s in scores]
    labels = [bool(y) for y in labels]
    if len(scores) != len(labels):
        raise RefusalScopeError(f"{len(scores)} scores for {len(labels)} labels", "give one label per score")
    if objective not in ("balanced_accuracy", "accuracy"):
        raise RefusalScopeError(f"unknown threshold objective '{objective}'", "use 'balanced_accuracy' or 'accuracy'")
    if prefer not in ("lowest", "zero"):
        raise RefusalScopeError(f"unknown threshold preference '{prefer}'", "use 'lowest' or 'zero'")
    positive = sorted(s for s, y in zip(scores, labels) if y)
    negative = sorted(s for s, y in zip(scores, labels) if not y)
    n_pos, n_neg = len(positive), len(negative)

    def objective_at(cut: float) -> float:
        tp = n_pos - bisect.bisect_right(positive, cut)  # positives strictly above the cut
        tn = bisect.bisect_right(negative, cut)  # negatives at or below it
        if objective == "accuracy":
            return float(tp + tn) / (n_pos + n_neg)
        return ((tp / n_pos if n_pos else 0.0) + (tn / n_neg if n_neg else 0.0)) / 2

    best: ThresholdFit | None = None
    for cut in candidate_cuts(scores, distinct=distinct, outside=outside):
        value = objective_at(cut)
        if best is None or value > best.score + TOLERANCE:
            best = ThresholdFit(float(cut), value)
        elif prefer == "zero" and value >= best.score - TOLERANCE and abs(cut) < abs(best.threshold):
            best = ThresholdFit(float(cut), max(value, best.score))
    assert best is not None  # candidate_cuts never returns an empty list
    return best
