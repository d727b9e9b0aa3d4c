"""Which tokens an intervention edits, and the one place where an edit is applied to them.

Positions:

    "all"               every real token (prompt and generated; padding never)
    "prompt"            the prompt's tokens only
    "generated"         the reply's tokens only
    "post_instruction"  the chat-template tokens between the request and the reply
    [i, j, ...]         token indices within the prompt; negative counts from its end

Every intervention turns its positions into a mask over the tokens of each forward chunk
(prefill or one decode step) and edits only those: `apply_delta(hidden, selection(...), δ)`
is the whole hook body of every single-layer edit. Masks are cached per forward in
`ctx.extra`, so interventions at many layers compute them once.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Union

import torch

from ..errors import RefusalScopeError
from ..types import PositionKeyword, Positions, choices

#: ctx -> [B] bool (the rows to steer) or None (all rows): how a gate restricts an intervention
RowFilter = Callable[[Any], "torch.Tensor | None"]
#: (mask [B, T], every token selected, any token selected)
Selection = tuple[torch.Tensor, bool, bool]
#: [N, d] residual vectors -> [N, d] float32 changes
DeltaFn = Callable[[torch.Tensor], torch.Tensor]
#: positions after `check_positions`: a keyword, or a tuple of prompt token indices
CheckedPositions = Union[PositionKeyword, tuple[int, ...]]  # noqa: UP007 - a runtime alias
POSITION_KEYWORDS: tuple[str, ...] = choices(PositionKeyword)

__all__ = [
    "POSITION_KEYWORDS",
    "CheckedPositions",
    "DeltaFn",
    "Positions",
    "RowFilter",
    "Selection",
    "apply_delta",
    "check_positions",
    "position_mask",
    "position_text",
    "positions_to_json",
    "resolve_positions",
    "selection",
]


def check_positions(positions: Positions) -> CheckedPositions:
    """Validate a positions argument; return the keyword or a tuple of ints."""
    fix = (
        "use 'all', 'prompt', 'generated', 'post_instruction', or a list of prompt token "
        "indices such as [-1] (negative indices count from the end of the prompt)"
    )
    if isinstance(positions, str):
        if positions not in POSITION_KEYWORDS:
            raise RefusalScopeError(f"unknown position keyword '{positions}'", fix)
        return positions
    try:
        items = list(positions)
    except TypeError:
        raise RefusalScopeError(f"positions must be a keyword or a list of integers, got {positions!r}", fix) from None
    out = []
    for p in items:
        try:
            if isinstance(p, bool):
                raise TypeError
            out.append(operator.index(p))
        except TypeError:
            raise RefusalScopeError(f"position {p!r} is not an integer token index", fix) from None
    if not out:
        raise RefusalScopeError("an empty list of positions steers nothing", fix)
    return tuple(out)


def resolve_positions(positions: Positions, model: Any) -> CheckedPositions:
    """Turn model-dependent keywords ('post_instruction') into explicit prompt indices."""
    checked = check_positions(positions)
    if checked == "post_instruction":
        return tuple(range(-len(model.eoi_ids), 0))
    return checked


def positions_to_json(positions: Positions) -> str | list[int]:
    """How a spec file writes positions: the keyword, or a plain list of ints."""
    return positions if isinstance(positions, str) else [int(p) for p in positions]


def position_text(positions: Positions) -> str:
    """Positions in words, for `describe()`."""
    if isinstance(positions, str):
        return {"all": "all tokens", "prompt": "prompt tokens", "generated": "generated tokens"}.get(
            positions, "post-instruction tokens"
        )
    return "prompt positions " + ", ".join(map(str, positions))


def position_mask(ctx: Any, positions: CheckedPositions) -> torch.Tensor:
    """[B, T] bool: the tokens of this forward chunk that `positions` selects.

    Cached in `ctx.extra`, so interventions at many layers compute it once per forward.
    """
    key = ("refusalscope.positions", positions)
    cached = ctx.extra.get(key)
    if cached is not None:
        return cached
    if positions == "all":
        mask = ctx.chunk_mask > 0
    elif positions == "prompt":
        mask = ctx.is_prompt()
    elif positions == "generated":
        mask = ctx.is_generated()
    else:
        index = ctx.token_index()
        lengths = ctx.prompt_lengths[:, None]
        wanted = torch.tensor(positions, dtype=torch.long, device=index.device)
        targets = torch.where(wanted[None] < 0, lengths + wanted[None], wanted[None])  # [B, P]
        mask = (index[..., None] == targets[:, None, :]).any(-1) & ctx.is_prompt()
    ctx.extra[key] = mask
    return mask


def selection(ctx: Any, positions: CheckedPositions, rows: RowFilter | None = None) -> Selection:
    """(mask [B, T], all selected, any selected) for `apply_delta`: the positions' mask,
    restricted to the rows `rows(ctx)` keeps; cached per forward when no row filter applies."""
    if rows is not None:
        keep = rows(ctx)
        if keep is not None:
            mask = position_mask(ctx, positions) & keep[:, None]
            return mask, bool(mask.all()), bool(mask.any())
    key = ("refusalscope.selection", positions)
    hit = ctx.extra.get(key)
    if hit is None:
        mask = position_mask(ctx, positions)
        hit = ctx.extra[key] = (mask, bool(mask.all()), bool(mask.any()))
    return hit


def apply_delta(hidden: torch.Tensor, chosen: Selection, delta_fn: DeltaFn) -> torch.Tensor | None:
    """hidden + delta_fn(x) on the selected tokens only; None when nothing is selected.

    `chosen` is `selection`'s (mask, all, any); `delta_fn` maps [N, d] residual vectors
    to [N, d] float32 changes. When every token is selected the edit runs on the whole
    chunk at once (no gather/scatter), which is the common case in decode steps.
    """
    mask, everything, anything = chosen
    if everything:
        flat = hidden.reshape(-1, hidden.shape[-1])
        return hidden + delta_fn(flat).reshape(hidden.shape).to(hidden.dtype)
    if not anything:
        return None
    index = mask.nonzero(as_tuple=True)
    return hidden.index_put(index, delta_fn(hidden[index]).to(hidden.dtype), accumulate=True)
