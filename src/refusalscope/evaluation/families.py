"""The method families the trade-off search compares, built from one run's artefacts.

Both papers steer refusal with SAE latents and pay for it in over-refusal and capability;
later work claims two ways out: steer only when a harm gate fires (CAST), or steer only
in directions benign activations do not use (AlphaSteer). To say which works on a model,
every family must be tuned with the same budget and measured on the same splits, so this
module turns the discovered latents, the refusal direction and some benign activations
into one search space per family (`evaluation/optimize.py` tunes them):

    features            clamp the top-k ranked latents at strength × their peak
    gated               the same, applied only where a refusal-direction gate fires
    features-nullspace  the latent clamp's edit projected off the benign subspace
    actadd              add strength × the difference-of-means refusal vector (dense)
    actadd-nullspace    that vector projected off the benign subspace
    learned             AlphaSteer's learned map x ↦ x + c·xΔ (Δ = P⊥W, ridge fit)

The benign subspace and the learned map are fitted on prompts and texts the caller
keeps apart from the validation and test splits (the CLI uses the refusal-direction
training prompts and other WikiText documents).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import RefusalScopeError
from .optimize import POSITIONS, ScaledSpace, SearchSpace

FAMILIES = ("features", "gated", "features-nullspace", "actadd", "actadd-nullspace", "learned")
NEEDS_DIRECTION = frozenset({"gated", "actadd", "actadd-nullspace", "learned"})
NEEDS_LATENTS = frozenset({"features", "gated", "features-nullspace"})
NEEDS_BENIGN = frozenset({"features-nullspace", "actadd-nullspace", "learned"})


def parse_families(text: str | Sequence[str]) -> list[str]:
    """Family names from 'a,b' or a list, checked (in FAMILIES order, each once)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise RefusalScopeError(
            f"unknown method famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown) or '(none given)'}",
            f"use some of {', '.join(FAMILIES)}",
        )
    return [f for f in FAMILIES if f in names]


@dataclass
class FamilyData:
    """What the families are built from. Prompts and texts here must not be in the
    validation or test split (they fit the gate range, the benign subspace and the learned map)."""

    saes: dict[int, Any] = field(default_factory=dict)
    candidates: list[tuple[int, int]] = field(default_factory=list)  # ranked (layer, feature)
    values: list[float] = field(default_factory=list)  # clamp value at strength 1 (peak on harmful prompts)
    direction: Any = None  # a RefusalDirection
    harmful: list[str] = field(default_factory=list)  # fit prompts: the learned map's targets, the gate range
    harmless: list[str] = field(default_factory=list)  # fit prompts: benign subspace, gate range
    texts: list[str] = field(default_factory=list)  # fit texts: benign subspace


@dataclass
class Settings:
    max_latents: int = 20
    strengths: tuple[float, float] = (0.05, 2.0)
    positions: tuple[str, ...] = POSITIONS
    variance: float = 0.99  # explained second moment of benign activations the subspace keeps
    ridge: float = 1e-2
    batch_size: int = 8


def gate_factory(direction, layer: int, harmful: Sequence[str], harmless: Sequence[str], chat, batch_size: int = 8):
    """(factory (items, threshold) -> Conditional, threshold range): a gate on the mean
    projection of the post-instruction tokens on the refusal direction at `layer`; the
    range spans the 10th to 90th percentile of that projection on the fit prompts."""
    from ..steering import Conditional, DirectionGate

    vec = direction.at_layer(layer)
    acts = chat.residual(
        list(harmful) + list(harmless), [layer], positions="post_instruction", batch_size=batch_size, progress=False
    )[layer]
    proj = (acts.float() @ vec.float()).mean(-1)
    lo, hi = float(torch.quantile(proj, 0.1)), float(torch.quantile(proj, 0.9))
    if not hi > lo:
        hi = lo + 1.0
    gate = DirectionGate(vec, layer)

    def wrap(items, threshold):
        return Conditional(items, gate, threshold, reduce="mean", positions="post_instruction")

    return wrap, (lo, hi)


def build_spaces(
    chat, families: Sequence[str], data: FamilyData, settings: Settings | None = None, *, progress: bool = False
) -> tuple[list, dict[str, Any]]:
    """(search spaces in `families` order, a record of what was fitted: subspace ranks,
    gate range, learned-map fit)."""
    from ..steering import ActAdd, LearnedNullSpaceSteer, NullSpaceProjection
    from ..steering.nullspace import benign_activations, benign_subspace, fit_steering_matrix

    settings = settings or Settings()
    families = parse_families(list(families))
    if NEEDS_DIRECTION & set(families) and data.direction is None:
        raise RefusalScopeError(
            f"the families {sorted(NEEDS_DIRECTION & set(families))} need the refusal direction",
            "pass --direction (a folder written by `refusalscope direction` or `run`)",
        )
    if NEEDS_LATENTS & set(families) and not data.candidates:
        raise RefusalScopeError("the latent families need ranked candidate latents", "pass --features features.json")
    record: dict[str, Any] = {}
    latent_layers = sorted({layer for layer, _ in data.candidates})
    steer_layers = set(latent_layers if NEEDS_LATENTS & set(families) else [])
    if data.direction is not None:
        steer_layers.add(data.direction.layer)

    bases: dict[int, torch.Tensor] = {}
    need_basis = set()
    if "features-nullspace" in families:
        need_basis |= set(latent_layers)
    if {"actadd-nullspace", "learned"} & set(families):
        need_basis.add(data.direction.layer)
    for layer in sorted(need_basis):
        acts = benign_activations(
            chat, layer, data.harmless, data.texts, batch_size=settings.batch_size, progress=progress
        )
        bases[layer], fit = benign_subspace(acts, variance=settings.variance)
        record.setdefault("benign_subspace", {})[str(layer)] = fit

    gate, thresholds = None, (-1.0, 1.0)
    if "gated" in families:
        gate_layer = min(steer_layers)
        gate, thresholds = gate_factory(
            data.direction, gate_layer, data.harmful, data.harmless, chat, settings.batch_size
        )
        record["gate"] = {
            "layer": gate_layer,
            "threshold_range": list(thresholds),
            "reduce": "mean",
            "positions": "post_instruction",
        }

    common: dict[str, Any] = dict(strengths=settings.strengths, positions=tuple(settings.positions))
    spaces: list = []
    for name in families:
        if name in NEEDS_LATENTS:
            spaces.append(
                SearchSpace(
                    data.saes,
                    data.candidates,
                    data.values,
                    max_latents=settings.max_latents,
                    name=name,
                    gate=gate if name == "gated" else None,
                    gate_thresholds=thresholds,
                    gated=True if name == "gated" else False,
                    basis=bases if name == "features-nullspace" else None,
                    **common,
                )
            )
        elif name in ("actadd", "actadd-nullspace"):
            direction, layer = data.direction.raw, data.direction.layer
            basis = bases.get(layer) if name == "actadd-nullspace" else None

            def make(strength, positions, direction=direction, layer=layer, basis=basis):
                add = ActAdd(direction, layer, strength, positions=positions)
                return [add if basis is None else NullSpaceProjection(add, basis)]

            spaces.append(ScaledSpace(name, make, gated=False, **common))
        else:  # learned
            layer = data.direction.layer
            acts = chat.residual(
                data.harmful, [layer], positions="post_instruction", batch_size=settings.batch_size, progress=False
            )[layer]
            harmful = acts.reshape(-1, acts.shape[-1])  # every post-instruction token of every fit prompt
            matrix = fit_steering_matrix(harmful, bases[layer], data.direction.raw, ridge=settings.ridge)
            fit = dict(record["benign_subspace"][str(layer)], ridge=settings.ridge, n_harmful=int(harmful.shape[0]))
            record["learned"] = fit

            def make(strength, positions, matrix=matrix, layer=layer, fit=fit):
                return [LearnedNullSpaceSteer(matrix, layer, strength, positions=positions, fit=fit)]

            spaces.append(ScaledSpace(name, make, gated=False, **common))
    return spaces, record
