"""`Estimate.negated()` and `Estimate.complement()`: the point moves and the bounds swap
sides, n and the interval method are kept (gate comparisons and costs rely on both)."""

from __future__ import annotations

import math

from refusalscope.stats import Estimate, difference


def test_negated_swaps_the_bounds():
    e = Estimate(0.25, 0.1, 0.4, 30, "bootstrap")
    assert e.negated() == Estimate(-0.25, -0.4, -0.1, 30, "bootstrap")
    assert e.negated().negated() == e


def test_negated_difference_is_the_difference_the_other_way_round():
    a, b = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0]
    flipped = difference(a, b).negated()
    assert flipped.low <= flipped.value <= flipped.high
    assert flipped.value == -difference(a, b).value and flipped.value < 0


def test_complement_of_a_proportion():
    e = Estimate(0.25, 0.125, 0.5, 8, "wilson")
    assert e.complement() == Estimate(0.75, 0.5, 0.875, 8, "wilson")
    assert e.complement().low <= e.complement().value <= e.complement().high


def test_empty_estimates_stay_empty():
    for e in (
        Estimate(math.nan, math.nan, math.nan, 0).negated(),
        Estimate(math.nan, math.nan, math.nan, 0).complement(),
    ):
        assert e.n == 0 and math.isnan(e.value) and math.isnan(e.low) and math.isnan(e.high)
