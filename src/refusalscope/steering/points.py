"""Hook points: where in the residual stream an intervention or gate acts.

A point is a decoder block's index (its output, resid_post) or "embed" (the token
embeddings, before block 0). SAEs name their site the SAELens way (`resid_post` of layer
l, or `resid_pre`, which is the output of block l − 1); `sae_point` maps that onto a point.
"""

from __future__ import annotations

from typing import Any

from ..errors import RefusalScopeError
from ..models.hooks import Point

__all__ = ["Point", "check_point", "point_name", "point_order", "sae_point"]


def check_point(model: Any, point: Point) -> None:
    """Raise a clear error when `model` has no such hook point (a layer out of range)."""
    model.hooks.module(point)


def point_order(point: Point) -> int:
    """Depth of a hook point, for ordering: the embedding comes before block 0."""
    return -1 if point == "embed" else int(point)


def point_name(point: Point) -> str:
    return "embedding" if point == "embed" else f"layer {point}"


def sae_point(sae: Any) -> Point | None:
    """The hook point (resid_post of a block, or 'embed') whose activations `sae` reads;
    None when the SAE does not record its layer."""
    layer = sae.cfg.layer
    site = (sae.cfg.site or "resid_post").lower()
    if layer is None:
        return None
    if site in ("resid_post", "hook_resid_post"):
        return int(layer)
    if site in ("resid_pre", "hook_resid_pre"):
        return "embed" if int(layer) == 0 else int(layer) - 1
    raise RefusalScopeError(
        f"the SAE reads '{site}' of layer {layer}; refusalscope steers the residual stream only",
        "use an SAE trained on resid_post (or resid_pre) activations",
    )
