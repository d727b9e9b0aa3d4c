"""The method families the trade-off search compares, built from one run's artefacts.

Both papers steer refusal with SAE latents and pay for it in over-refusal and capability;
later work claims two ways out: steer only when a harm gate fires (CAST), or steer only
in directions benign activations do not use (AlphaSteer). To say which works on a model,
every family must be tuned with the same budget and measured on the same splits, so this
module turns the discovered latents, the refusal direction and some benign activations
into one search space per family (`evaluation/optimize.py` tunes them):

    features            clamp the top-k ranked latents at strength × their peak
    gated               the same, applied only where a refusal-direction gate fires
    gated-probe         the same, applied only where a saved probe's gate fires (`--probe`)
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
from pathlib import Path
from typing import Any, cast

import torch

from ..errors import RefusalScopeError
from .optimize import POSITIONS, ScaledSpace, SearchSpace

FAMILIES = ("features", "gated", "gated-probe", "features-nullspace", "actadd", "actadd-nullspace", "learned")
NEEDS_DIRECTION = frozenset({"gated", "actadd", "actadd-nullspace", "learned"})
NEEDS_LATENTS = frozenset({"features", "gated", "gated-probe", "features-nullspace"})
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
    probe: str | Path | None = None  # a saved probe (folder or its probe.json): the gated-probe family's gate


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


def probe_folder(path: str | Path) -> Path:
    """The folder of a saved probe given as the folder itself or as its probe.json (both are
    what users pass to --probe); the folder is what identifies and loads the probe."""
    from ..probes.linear import META_FILE

    path = Path(path).expanduser()
    return path.parent if path.name == META_FILE and path.is_file() else path


def load_probe(path: str | Path) -> Any:
    """The `probes.linear.LinearProbe` saved at `path` (the folder `refusalscope probes` writes,
    e.g. gate-probe/, or its probe.json); a missing or damaged probe is one RefusalScopeError."""
    import math

    from ..probes.linear import META_FILE, LinearProbe

    path = Path(path).expanduser()
    folder = probe_folder(path)
    fix = "pass --probe runs/.../probes/gate-probe (the folder `refusalscope probes` writes)"
    if not path.exists():
        raise RefusalScopeError(f"the probe {path} does not exist", fix)
    if not folder.is_dir():
        raise RefusalScopeError(f"the probe {path} is a file, not a probe folder or its {META_FILE}", fix)
    try:
        probe = LinearProbe.load(folder)
    except RefusalScopeError as exc:
        raise RefusalScopeError(exc.problem, exc.fix or fix) from None
    except Exception as exc:  # noqa: BLE001 - a damaged probe.safetensors, a threshold that is no number
        raise RefusalScopeError(f"cannot read the probe in {folder} ({type(exc).__name__}: {exc})", fix) from None
    layer, weights = probe.spec.layer, probe.weights
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise RefusalScopeError(
            f"{folder / META_FILE}: the probe's layer must be a whole number ≥ 0, got {layer!r}", fix
        )
    if weights.ndim != 1 or not weights.size or not all(map(math.isfinite, [probe.bias, probe.threshold])):
        raise RefusalScopeError(f"{folder} is not a usable probe (weights, bias or threshold damaged)", fix)
    if not isinstance(probe.info, dict):
        raise RefusalScopeError(f"{folder / META_FILE}: 'info' must be a mapping", fix)
    return probe


def check_probe(probe: Any, source: str | Path, chat=None, before: int | None = None) -> None:
    """Refuse a probe trained on another model than `chat` (as `GateSpec.check_model` does, without
    building the gate, so a latent probe's SAE is not loaded for it) or read after layer `before`
    (the earliest layer the gated steering changes: the gate would read prompts already steered)."""
    from .grid import GateSpec

    if chat is not None:
        model = probe.info.get("model")
        trained_on = model if isinstance(model, dict) else None
        GateSpec(cast(Any, None), probe.threshold, trained_on=trained_on, source=str(source)).check_model(chat)
    if before is not None and probe.spec.layer > before:
        raise RefusalScopeError(
            f"the probe {source} reads layer {probe.spec.layer}, after layer {before}, which the steering it "
            "gates already changes: its gate would read prompts already steered",
            f"use a probe read at layer {before} or earlier, or steer latents at layer {probe.spec.layer} or later",
        )


def probe_gate_factory(
    probe: Any,
    source: str | Path,
    chat,
    harmful: Sequence[str],
    harmless: Sequence[str],
    batch_size: int = 8,
    *,
    before: int | None = None,
):
    """(factory (items, threshold) -> Conditional, threshold range): a gate on a probe that
    `load_probe` read from `source`, read as `GateSpec.from_probe` reads it (the mean of the
    probe's logit over the post-instruction tokens; a latent probe loads the SAE it records);
    the range spans the 10th to 90th percentile of that score on the fit prompts, computed by
    the gate itself (`Conditional.decisions`), so it is the number each trial's threshold is
    compared with. A probe trained on another model, or read after layer `before`, is refused
    (`check_probe`)."""
    from ..steering import ActAdd, Conditional
    from .grid import GateSpec

    check_probe(probe, source, chat, before)
    spec = GateSpec.from_probe(probe)  # a latent probe loads the SAE it records

    def wrap(items, threshold):
        return Conditional(
            items, spec.gate, threshold, reduce=spec.reduce, positions=spec.positions, skip_first=spec.skip_first
        )

    noop = ActAdd(torch.zeros(chat.d_model), spec.gate.layer, 0.0)  # the gate alone: nothing steered
    scores = wrap([noop], spec.threshold).decisions(chat, list(harmful) + list(harmless), batch_size).scores
    scores = scores[torch.isfinite(scores)].float()
    if not scores.numel():
        raise RefusalScopeError("the probe gate read no post-instruction tokens in the fit prompts")
    lo, hi = float(torch.quantile(scores, 0.1)), float(torch.quantile(scores, 0.9))
    if not hi > lo:
        hi = lo + 1.0
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
    if "gated-probe" in families and data.probe is None:
        raise RefusalScopeError(
            "the gated-probe family needs a probe",
            "pass --probe runs/.../probes/gate-probe (written by `refusalscope probes`)",
        )
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

    gates: dict[str, tuple[Any, tuple[float, float]]] = {}  # family -> (gate factory, threshold range)
    if "gated" in families:
        gate_layer = min(steer_layers)
        gate, thresholds = gates["gated"] = gate_factory(
            data.direction, gate_layer, data.harmful, data.harmless, chat, settings.batch_size
        )
        record["gate"] = {
            "layer": gate_layer,
            "threshold_range": list(thresholds),
            "reduce": "mean",
            "positions": "post_instruction",
        }
    if "gated-probe" in families:
        assert data.probe is not None  # checked above
        probe = load_probe(data.probe)
        gates["gated-probe"] = probe_gate_factory(
            probe, data.probe, chat, data.harmful, data.harmless, settings.batch_size, before=min(latent_layers)
        )
        record["gate_probe"] = {
            "path": str(data.probe),
            "name": probe.info.get("name"),
            "layer": probe.spec.layer,
            "threshold_range": list(gates["gated-probe"][1]),
            "probe_threshold": probe.threshold,
            "reduce": "mean",
            "positions": "post_instruction",
        }

    common: dict[str, Any] = dict(strengths=settings.strengths, positions=tuple(settings.positions))
    spaces: list = []
    for name in families:
        if name in NEEDS_LATENTS:
            gate, thresholds = gates.get(name, (None, (-1.0, 1.0)))
            spaces.append(
                SearchSpace(
                    data.saes,
                    data.candidates,
                    data.values,
                    max_latents=settings.max_latents,
                    name=name,
                    gate=gate,
                    gate_thresholds=thresholds,
                    gated=gate is not None,
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
