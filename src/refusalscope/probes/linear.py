"""Logistic-regression probes (harmful vs harmless) over a few features, saved without pickle.

A probe is a weight vector and a bias over a feature vector that says what it reads
(`FeatureSpec`: dense residual at a layer, SAE latents of one SAE, or a projection on a
direction). Standardisation is folded into the weights, so the saved probe is just
x · w + b on the raw features: the form `ProbeGate` evaluates during generation. Files:
`probe.safetensors` (weights, bias, and the direction for projection probes) and
`probe.json` (what it reads, the threshold chosen on validation, provenance).
scikit-learn fits it (`LogisticRegressionCV`: the regularisation strength is chosen by
cross-validation on the training prompts), but nothing of scikit-learn is stored.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RefusalScopeError
from ..paths import atomic_dir
from ..thresholds import best_threshold as search_threshold
from ..types import ProbeKind, choices

KINDS: tuple[ProbeKind, ...] = choices(ProbeKind)
WEIGHTS_FILE = "probe.safetensors"
META_FILE = "probe.json"


@dataclass
class FeatureSpec:
    """What a probe reads: `dense` (the residual at `layer`), `latents` (`features` of the SAE
    at `sae`), or `projection` (x · direction at `layer`); always averaged over the
    post-instruction positions."""

    kind: ProbeKind
    layer: int
    features: list[int] = field(default_factory=list)
    sae: str | None = None  # where the SAE loads from
    sae_sha256: str | None = None
    positions: str = "post_instruction"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RefusalScopeError(f"unknown probe feature kind '{self.kind}'", f"use one of {', '.join(KINDS)}")


@dataclass
class LinearProbe:
    spec: FeatureSpec
    weights: np.ndarray  # [n_features], on raw (unstandardised) features
    bias: float
    threshold: float = 0.0  # on the logit, chosen on validation
    direction: np.ndarray | None = None  # projection probes: the unit direction
    info: dict[str, Any] = field(default_factory=dict)

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.weights.size:
            raise RefusalScopeError(
                f"the probe reads {self.weights.size} features, got an array of shape {x.shape}",
                "pass one row of the probe's features per prompt",
            )
        return x @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decision_function(x) > self.threshold

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        tensors = {"weights": self.weights.astype(np.float32), "bias": np.array([self.bias], dtype=np.float32)}
        if self.direction is not None:
            tensors["direction"] = self.direction.astype(np.float32)
        with atomic_dir(folder) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            meta = {
                "format": "refusalscope-probe",
                "version": 1,
                "spec": asdict(self.spec),
                "threshold": self.threshold,
                "info": self.info,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "LinearProbe":
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / META_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise RefusalScopeError(
                f"{folder} holds no probe ({META_FILE} + {WEIGHTS_FILE})",
                "run `refusalscope probes` to train and save one",
            )
        try:
            meta = json.loads((folder / META_FILE).read_text())
            spec = FeatureSpec(**meta["spec"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RefusalScopeError(f"{folder / META_FILE} is not a refusalscope probe file: {exc}") from exc
        tensors = load_file(str(folder / WEIGHTS_FILE))
        return cls(
            spec,
            tensors["weights"].astype(np.float64),
            float(tensors["bias"][0]),
            float(meta.get("threshold", 0.0)),
            tensors["direction"].astype(np.float64) if "direction" in tensors else None,
            meta.get("info", {}),
        )


def fit_probe(
    spec: FeatureSpec, x: np.ndarray, y: np.ndarray, seed: int = 0, cv: int = 5, direction: np.ndarray | None = None
) -> LinearProbe:
    """Standardise, fit LogisticRegressionCV (L2, C chosen by cross-validated log-loss), and
    fold the standardisation into the weights."""
    from sklearn.linear_model import LogisticRegressionCV

    x, y = np.asarray(x, np.float64), np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise RefusalScopeError("probe training data has only one class", "train on harmful and harmless prompts")
    folds = int(min(cv, np.bincount(y).min()))
    if folds < 2:
        raise RefusalScopeError("too few prompts of one class to cross-validate the probe", "use at least 2 per class")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-8] = 1.0
    clf = LogisticRegressionCV(
        Cs=np.logspace(-4, 2, 7),
        cv=folds,
        scoring="neg_log_loss",
        max_iter=500,
        class_weight="balanced",
        random_state=seed,
    )
    with warnings.catch_warnings():  # scikit-learn 1.9 announces parameter renames; the fit is unchanged
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit((x - mean) / scale, y)
    w = clf.coef_.reshape(-1) / scale
    b = float(clf.intercept_[0] - (clf.coef_.reshape(-1) * mean / scale).sum())
    return LinearProbe(
        spec,
        w,
        b,
        0.0,
        direction,
        {"C": float(np.asarray(clf.C_).reshape(-1)[0]), "cv_folds": folds, "n_train": int(len(y)), "seed": seed},
    )


def best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The logit threshold that maximises balanced accuracy on (validation) scores; midpoint
    between neighbouring scores, so it does not sit on a validation prompt."""
    s, y = np.asarray(scores, float), np.asarray(y).astype(bool)
    if y.all() or not y.any():
        raise RefusalScopeError("the validation split has only one class", "validate on harmful and harmless prompts")
    return search_threshold(
        s.tolist(), y.tolist(), objective="balanced_accuracy", distinct=True, outside=True
    ).threshold
