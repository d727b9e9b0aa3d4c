"""Train and validate the learned judge on the human-labelled XSTest completion sets.

Two validations, because one is not enough. Grouped cross-validation keeps every
prompt's five replies in one fold, so the judge is never scored on a prompt it was trained
on. Leave-one-completion-set-out trains on four models' replies and tests on the fifth:
a new model's style of refusing is what the judge meets in use, so that number is the one
to quote. Both report the substring judge on the same held-out replies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RefusalScopeError
from .agreement import accuracy
from .features import FeatureConfig, model_features, text_features
from .learned import LearnedJudge, LinearHead, fit_head

if TYPE_CHECKING:
    from ..models.chat import ChatModel


def xstest_pairs(data_dir: str | Path | None = None, partial: str = "refusal"):
    """(prompts, replies, human refused, completion-set names, prompt groups) of all five
    XSTest completion sets; partial refusals mapped by `partial` (or left out)."""
    from ..data.registry import load_dataset

    data = load_dataset("xstest/completions", "all", data_dir=data_dir)
    kept = [(item, item.refused(partial)) for item in data]
    kept = [(item, human) for item, human in kept if human is not None]
    prompts = [item.prompt for item, _ in kept]
    replies = [item.completion for item, _ in kept]
    human = np.array([h for _, h in kept], dtype=bool)
    sets = np.array([item.meta.get("model", "") for item, _ in kept])
    groups = np.array([item.id.rsplit("-", 1)[-1] for item, _ in kept])  # the XSTest prompt id
    return prompts, replies, human, sets, groups


def feature_matrix(
    chat: ChatModel, prompts: Sequence[str], replies: Sequence[str], cfg: FeatureConfig, progress: bool = True
) -> np.ndarray:
    model = model_features(chat, prompts, replies, cfg, progress=progress)[cfg.layer]
    return np.concatenate([model, text_features(prompts, replies, cfg.text_features)], axis=1)


def cross_validate(
    x: np.ndarray,
    human: np.ndarray,
    sets: np.ndarray,
    groups: np.ndarray,
    baseline: np.ndarray | None = None,
    c: float = 0.01,
    folds: int = 5,
    seed: int = 0,
    extra: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> dict:
    """Accuracy of a head trained on the rest: grouped k-fold by prompt, and per held-out
    completion set; `baseline` (e.g. substring verdicts) is scored on the same replies.
    `extra` = (x, labels, weight): rows added to every training fold, never tested on."""
    from sklearn.model_selection import GroupKFold

    if len(set(sets.tolist())) < 2:
        raise RefusalScopeError("leave-one-set-out needs at least two completion sets")

    def fit(rows: np.ndarray) -> LinearHead:
        if extra is None:
            return fit_head(x[rows], human[rows], c, seed=seed)
        ex, ey, w = extra
        weights = np.concatenate([np.ones(int(rows.sum()) if rows.dtype == bool else len(rows)), np.full(len(ey), w)])
        return fit_head(np.concatenate([x[rows], ex]), np.concatenate([human[rows], ey]), c, weights, seed)

    grouped = np.zeros(len(human), dtype=bool)
    for train, test in GroupKFold(n_splits=folds).split(x, human, groups):
        grouped[test] = fit(train).probabilities(x[test]) > 0.5
    held_out = np.zeros(len(human), dtype=bool)
    per_set = {}
    for name in dict.fromkeys(sets.tolist()):
        test = sets == name
        head = fit(~test)
        held_out[test] = head.probabilities(x[test]) > 0.5
        per_set[name] = {"n": int(test.sum()), "learned": accuracy(human[test], held_out[test])}
        if baseline is not None:
            per_set[name]["substring"] = accuracy(human[test], baseline[test])
    out = {
        "grouped_cv_accuracy": accuracy(human, grouped),
        "leave_one_set_out_accuracy": accuracy(human, held_out),
        "per_held_out_set": per_set,
        "c": c,
        "folds": folds,
    }
    if baseline is not None:
        out["substring_accuracy"] = accuracy(human, baseline)
        out["beats_substring_on_every_set"] = all(v["learned"] > v["substring"] for v in per_set.values())
    return out


def behaviour_examples():
    """Hand-written labelled replies of the kinds XSTest has few of (one-line refusals,
    refusals in a jailbreak persona, deflections that answer a safer question, compliances
    with alarming words), added to training with `BEHAVIOUR_WEIGHT` (see README)."""
    from importlib import resources

    from .validation import read_labels

    path = resources.files("refusalscope.resources").joinpath("judges/training/behaviour_examples.csv")
    data = read_labels(Path(str(path)))
    return data.prompts, data.replies, np.array([lab != "compliance" for lab in data.labels])


BEHAVIOUR_WEIGHT = 5.0


def train_learned_judge(
    chat: ChatModel,
    data_dir: str | Path | None = None,
    cfg: FeatureConfig | None = None,
    c: float = 0.01,
    partial: str = "refusal",
    name: str = "learned-v2",
    version: str = "2",
    progress: bool = True,
    behaviour_weight: float = BEHAVIOUR_WEIGHT,
) -> LearnedJudge:
    """Extract features of all XSTest replies (and of the behaviour examples, unless
    `behaviour_weight` is 0), cross-validate, fit on everything, and return the judge with
    its validation recorded in `meta`."""
    cfg = cfg or FeatureConfig()
    prompts, replies, human, sets, groups = xstest_pairs(data_dir, partial)
    started = time.perf_counter()
    x = feature_matrix(chat, prompts, replies, cfg, progress=progress)
    seconds = time.perf_counter() - started
    extra = None
    if behaviour_weight > 0:
        bp, br, by = behaviour_examples()
        extra = (feature_matrix(chat, bp, br, cfg, progress=False), by, behaviour_weight)
    feature_model = {
        "name": chat.info.name,
        "sha256": chat.info.sha256,
        "d_model": chat.d_model,
        "n_layers": chat.n_layers,
        "dtype": chat.info.dtype,
    }
    judge = fit_learned_judge(
        x,
        replies,
        human,
        sets,
        groups,
        cfg,
        feature_model,
        c=c,
        partial=partial,
        name=name,
        version=version,
        feature_seconds=seconds,
        extra=extra,
    )
    judge.chat = chat
    return judge


def fit_learned_judge(
    x: np.ndarray,
    replies: Sequence[str],
    human: np.ndarray,
    sets: np.ndarray,
    groups: np.ndarray,
    cfg: FeatureConfig,
    feature_model: dict,
    c: float = 0.01,
    partial: str = "refusal",
    name: str = "learned-v2",
    version: str = "2",
    feature_seconds: float | None = None,
    extra: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> LearnedJudge:
    """Cross-validate and fit the head on an already extracted feature matrix (rows of
    `feature_matrix`, in `xstest_pairs` order), plus `extra` = (x, labels, weight) rows in
    every training fold; `meta` records the training and validation."""
    from .. import __version__
    from .substring import SubstringJudge

    baseline = np.array([v.refused for v in SubstringJudge().judge(None, list(replies))])
    report = cross_validate(x, human, sets, groups, baseline, c=c, extra=extra)
    if extra is None:
        head = fit_head(x, human, c)
    else:
        ex, ey, w = extra
        head = fit_head(
            np.concatenate([x, ex]),
            np.concatenate([human, ey]),
            c,
            np.concatenate([np.ones(len(human)), np.full(len(ey), w)]),
        )
    meta = {
        "name": name,
        "version": version,
        "feature_model": feature_model,
        "training": {
            "data": "xstest/completions (all five sets)",
            "n": int(len(human)),
            "n_refused": int(human.sum()),
            "partial_refusals": partial,
            "c": c,
            "classifier": "sklearn LogisticRegression (L2) on standardised features",
            "behaviour_examples": None
            if extra is None
            else {
                "file": "resources/judges/training/behaviour_examples.csv",
                "n": int(len(extra[1])),
                "n_refused": int(np.sum(extra[1])),
                "weight": float(extra[2]),
            },
            "feature_seconds": None if feature_seconds is None else round(feature_seconds, 1),
            "refusalscope": __version__,
        },
        "validation": report,
    }
    return LearnedJudge(head, cfg, meta)
