"""The probe table: which features let a linear probe see harm out of distribution?

Rows (Yeo et al. §6): the K selected refusal latents; K random live latents of the same
SAEs (several draws: mean, and the range over draws); the dense residual stream at the
layer that scores best on the validation split, evaluated at that same layer; the
projection on the refusal direction; the upstream harm latents alone. Each probe is
trained on vanilla prompts only, its threshold set on vanilla validation prompts, and
scored in distribution (held-out vanilla) and out of distribution (jailbreaks vs
harmless look-alikes) by balanced accuracy and AUROC, with stratified bootstrap
intervals (harmful and harmless prompts resampled separately, so every resample has
both classes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RefusalScopeError
from ..stats import Estimate
from .datasets import ProbeData
from .features import ResidualBank
from .linear import FeatureSpec, LinearProbe, best_threshold, fit_probe

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..sae.model import SAE


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    return float(0.5 * (pred[y].mean() + (~pred[~y]).mean()))


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half);
    the same number as sklearn's roc_auc_score, ~100x faster, which matters inside the
    bootstrap."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise RefusalScopeError("AUROC needs harmful and harmless prompts", "test on both classes")
    ranks = rankdata(np.asarray(s, float))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def stratified_bootstrap(y: np.ndarray, s: np.ndarray, metric, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """`metric(y, s)` with a percentile interval from resampling each class separately."""
    y = np.asarray(y).astype(int)
    s = np.asarray(s, float)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        raise RefusalScopeError("a probe test split has only one class", "test on harmful and harmless prompts")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        draws.append(metric(y[idx], s[idx]))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return Estimate(float(metric(y, s)), float(lo), float(hi), int(y.size), "stratified bootstrap")


@dataclass
class ProbeScores:
    """A fitted probe and its scores (validation sets the threshold; ID/OOD are tests)."""

    name: str
    probe: LinearProbe
    val_auroc: float
    id_bacc: Estimate
    id_auroc: Estimate
    ood_bacc: Estimate
    ood_auroc: Estimate
    ood_scores: np.ndarray
    id_scores: np.ndarray

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "spec": self.probe.spec.__dict__,
            "n_features": int(self.probe.weights.size),
            "threshold": self.probe.threshold,
            "val_auroc": self.val_auroc,
            "id_balanced_accuracy": self.id_bacc.to_dict(),
            "id_auroc": self.id_auroc.to_dict(),
            "ood_balanced_accuracy": self.ood_bacc.to_dict(),
            "ood_auroc": self.ood_auroc.to_dict(),
        }


def score_probe(
    name: str, spec: FeatureSpec, features, data: ProbeData, seed: int = 0, direction: np.ndarray | None = None
) -> ProbeScores:
    """Fit on train, threshold on val, score ID and OOD. `features(prompts) -> [N, F]`."""
    probe = fit_probe(spec, features(data.train.prompts), data.train.labels, seed, direction=direction)
    val_s = probe.decision_function(features(data.val.prompts))
    probe.threshold = best_threshold(val_s, data.val.labels)
    out = {}
    for split, test in (("id", data.test_id), ("ood", data.test_ood)):
        s = probe.decision_function(features(test.prompts))
        out[split] = (
            s,
            stratified_bootstrap(test.labels, s > probe.threshold, balanced_accuracy, seed=seed),
            stratified_bootstrap(test.labels, s, auroc, seed=seed),
        )
    return ProbeScores(
        name,
        probe,
        auroc(data.val.labels, val_s),
        out["id"][1],
        out["id"][2],
        out["ood"][1],
        out["ood"][2],
        out["ood"][0],
        out["id"][0],
    )


@dataclass
class ProbeRow:
    """One line of the table; random-latent rows average several draws (`draws`)."""

    name: str
    n_features: int
    layer: str
    id_bacc: Estimate
    id_auroc: Estimate
    ood_bacc: Estimate
    ood_auroc: Estimate
    draws: list[ProbeScores] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "n_features": self.n_features,
            "layer": self.layer,
            "note": self.note,
            "id_balanced_accuracy": self.id_bacc.to_dict(),
            "id_auroc": self.id_auroc.to_dict(),
            "ood_balanced_accuracy": self.ood_bacc.to_dict(),
            "ood_auroc": self.ood_auroc.to_dict(),
            "draws": [d.to_dict() for d in self.draws],
        }


def _row(scores: ProbeScores, layer: str, note: str = "") -> ProbeRow:
    return ProbeRow(
        scores.name,
        int(scores.probe.weights.size),
        layer,
        scores.id_bacc,
        scores.id_auroc,
        scores.ood_bacc,
        scores.ood_auroc,
        [scores],
        note,
    )


def _mean_row(name: str, draws: list[ProbeScores], layer: str) -> ProbeRow:
    def over(attr):
        values = np.array([getattr(d, attr).value for d in draws])
        return Estimate(
            float(values.mean()),
            float(values.min()),
            float(values.max()),
            getattr(draws[0], attr).n,
            f"mean, min-max over {len(draws)} draws",
        )

    return ProbeRow(
        name,
        int(draws[0].probe.weights.size),
        layer,
        over("id_bacc"),
        over("id_auroc"),
        over("ood_bacc"),
        over("ood_auroc"),
        draws,
        f"{len(draws)} draws of random live latents",
    )


def _layer_of(sae: SAE) -> int:
    """The layer an SAE reads; probes need it to know which residual vectors to encode."""
    if sae.layer is None:
        raise RefusalScopeError(
            "an SAE given to the probes does not record its layer",
            "load it from a folder whose cfg.json names hook_layer",
        )
    return int(sae.layer)


def _sae_spec(sae: SAE, feats: Sequence[int]) -> FeatureSpec:
    return FeatureSpec(
        "latents", _layer_of(sae), [int(f) for f in feats], sae.cfg.provenance.get("source"), sae.content_hash()
    )


def _group_features(bank: ResidualBank, parts):
    return lambda prompts: np.concatenate([bank.latents(sae, feats, prompts) for sae, feats in parts], axis=1)


@dataclass
class ProbeComparison:
    rows: list[ProbeRow]
    dense_layer_scores: dict[int, float]  # validation AUROC of the dense probe at each layer
    best: ProbeScores  # the probe that becomes the gate

    def to_dict(self) -> dict:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "dense_layer_val_auroc": self.dense_layer_scores,
            "gate_probe": self.best.name,
        }


def compare_probes(
    chat: ChatModel,
    data: ProbeData,
    refusal_parts: Sequence[tuple[SAE, list[int]]],
    harm_parts: Sequence[tuple[SAE, list[int]]] | None = None,
    direction: tuple[int, np.ndarray] | None = None,
    dense_layers: Sequence[int] | None = None,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> ProbeComparison:
    """Fit and score every row of the table (see the module docstring)."""
    if n_random < 1:
        raise RefusalScopeError(f"n_random must be at least 1, got {n_random}", "use --n-random 5 or more")
    dense_layers = sorted(set(dense_layers or range(chat.n_layers)))
    sae_layers = {_layer_of(sae) for sae, _ in list(refusal_parts) + list(harm_parts or [])}
    layers = sorted(set(dense_layers) | sae_layers | ({direction[0]} if direction else set()))
    bank = ResidualBank(chat, data.all_prompts(), layers, batch_size, progress)
    rows: list[ProbeRow] = []
    candidates: list[ProbeScores] = []

    k = sum(len(f) for _, f in refusal_parts)
    selected = score_probe(
        f"{k} selected refusal latents",
        _sae_spec(*refusal_parts[0])
        if len(refusal_parts) == 1
        else FeatureSpec("latents", _layer_of(refusal_parts[0][0]), []),
        _group_features(bank, refusal_parts),
        data,
        seed,
    )
    if len(refusal_parts) == 1:
        candidates.append(selected)
    rows.append(_row(selected, ",".join(str(s.layer) for s, _ in refusal_parts)))

    rng = random.Random(seed)
    draws = []
    for d in range(n_random):
        parts = []
        for sae, feats in refusal_parts:
            live = sorted(set(bank.live_latents(sae, data.train.prompts).tolist()) - set(feats))
            if len(live) < len(feats):
                raise RefusalScopeError(
                    f"the layer-{sae.layer} SAE has only {len(live)} live latents besides the selected ones",
                    "use a larger SAE or fewer selected latents",
                )
            parts.append((sae, sorted(rng.sample(live, len(feats)))))
        spec = _sae_spec(*parts[0]) if len(parts) == 1 else FeatureSpec("latents", _layer_of(parts[0][0]), [])
        draws.append(score_probe(f"{k} random live latents (draw {d})", spec, _group_features(bank, parts), data, seed))
    rows.append(_mean_row(f"{k} random live latents", draws, ",".join(str(s.layer) for s, _ in refusal_parts)))

    per_layer = {}
    for layer in dense_layers:
        per_layer[layer] = score_probe(
            f"dense residual, layer {layer}",
            FeatureSpec("dense", layer),
            lambda prompts, layer=layer: bank.dense(layer, prompts),
            data,
            seed,
        )
    best_layer = max(
        dense_layers, key=lambda l: (per_layer[l].val_auroc, -abs(l - dense_layers[len(dense_layers) // 2]))
    )
    dense = per_layer[best_layer]
    candidates.append(dense)
    rows.append(_row(dense, str(best_layer), "layer chosen on validation AUROC; evaluated at the same layer"))

    if direction is not None:
        layer, vec = direction
        unit = np.asarray(vec, np.float64) / np.linalg.norm(vec)
        proj = score_probe(
            "refusal-direction projection",
            FeatureSpec("projection", int(layer)),
            lambda prompts: bank.projection(layer, unit, prompts),
            data,
            seed,
            direction=unit,
        )
        candidates.append(proj)
        rows.append(_row(proj, str(layer)))
    if harm_parts:
        kh = sum(len(f) for _, f in harm_parts)
        harm = score_probe(
            f"{kh} harm latents alone",
            _sae_spec(*harm_parts[0])
            if len(harm_parts) == 1
            else FeatureSpec("latents", _layer_of(harm_parts[0][0]), []),
            _group_features(bank, harm_parts),
            data,
            seed,
        )
        if len(harm_parts) == 1:
            candidates.append(harm)
        rows.append(
            _row(harm, ",".join(str(s.layer) for s, _ in harm_parts), "upstream latents driving the refusal latents")
        )
    # the gate: best validation AUROC; ties go to the probe with fewer features (cheaper, and sparse)
    best = max(candidates, key=lambda c: (round(c.val_auroc, 6), -c.probe.weights.size))
    return ProbeComparison(rows, {l: s.val_auroc for l, s in per_layer.items()}, best)


def table_rows(comparison: ProbeComparison) -> list[list[str]]:
    header = ["features", "n", "layer", "ID balanced acc", "ID AUROC", "OOD balanced acc", "OOD AUROC", "note"]

    def fmt(e: Estimate) -> str:
        return f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"

    return [header] + [
        [r.name, str(r.n_features), r.layer, fmt(r.id_bacc), fmt(r.id_auroc), fmt(r.ood_bacc), fmt(r.ood_auroc), r.note]
        for r in comparison.rows
    ]
