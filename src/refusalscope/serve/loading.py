"""Find what a playground serves from a run folder or explicit paths.

A run folder is what `refusalscope run` or `refusalscope discover -o` wrote: features.json
at its top or in `discovery/`, feature cards (cards.json) beside it, and the refusal
direction in `direction/`. The SAEs are the ones features.json names (or `--sae`), and
the model is the one it was discovered on (or `--model`). Everything is checked, with a
clear error, before the model loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RefusalScopeError


@dataclass
class Sources:
    """Where each part of a playground comes from (resolved paths, not yet loaded)."""

    model: str
    saes: list[str]
    features: Path | None = None
    cards: Path | None = None
    direction: Path | None = None
    spec_dir: Path = Path("specs")
    notes: list[str] = field(default_factory=list)


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def resolve_sources(
    run: Path | None = None,
    saes: list[str] | None = None,
    features: Path | None = None,
    direction: Path | None = None,
    model: str | None = None,
    spec_dir: Path | None = None,
) -> Sources:
    saes = list(saes or [])
    if run is not None:
        run = Path(run)
        if not run.is_dir():
            raise RefusalScopeError(
                f"run folder {run} does not exist", "pass the folder `refusalscope run` or `discover -o` wrote"
            )
        if features is None:
            features = _first(
                run / "features.json", run / "discovery" / "features.json", run / "discover" / "features.json"
            )
            if features is None:
                raise RefusalScopeError(
                    f"{run} holds no features.json (nor discovery/ or discover/features.json)",
                    "run `refusalscope discover -o <folder>` or `refusalscope run` first",
                )
        if direction is None:
            direction = _first(run / "direction", features.parent / "direction", features.parent.parent / "direction")
    if features is not None and not Path(features).is_file():
        raise RefusalScopeError(f"feature file {features} does not exist", "run `refusalscope discover` first")
    if direction is not None and not (Path(direction) / "direction.json").is_file():
        raise RefusalScopeError(f"{direction} holds no refusal direction", "run `refusalscope direction` first")
    recorded: dict = {}
    if features is not None:
        try:
            recorded = json.loads(Path(features).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RefusalScopeError(f"{features} is not a readable features.json: {exc}") from None
    if not saes:
        for layer, ref in sorted((recorded.get("saes") or {}).items(), key=lambda kv: int(kv[0])):
            if not ref.get("source"):
                raise RefusalScopeError(
                    f"features.json does not record where the layer-{layer} SAE is", "pass the SAEs with --sae"
                )
            saes.append(str(ref["source"]))
    if not saes:
        raise RefusalScopeError("no SAEs to serve", "pass --run runs/<name>, or --sae <folder> (repeatable)")
    model = model or (recorded.get("model") or {}).get("spec") or "default"
    cards = _first(Path(features).parent / "cards.json") if features is not None else None
    if spec_dir is None:
        spec_dir = (Path(run) / "specs") if run is not None else Path("specs")
    notes = []
    if features is None:
        notes.append("no features.json: no discovered latents are listed (search finds any latent)")
    if cards is None:
        notes.append("no cards.json: cards show each latent's logit effect only")
    if direction is None:
        notes.append("no refusal direction: ablation, ActAdd and the direction gate are off")
    return Sources(
        model,
        saes,
        Path(features) if features else None,
        cards,
        Path(direction) if direction else None,
        Path(spec_dir),
        notes,
    )


def load_playground(sources: Sources, dtype: str = "auto", progress: bool = True):
    """Load the model, SAEs, latents, cards and direction `sources` names."""
    from ..discovery.features import FeatureSet
    from ..models import load_model
    from ..sae.io import load_sae
    from .playground import Playground

    chat = load_model(sources.model, dtype=dtype, progress=progress)
    saes = {}
    for source in sources.saes:
        sae = load_sae(source, model=chat)
        if sae.layer is None:
            raise RefusalScopeError(
                f"the SAE {source} does not say which layer it reads", "fix its cfg.json (hook_name)"
            )
        saes[sae.layer] = sae
    features = FeatureSet.load(sources.features) if sources.features else None
    if features is not None:
        missing = sorted({f.layer for f in features.features} - set(saes))
        if missing:
            raise RefusalScopeError(
                f"features.json lists latents at layer(s) {missing} but no SAE is loaded there",
                "pass the SAEs it was discovered with (--sae)",
            )
    cards = json.loads(sources.cards.read_text()) if sources.cards else None
    direction = layer = None
    if sources.direction is not None:
        from ..direction import RefusalDirection

        found = RefusalDirection.load(sources.direction)
        direction, layer = found.raw, found.layer
    peaks = discovery_peaks(features)
    info = {
        "model": sources.model,
        "saes": sources.saes,
        "features": str(sources.features or ""),
        "cards": str(sources.cards or ""),
        "direction": str(sources.direction or ""),
    }
    return Playground(
        chat,
        saes,
        features=features,
        cards=cards,
        direction=direction,
        direction_layer=layer,
        spec_dir=sources.spec_dir,
        source=info,
        peaks=peaks,
    )


def discovery_peaks(features) -> dict[tuple[int, int], float]:
    """Each listed latent's peak activation on harmful prompts, from the score tables that
    discovery cached (their path is in features.json); the page scales sliders by it.
    Empty when the tables are gone: the sliders then use a fixed range."""
    if features is None:
        return {}
    path = (features.provenance or {}).get("scores")
    if not path or not Path(path).is_file():
        return {}
    from ..discovery.features import ScoreTables

    try:
        tables = ScoreTables.load(Path(path))
    except Exception:  # a damaged cache only costs the slider scale
        return {}
    return {
        (f.layer, f.feature): float(tables.peak_harmful[f.layer][f.feature])
        for f in features.features
        if f.layer in tables.peak_harmful
    }
