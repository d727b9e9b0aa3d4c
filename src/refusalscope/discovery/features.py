"""Rank latents by a method's scores and keep a small set; read and write features.json.

Methods: `actdiff`, `cossim`, `ap`, `ig`, `cossim+ig` (the paper's: pre-filter the top
`prefilter_k` latents per layer by decoder cosine with the refusal direction, rank those
by IG), and `random` (latents drawn uniformly among those that fire on harmful prompts,
with the same per-layer counts as a reference set — the baseline every method must beat).
Selection is global (top K by mean score across all layers) or per prompt (latents that
most often make a prompt's own top K, ties broken by mean score).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import RefusalScopeError
from ..paths import atomic_file
from ..types import DiscoveryMethod, choices

METHODS: tuple[DiscoveryMethod, ...] = choices(DiscoveryMethod)


@dataclass
class ScoreTables:
    """Every score discovery computed, per layer; what makes re-selection instant."""

    cossim: dict[int, torch.Tensor] = field(default_factory=dict)
    actdiff: dict[int, torch.Tensor] = field(default_factory=dict)
    ap: dict[int, torch.Tensor] = field(default_factory=dict)
    ig: dict[int, torch.Tensor] = field(default_factory=dict)
    ig_per_prompt: dict[int, torch.Tensor] = field(default_factory=dict)
    ap_per_prompt: dict[int, torch.Tensor] = field(default_factory=dict)
    peak_harmful: dict[int, torch.Tensor] = field(default_factory=dict)
    error_share: dict[str, dict[int, float]] = field(default_factory=dict)

    def layers(self) -> list[int]:
        return sorted(self.cossim or self.actdiff or self.ig or self.ap)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for name in ("cossim", "actdiff", "ap", "ig", "ig_per_prompt", "ap_per_prompt", "peak_harmful"):
            for layer, t in getattr(self, name).items():
                tensors[f"{name}.{layer}"] = t.float().contiguous()
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"error_share": json.dumps(self.error_share)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ScoreTables":
        from safetensors import safe_open

        out = cls()
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            for key in handle.keys():
                name, layer = key.rsplit(".", 1)
                getattr(out, name)[int(layer)] = handle.get_tensor(key)
        out.error_share = {
            k: {int(l): v for l, v in d.items()} for k, d in json.loads(meta.get("error_share", "{}")).items()
        }
        return out


@dataclass
class RankedFeature:
    layer: int
    feature: int
    rank: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)  # every method's score for this latent


@dataclass
class FeatureSet:
    """A ranked set of latents, with where it came from (the content of features.json)."""

    method: str
    k: int
    features: list[RankedFeature]
    model: dict = field(default_factory=dict)
    saes: dict = field(default_factory=dict)
    direction: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for f in self.features:
            out.setdefault(f.layer, []).append(f.feature)
        return out

    def pairs(self) -> list[tuple[int, int]]:
        return [(f.layer, f.feature) for f in self.features]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "refusalscope-features",
            "version": 1,
            **{k: v for k, v in asdict(self).items() if k != "features"},
            "features": [asdict(f) for f in self.features],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_file(path) as handle:
            json.dump(self.to_dict(), handle, indent=2)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        path = Path(path)
        if not path.is_file():
            raise RefusalScopeError(f"feature file {path} does not exist", "run `refusalscope discover` first")
        try:
            raw = json.loads(path.read_text())
            features = [RankedFeature(**f) for f in raw["features"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RefusalScopeError(f"{path} is not a refusalscope features.json: {exc}") from exc
        return cls(
            method=raw["method"],
            k=raw["k"],
            features=features,
            model=raw.get("model", {}),
            saes=raw.get("saes", {}),
            direction=raw.get("direction", {}),
            settings=raw.get("settings", {}),
            provenance=raw.get("provenance", {}),
        )


def _flat(
    scores: dict[int, torch.Tensor], allowed: dict[int, torch.Tensor] | None = None
) -> list[tuple[float, int, int]]:
    out = []
    for layer, vec in scores.items():
        idx = allowed[layer] if allowed is not None else torch.arange(vec.numel())
        for j in idx.tolist():
            out.append((float(vec[j]), layer, j))
    return out


def _score_row(tables: ScoreTables, layer: int, feature: int) -> dict[str, float]:
    row = {}
    for name in ("cossim", "actdiff", "ap", "ig"):
        table = getattr(tables, name)
        if layer in table:
            row[name] = float(table[layer][feature])
    return row


def select(
    tables: ScoreTables,
    method: DiscoveryMethod,
    k: int = 20,
    prefilter_k: int = 64,
    per_prompt: bool = False,
    reference: list[tuple[int, int]] | None = None,
    seed: int = 0,
) -> list[RankedFeature]:
    """The top-`k` latents across layers under `method` (see the module docstring)."""
    if method not in METHODS:
        raise RefusalScopeError(f"unknown discovery method '{method}'", f"use one of {', '.join(METHODS)}")
    if k < 1:
        raise RefusalScopeError(f"K must be at least 1, got {k}")
    needs = {"cossim+ig": ["cossim", "ig"], "ig": ["ig"], "ap": ["ap"], "cossim": ["cossim"], "actdiff": ["actdiff"]}
    for name in needs.get(method, []):
        if not getattr(tables, name):
            raise RefusalScopeError(
                f"method '{method}' needs {name} scores, which were not computed", f"run discovery with {name} enabled"
            )
    if method == "random":
        rng = random.Random(seed)
        counts = Counter(layer for layer, _ in (reference or []))
        if not counts:
            layers = tables.layers()
            counts = Counter(layers[i % len(layers)] for i in range(k))
        chosen = []
        for layer, n in sorted(counts.items()):
            alive = (
                (tables.peak_harmful[layer] > 0).nonzero().squeeze(-1).tolist() if layer in tables.peak_harmful else []
            )
            pool = alive or list(range(tables.cossim[layer].numel()))
            chosen += [(0.0, layer, j) for j in rng.sample(pool, min(n, len(pool)))]
        ranked = chosen
    else:
        allowed = None
        if method == "cossim+ig":
            allowed = {l: v.topk(min(prefilter_k, v.numel())).indices for l, v in tables.cossim.items()}
        base = {"cossim+ig": "ig", "ig": "ig", "ap": "ap", "cossim": "cossim", "actdiff": "actdiff"}[method]
        if per_prompt and base in ("ig", "ap"):
            matrix = tables.ig_per_prompt if base == "ig" else tables.ap_per_prompt
            counter: Counter = Counter()
            n_prompts = next(iter(matrix.values())).shape[0]
            for p in range(n_prompts):
                top = sorted(_flat({l: m[p] for l, m in matrix.items()}, allowed), reverse=True)[:k]
                counter.update((layer, j) for _, layer, j in top)
            mean = getattr(tables, base)
            by_votes = sorted(((c, float(mean[l][j]), l, j) for (l, j), c in counter.items()), reverse=True)
            ranked = [(score, l, j) for _, score, l, j in by_votes]
        else:
            ranked = sorted(_flat(getattr(tables, base), allowed), reverse=True)
    return [
        RankedFeature(layer=l, feature=j, rank=i, score=s, scores=_score_row(tables, l, j))
        for i, (s, l, j) in enumerate(ranked[:k])
    ]
