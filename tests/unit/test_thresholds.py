"""The one threshold search (src/refusalscope/thresholds.py) against the three it replaced.

The references below are the searches as they were written in pipeline.harm_gate,
evaluation.tasks.calibrate_first_token_threshold and probes.linear.best_threshold before
they shared one function (issue #14). The first-token and probe searches must agree
exactly, on continuous and on heavily tied scores. The harm gate compared float32 means,
so between cuts whose balanced accuracies are *exactly* equal its pick depended on
rounding; the shared search takes the lowest of such cuts. That is the only difference
allowed, and the test checks it is one: same exact balanced accuracy, lowest cut. (The old
harm gate also compared its float64 cut with float32 scores in float32, which moved a cut
between two *adjacent* float32 values onto one of them; its scores are drawn here from a grid
whose midpoints float32 holds exactly, where that cannot happen.)
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refusalscope.errors import RefusalScopeError
from refusalscope.thresholds import best_threshold, candidate_cuts


def old_harm_gate(harmful: list[float], harmless: list[float]) -> tuple[float, float]:
    proj = {"harmful": torch.tensor(harmful), "harmless": torch.tensor(harmless)}
    values = sorted(proj["harmful"].tolist() + proj["harmless"].tolist())
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:])] or [values[0]]

    def accuracy(t):
        return (float((proj["harmful"] > t).float().mean()) + float((proj["harmless"] <= t).float().mean())) / 2

    threshold = max(cuts, key=accuracy)
    return float(threshold), accuracy(threshold)


def old_first_token(scores: list[float], labels: list[bool]) -> tuple[float, float]:
    candidates = sorted(set(scores))
    cuts = [candidates[0] - 1.0] + [(a + b) / 2 for a, b in zip(candidates, candidates[1:])] + [candidates[-1] + 1.0]
    best = max(cuts, key=lambda t: (sum((s > t) == y for s, y in zip(scores, labels)), -abs(t)))
    agreement = sum((s > best) == y for s, y in zip(scores, labels)) / len(labels)
    return float(best), float(agreement)


def old_probe(scores: list[float], y: list[bool]) -> float:
    s, y = np.asarray(scores, float), np.asarray(y).astype(bool)
    order = np.unique(s)
    cuts = np.concatenate([[order[0] - 1.0], (order[1:] + order[:-1]) / 2, [order[-1] + 1.0]])
    best, best_cut = -1.0, 0.0
    for cut in cuts:
        pred = s > cut
        bacc = 0.5 * (pred[y].mean() + (~pred[~y]).mean())
        if bacc > best + 1e-12:
            best, best_cut = bacc, float(cut)
    return best_cut


def exact_balanced(harmful, harmless, t) -> Fraction:
    return Fraction(sum(x > t for x in harmful), len(harmful)) + Fraction(sum(x <= t for x in harmless), len(harmless))


# scores as float32 values (what the model produces), from a coarse grid (many ties) or continuous
coarse = st.integers(-6, 6).map(lambda i: i / 2)
fine = st.floats(-20, 20, allow_nan=False, width=32)
score_lists = st.one_of(st.lists(coarse, min_size=1, max_size=40), st.lists(fine, min_size=1, max_size=40))


@settings(max_examples=300, deadline=None)
@given(score_lists, st.data())
def test_first_token_calibration_is_unchanged(scores, data):
    labels = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    found = best_threshold(scores, labels, objective="accuracy", distinct=True, outside=True, prefer="zero")
    assert (found.threshold, found.score) == old_first_token(scores, labels)


@settings(max_examples=300, deadline=None)
@given(score_lists, st.data())
def test_probe_threshold_is_unchanged(scores, data):
    labels = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    if all(labels) or not any(labels):
        labels[0] = not labels[0]
        if len(labels) == 1:
            return
    found = best_threshold(scores, labels, objective="balanced_accuracy", distinct=True, outside=True)
    assert found.threshold == old_probe(scores, labels)


grid = st.integers(-20000, 20000).map(lambda i: i / 1024)
grid_lists = st.one_of(st.lists(coarse, min_size=2, max_size=40), st.lists(grid, min_size=2, max_size=40))


@settings(max_examples=300, deadline=None)
@given(grid_lists, st.data())
def test_harm_gate_is_unchanged_up_to_exact_ties(scores, data):
    n_harmful = data.draw(st.integers(1, len(scores) - 1))
    harmful, harmless = scores[:n_harmful], scores[n_harmful:]
    found = best_threshold(harmful + harmless, [True] * len(harmful) + [False] * len(harmless))
    old_threshold, old_accuracy = old_harm_gate(harmful, harmless)
    assert found.score == pytest.approx(old_accuracy, abs=1e-6)  # float32 means then, float64 now
    if found.threshold != old_threshold:
        # only a rounding-broken tie: the same exact balanced accuracy, and the new pick is the lowest
        assert exact_balanced(harmful, harmless, found.threshold) == exact_balanced(harmful, harmless, old_threshold)
        assert found.threshold < old_threshold


def test_exact_ties_go_to_the_lowest_cut_or_the_one_nearest_zero():
    # harmful {1, 3}, harmless {0, 2}: cuts 0.5 and 2.5 reach balanced accuracy 0.75, 1.5 only 0.5
    scores, labels = [1.0, 3.0, 0.0, 2.0], [True, True, False, False]
    assert best_threshold(scores, labels) == best_threshold(scores, labels, prefer="lowest")
    assert best_threshold(scores, labels).threshold == 0.5
    assert best_threshold(scores, labels).score == 0.75
    assert best_threshold([s - 2.0 for s in scores], labels, prefer="zero").threshold == 0.5  # cuts -1.5 and 0.5
    shifted = [s - 1.5 for s in scores]  # tied cuts -1.0 and 1.0, equally near 0: the lower wins
    assert best_threshold(shifted, labels, prefer="zero").threshold == -1.0


def test_separable_scores_are_split_between_the_groups():
    found = best_threshold([5.0, 6.0, 7.0, -1.0, 0.0], [True, True, True, False, False])
    assert found.threshold == 2.5 and found.score == 1.0
    found = best_threshold([5.0, 6.0, -1.0], [True, True, False], objective="accuracy", distinct=True, outside=True)
    assert found.threshold == 2.0 and found.score == 1.0


def test_candidate_cuts():
    assert candidate_cuts([2.0, 1.0, 1.0]) == [1.0, 1.5]
    assert candidate_cuts([2.0, 1.0, 1.0], distinct=True) == [1.5]
    assert candidate_cuts([2.0, 1.0, 1.0], distinct=True, outside=True) == [0.0, 1.5, 3.0]
    assert candidate_cuts([4.0]) == [4.0]


def test_bad_input_is_one_clear_error():
    with pytest.raises(RefusalScopeError, match="no scores"):
        best_threshold([], [])
    with pytest.raises(RefusalScopeError, match="2 scores for 1 labels"):
        best_threshold([1.0, 2.0], [True])
    with pytest.raises(RefusalScopeError, match="objective"):
        best_threshold([1.0], [True], objective="f1")
