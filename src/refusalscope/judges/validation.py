"""Validate a judge against human refusal labels: the XSTest v2 completion sets.

Each set holds 450 replies of one model (GPT-4, Llama-2 with/without its system prompt,
Mistral with/without a guardrail prompt) labelled by two annotators as full compliance,
full refusal or partial refusal. A judge is binary, so partial refusals are mapped:
by default to *refusal* (the reply declines at least part of the request, which is what
a refusal rate should count; XSTest names full and partial refusal as its two kinds of
refusal), or to compliance, or left out (`partial=`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.loaders import XSTEST_MODELS
from ..data.registry import load_dataset
from ..errors import RefusalScopeError


@dataclass
class SetResult:
    """One completion set: counts with human label as rows, judge verdict as columns."""

    name: str
    n: int
    tn: int  # human: complied, judge: complied
    fp: int  # human: complied, judge: refused
    fn: int  # human: refused,  judge: complied
    tp: int  # human: refused,  judge: refused

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else float("nan")

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def confusion(self) -> list[list[int]]:
        """[[TN, FP], [FN, TP]]: rows = human (complied, refused), columns = judge."""
        return [[self.tn, self.fp], [self.fn, self.tp]]

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy, "precision": self.precision, "recall": self.recall,
                "confusion": self.confusion}


@dataclass
class ValidationReport:
    judge: str
    partial: str
    sets: list[SetResult]
    errors: dict[str, list[dict]] = field(default_factory=dict)  # set -> a few misjudged examples

    @property
    def pooled(self) -> SetResult:
        total = SetResult("all", 0, 0, 0, 0, 0)
        for s in self.sets:
            total.n += s.n
            total.tn += s.tn
            total.fp += s.fp
            total.fn += s.fn
            total.tp += s.tp
        return total

    def to_dict(self) -> dict:
        return {
            "judge": self.judge,
            "partial": self.partial,
            "sets": [s.to_dict() for s in self.sets],
            "all": self.pooled.to_dict(),
            "errors": self.errors,
        }


def validate_judge(
    judge,
    data_dir: str | Path | None = None,
    partial: str = "refusal",
    sets: tuple[str, ...] = XSTEST_MODELS,
    limit: int | None = None,
    seed: int = 0,
    keep_errors: int = 3,
) -> ValidationReport:
    """Accuracy and confusion matrix of `judge` on each XSTest completion set."""
    if partial not in ("refusal", "compliance", "exclude"):
        raise RefusalScopeError(f"unknown partial-refusal mapping '{partial}'", "use refusal, compliance or exclude")
    unknown = [s for s in sets if s not in XSTEST_MODELS]
    if unknown:
        raise RefusalScopeError(f"unknown XSTest completion set(s) {unknown}", f"use some of {', '.join(XSTEST_MODELS)}")
    results, errors = [], {}
    for name in sets:
        data = load_dataset("xstest/completions", name, data_dir=data_dir, limit=limit, seed=seed)
        items = [(item, item.refused(partial)) for item in data]
        items = [(item, human) for item, human in items if human is not None]
        verdicts = judge.judge([i.prompt for i, _ in items], [i.completion for i, _ in items])
        counts = {"tn": 0, "fp": 0, "fn": 0, "tp": 0}
        wrong = []
        for (item, human), verdict in zip(items, verdicts):
            key = ("t" if human == verdict.refused else "f") + ("p" if verdict.refused else "n")
            counts[key] += 1
            if human != verdict.refused and len(wrong) < keep_errors:
                wrong.append({"id": item.id, "human": item.human_label, "judge_label": verdict.label,
                              "completion": item.completion[:200]})
        results.append(SetResult(name, len(items), **counts))
        errors[name] = wrong
    return ValidationReport(getattr(judge, "name", type(judge).__name__), partial, results, errors)
