"""Validate a judge against human refusal labels: the XSTest v2 completion sets.

Each set holds 450 replies of one model (GPT-4, Llama-2 with/without its system prompt,
Mistral with/without a guardrail prompt) labelled by two annotators as full compliance,
full refusal or partial refusal. A judge is binary, so partial refusals are mapped:
by default to *refusal* (the reply declines at least part of the request, which is what
a refusal rate should count; XSTest names full and partial refusal as its two kinds of
refusal), or to compliance, or left out (`partial=`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.loaders import XSTEST_MODELS
from ..data.registry import load_dataset
from ..errors import RefusalScopeError
from .agreement import Confusion, agreement, confusion_counts


@dataclass(frozen=True)
class SetResult(Confusion):
    """One completion set: counts with human label as rows, judge verdict as columns."""

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else float("nan")

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    def to_dict(self) -> dict:
        return {
            **self.counts_dict(),
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
        }


@dataclass
class ValidationReport:
    judge: str
    partial: str
    sets: list[SetResult]
    errors: dict[str, list[dict]] = field(default_factory=dict)  # set -> a few misjudged examples

    @property
    def pooled(self) -> SetResult:
        cells = ("n", "tn", "fp", "fn", "tp")
        return SetResult("all", *(sum(getattr(s, cell) for s in self.sets) for cell in cells))

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
        raise RefusalScopeError(
            f"unknown XSTest completion set(s) {unknown}", f"use some of {', '.join(XSTEST_MODELS)}"
        )
    results, errors = [], {}
    for name in sets:
        data = load_dataset("xstest/completions", name, data_dir=data_dir, limit=limit, seed=seed)
        items = [(item, item.refused(partial)) for item in data]
        items = [(item, human) for item, human in items if human is not None]
        verdicts = judge.judge([i.prompt for i, _ in items], [i.completion for i, _ in items])
        wrong: list[dict[str, Any]] = []
        for (item, human), verdict in zip(items, verdicts):
            if human != verdict.refused and len(wrong) < keep_errors:
                wrong.append(
                    {
                        "id": item.id,
                        "human": item.human_label,
                        "judge_label": verdict.label,
                        "completion": item.completion[:200],
                    }
                )
        counts = confusion_counts([human for _, human in items], [verdict.refused for verdict in verdicts])
        results.append(SetResult(name, len(items), **counts))
        errors[name] = wrong
    return ValidationReport(getattr(judge, "name", type(judge).__name__), partial, results, errors)


# ----------------------------------------------------------------------------- agreement with CIs

LABEL_WORDS = {
    "refusal": "refusal",
    "refused": "refusal",
    "refuse": "refusal",
    "full_refusal": "refusal",
    "2_full_refusal": "refusal",
    "1": "refusal",
    "true": "refusal",
    "yes": "refusal",
    "compliance": "compliance",
    "complied": "compliance",
    "comply": "compliance",
    "full_compliance": "compliance",
    "1_full_compliance": "compliance",
    "0": "compliance",
    "false": "compliance",
    "no": "compliance",
    "partial": "partial",
    "partial_refusal": "partial",
    "3_partial_refusal": "partial",
}


@dataclass
class LabelledSet:
    """Replies with human labels: 'refusal', 'compliance' or 'partial' (a partial refusal)."""

    name: str
    prompts: list[str]
    replies: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.replies)


def xstest_sets(
    data_dir: str | Path | None = None, sets: tuple[str, ...] = XSTEST_MODELS, limit: int | None = None, seed: int = 0
) -> list[LabelledSet]:
    """The XSTest completion sets as `LabelledSet`s (one per model)."""
    unknown = [s for s in sets if s not in XSTEST_MODELS]
    if unknown:
        raise RefusalScopeError(
            f"unknown XSTest completion set(s) {unknown}", f"use some of {', '.join(XSTEST_MODELS)}"
        )
    words = {"full_refusal": "refusal", "full_compliance": "compliance", "partial_refusal": "partial"}
    out = []
    for name in sets:
        data = load_dataset("xstest/completions", name, data_dir=data_dir, limit=limit, seed=seed)
        out.append(
            LabelledSet(
                f"xstest/{name}",
                [i.prompt for i in data],
                [i.completion for i in data],
                [words[i.human_label] for i in data],
            )
        )
    return out


def read_labels(path: str | Path) -> LabelledSet:
    """A labelled CSV: columns prompt, reply, label (refusal / compliance / partial, or
    1 / 0, yes / no, or XSTest's final_label values)."""
    from ..data.files import malformed, read_csv

    path = Path(path)
    if not path.is_file():
        raise RefusalScopeError(f"labels file {path} does not exist", "pass a CSV with prompt, reply, label columns")
    rows = read_csv(path, required=("prompt", "reply", "label"))
    if not rows:
        raise RefusalScopeError(f"{path} holds no labelled replies", "add rows with prompt, reply, label")
    labels = []
    for number, row in enumerate(rows, start=1):
        word = LABEL_WORDS.get(row["label"].strip().lower())
        if word is None:
            raise malformed(
                path,
                f"row {number}: label '{row['label']}' is not one of refusal, compliance, partial (or 1/0, yes/no)",
            )
        labels.append(word)
    return LabelledSet(path.name, [r["prompt"] for r in rows], [r["reply"] for r in rows], labels)


def judge_agreement(
    judge,
    data: LabelledSet,
    partial: str = "refusal",
    n_boot: int = 1000,
    seed: int = 0,
    judged: list[bool] | None = None,
) -> dict:
    """One judge on one labelled set: accuracy / F1 / kappa with bootstrap intervals and
    the confusion matrix (partial refusals mapped by `partial`), plus, separately, how
    often the judge calls the human-labelled partial refusals a refusal. `judged`: the
    judge's verdicts when already computed (e.g. a pooled set), instead of judging again."""
    if partial not in ("refusal", "compliance", "exclude"):
        raise RefusalScopeError(f"unknown partial-refusal mapping '{partial}'", "use refusal, compliance or exclude")
    started = time.perf_counter()
    if judged is None:
        judged = [v.refused for v in judge.judge(data.prompts, data.replies)] if len(data) else []
    seconds = time.perf_counter() - started
    human, said = [], []
    for label, refused in zip(data.labels, judged):
        if label == "partial" and partial == "exclude":
            continue
        human.append(label == "refusal" or (label == "partial" and partial == "refusal"))
        said.append(refused)
    partial_calls = [refused for label, refused in zip(data.labels, judged) if label == "partial"]
    return {
        "judge": getattr(judge, "name", type(judge).__name__),
        "set": data.name,
        "partial": partial,
        "agreement": agreement(data.name, human, said, n_boot=n_boot, seed=seed),
        "n_partial": len(partial_calls),
        "partial_judged_refusal": (sum(partial_calls) / len(partial_calls)) if partial_calls else float("nan"),
        "seconds": seconds,
        "judged": judged,
    }
