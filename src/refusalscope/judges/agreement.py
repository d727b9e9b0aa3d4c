"""How far a judge agrees with people: accuracy, F1 and Cohen's kappa, each with a
bootstrap interval over replies, and the confusion matrix.

Accuracy alone flatters a judge on a set where one class dominates (a judge that calls
nothing a refusal scores 0.83 on Mistral-Instruct's XSTest replies); kappa is agreement
beyond what the two label rates give by chance, and F1 shows the refusal class itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..stats import Estimate


def accuracy(human: np.ndarray, judged: np.ndarray) -> float:
    return float((human == judged).mean()) if human.size else float("nan")


def f1(human: np.ndarray, judged: np.ndarray) -> float:
    """F1 of the refusal class; 1.0 when neither side finds any refusal (nothing to miss)."""
    tp = float((human & judged).sum())
    denominator = float(human.sum() + judged.sum())
    return 2 * tp / denominator if denominator else 1.0


def cohen_kappa(human: np.ndarray, judged: np.ndarray) -> float:
    """(observed − chance agreement) / (1 − chance); 1.0 when both sides give one label throughout and agree."""
    if not human.size:
        return float("nan")
    observed = float((human == judged).mean())
    p_h, p_j = float(human.mean()), float(judged.mean())
    chance = p_h * p_j + (1 - p_h) * (1 - p_j)
    if chance >= 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - chance) / (1 - chance)


METRICS = {"accuracy": accuracy, "f1": f1, "kappa": cohen_kappa}


def confusion_counts(human: Sequence[bool] | np.ndarray, judged: Sequence[bool] | np.ndarray) -> dict[str, int]:
    """The four cells of a judge against human labels, keyed tn/fp/fn/tp (refusal = positive)."""
    h = np.asarray(human, dtype=bool)
    j = np.asarray(judged, dtype=bool)
    return {
        "tn": int((~h & ~j).sum()),
        "fp": int((~h & j).sum()),
        "fn": int((h & ~j).sum()),
        "tp": int((h & j).sum()),
    }


@dataclass(frozen=True)
class Confusion:
    """A judge against human labels on one set of replies, as counts (refusal = positive).
    The base of `judge-validate`'s per-set rows and of `Agreement`, so both write the same
    cells under the same names."""

    name: str
    n: int
    tn: int  # human: complied, judge: complied
    fp: int  # human: complied, judge: refused
    fn: int  # human: refused,  judge: complied
    tp: int  # human: refused,  judge: refused

    @property
    def confusion(self) -> list[list[int]]:
        """[[TN, FP], [FN, TP]]: rows = human (complied, refused), columns = judge."""
        return [[self.tn, self.fp], [self.fn, self.tp]]

    def counts_dict(self) -> dict:
        return {
            "name": self.name,
            "n": self.n,
            "tn": self.tn,
            "fp": self.fp,
            "fn": self.fn,
            "tp": self.tp,
            "confusion": self.confusion,
        }


@dataclass(frozen=True)
class Agreement(Confusion):
    """The counts plus accuracy, F1 and kappa, each with its bootstrap interval."""

    accuracy: Estimate
    f1: Estimate
    kappa: Estimate

    def to_dict(self) -> dict:
        return {
            **self.counts_dict(),
            "accuracy": self.accuracy.to_dict(),
            "f1": self.f1.to_dict(),
            "kappa": self.kappa.to_dict(),
        }


def agreement(
    name: str,
    human: Sequence[bool],
    judged: Sequence[bool],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Agreement:
    """Counts and the three metrics with percentile-bootstrap intervals (replies resampled
    with replacement, seeded)."""
    h = np.asarray(human, dtype=bool)
    j = np.asarray(judged, dtype=bool)
    n = int(h.size)
    counts = confusion_counts(h, j)
    estimates = {}
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((0, 0), dtype=int)
    alpha = (1 - confidence) / 2
    for key, fn in METRICS.items():
        if not n:
            estimates[key] = Estimate(float("nan"), float("nan"), float("nan"), 0)
            continue
        values = np.array([fn(h[row], j[row]) for row in samples])
        estimates[key] = Estimate(fn(h, j), float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)), n)
    return Agreement(name, n, **counts, accuracy=estimates["accuracy"], f1=estimates["f1"], kappa=estimates["kappa"])
