"""Interventions on the residual stream: SAE feature edits, directional ablation, ActAdd.

Every intervention acts on the residual stream after a decoder block (hook point `l`, or
`"embed"` for the token embeddings) at chosen token positions, and contributes hooks to
a ChatModel through `.hooks(model)`, so it works in `generate` (KV-cached, batched),
`residual`, `next_token_logits`, or a `with steer(model, ...)` block. Positions:

    "all"               every real token (prompt and generated; padding never)
    "prompt"            the prompt's tokens only
    "generated"         the reply's tokens only
    "post_instruction"  the chat-template tokens between the request and the reply
    [i, j, ...]         token indices within the prompt; negative counts from its end

The maths, per selected token x (the residual vector, d_model entries):

    feature  x + Σ_j (f'_j − f_j) · W_dec[j]        f = the SAE's latents of x
             set: f'_j = v_j;  scale: f'_j = c·f_j;  add: f'_j = f_j + v_j
    ablate   x − (x·d̂) d̂                             at every layer (and the embedding)
    actadd   x + c · d                               at one layer
    clamp    x + (v − (x − b)·d̂) d̂                   lm-eval's 'clamp' (d̂ = d/|d|)

The feature edit keeps the SAE's reconstruction error: a setting that leaves every latent
as it was leaves the model exactly as it was. Only the steered latents are computed:
for ReLU, JumpReLU and (threshold-form) BatchTopK SAEs that is O(d_model · |features|)
per token. A TopK latent is active only if it is among the k largest of all d_sae, so the
exact f_j needs the full encoder (O(d_model · d_sae) per steered token, about half the
cost of a full encode/decode; the decoder is still only |features| rows). `add` needs no
encoder at all. `keep_error=False` instead replaces x by the SAE's reconstruction with the
edited latents (encode → edit → decode, as in much published code), which costs a full
encode and decode and changes the model even when nothing is edited.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

from ..errors import RefusalScopeError

Positions = Union[str, Sequence[int]]  # noqa: UP007 - a runtime alias, like models.chat.Positions
RowFilter = Callable[[Any], "torch.Tensor | None"]  # ctx -> [B] bool (rows to steer) or None
POSITION_KEYWORDS = ("all", "prompt", "generated", "post_instruction")
MODES = ("set", "scale", "add")


# ---------------------------------------------------------------------- positions
def check_positions(positions: Positions) -> str | tuple[int, ...]:
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


def resolve_positions(positions: Positions, model) -> str | tuple[int, ...]:
    """Turn model-dependent keywords ('post_instruction') into explicit prompt indices."""
    positions = check_positions(positions)
    if positions == "post_instruction":
        return tuple(range(-len(model.eoi_ids), 0))
    return positions


def positions_to_json(positions) -> str | list[int]:
    return positions if isinstance(positions, str) else [int(p) for p in positions]


def position_mask(ctx, positions: str | tuple[int, ...]) -> torch.Tensor:
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


def _selected(ctx, positions, rows: RowFilter | None):
    """(mask [B, T], all selected, any selected); cached per forward when no row filter."""
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


def apply_delta(hidden: torch.Tensor, selection, delta_fn) -> torch.Tensor | None:
    """hidden + delta_fn(x) on the selected tokens only; None when nothing is selected.

    `selection` is `_selected`'s (mask, all, any); `delta_fn` maps [N, d] residual vectors
    to [N, d] float32 changes.
    """
    mask, everything, anything = selection
    if everything:
        flat = hidden.reshape(-1, hidden.shape[-1])
        return hidden + delta_fn(flat).reshape(hidden.shape).to(hidden.dtype)
    if not anything:
        return None
    index = mask.nonzero(as_tuple=True)
    return hidden.index_put(index, delta_fn(hidden[index]).to(hidden.dtype), accumulate=True)


# ---------------------------------------------------------------------- helpers
def as_direction(direction, name: str = "direction") -> torch.Tensor:
    """A float32 CPU vector from a tensor, array or list."""
    try:
        vec = torch.as_tensor(direction).detach().to("cpu", torch.float32)
    except Exception as exc:  # noqa: BLE001 - any unconvertible input
        raise RefusalScopeError(f"{name} is not a vector of numbers: {exc}") from None
    vec = vec.squeeze()
    if vec.ndim != 1:
        raise RefusalScopeError(f"{name} must be one vector of d_model numbers, got shape {tuple(vec.shape)}")
    if not torch.isfinite(vec).all():
        raise RefusalScopeError(f"{name} contains NaN or infinite values")
    return vec


def finite(values: list[float], what: str) -> list[float]:
    """NaN or infinite magnitudes would silently turn every steered activation into NaN."""
    import math

    for v in values:
        if not math.isfinite(v):
            raise RefusalScopeError(f"the {what} must be a finite number, got {v}", "use an ordinary number")
    return values


def _unit(vec: torch.Tensor, name: str = "direction") -> torch.Tensor:
    norm = vec.norm()
    if norm == 0:
        raise RefusalScopeError(f"the {name} is the zero vector", "pass a non-zero direction")
    return vec / norm


def check_point(model, point) -> None:
    model.hooks.module(point)  # raises a clear error for a bad layer


def check_vector(model, vec: torch.Tensor, what: str) -> None:
    if vec.shape[-1] != model.d_model:
        raise RefusalScopeError(
            f"the {what} has {vec.shape[-1]} entries but {model.info.name} has d_model={model.d_model}",
            f"use a {what} computed on {model.info.name}",
        )


def point_order(point) -> int:
    """Depth of a hook point, for ordering: the embedding comes before block 0."""
    return -1 if point == "embed" else int(point)


def sae_point(sae) -> int | str:
    """The hook point (resid_post of a block, or 'embed') whose activations `sae` reads."""
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


def point_name(point) -> str:
    return "embedding" if point == "embed" else f"layer {point}"


def _fmt(v: float) -> str:
    return f"{v:g}"


# ---------------------------------------------------------------------- base
class Intervention:
    """Base class: something that edits the residual stream at some hook points."""

    kind: str = "intervention"
    positions: Positions = "all"

    def points(self, model) -> list:
        """The hook points this intervention writes to."""
        raise NotImplementedError

    def check(self, model) -> None:
        """Raise a RefusalScopeError if this intervention cannot act on `model`."""
        for point in self.points(model):
            check_point(model, point)

    def touches_prompt(self) -> bool:
        return self.positions != "generated"

    @property
    def prefix_safe(self) -> bool:
        """True when a token's edit depends only on the token and its index from the start
        of its prompt: then ChatModel may compute a prefix all prompts share once, for all
        rows (positions counted from the end of the prompt, and gates, rule that out)."""
        p = self.positions
        return p in ("all", "prompt", "generated") or (not isinstance(p, str) and all(i >= 0 for i in p))

    def hooks(self, model, rows: RowFilter | None = None) -> list:
        """[(point, fn)] for `model`; `rows(ctx)` optionally restricts which rows are steered."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


# ---------------------------------------------------------------------- SAE features
class FeatureSteer(Intervention):
    """Set, scale or add to a set of latents of one SAE at its layer.

    >>> FeatureSteer(sae, [1234, 77], "set", 8.0)          # clamp both latents to 8
    >>> FeatureSteer(sae, [1234], "scale", -3.0)           # suppress (Yeo et al.)
    >>> FeatureSteer(sae, [1234], "add", 4.0, positions="generated")

    `value` is one number for all features or one per feature. The SAE may be an `SAE`
    or anything `refusalscope.sae.load_sae` accepts (then its source is recorded for the
    spec file); `sae_source` names where a given SAE object can be reloaded from.
    """

    kind = "feature"

    def __init__(
        self,
        sae,
        features: Sequence[int] | int,
        mode: str = "set",
        value: float | Sequence[float] = 0.0,
        *,
        positions: Positions = "all",
        layer: int | str | None = None,
        keep_error: bool = True,
        sae_source: str | None = None,
    ):
        from .spec import resolve_sae

        self.sae, self.sae_source = resolve_sae(sae, sae_source)
        if isinstance(features, int) or (torch.is_tensor(features) and features.ndim == 0):
            features = [int(features)]
        self.features = [int(f) for f in features]
        if not self.features:
            raise RefusalScopeError("no features were given", "pass at least one latent index")
        if len(set(self.features)) != len(self.features):
            raise RefusalScopeError(f"feature indices repeat: {self.features}", "list each latent once")
        self.sae.check_features(torch.tensor(self.features))
        if mode not in MODES:
            raise RefusalScopeError(f"unknown feature mode '{mode}'", "use 'set' (clamp), 'scale' or 'add'")
        self.mode = mode
        values = [float(value)] * len(self.features) if isinstance(value, (int, float)) else [float(v) for v in value]
        finite(values, "feature steering value")
        if len(values) != len(self.features):
            raise RefusalScopeError(
                f"{len(values)} values for {len(self.features)} features",
                "give one value for all features or exactly one per feature",
            )
        self.values = values
        self.positions = check_positions(positions)
        trained = sae_point(self.sae)
        if layer is None:
            if trained is None:
                raise RefusalScopeError(
                    "the SAE does not record which layer it was trained on",
                    "pass layer= explicitly (the decoder block whose output it reads)",
                )
            layer = trained
        elif trained is not None and layer != trained:
            raise RefusalScopeError(
                f"the SAE was trained on {point_name(trained)} ({self.sae.cfg.hook_name}), not {point_name(layer)}",
                f"steer {point_name(trained)} with this SAE, or use an SAE trained on {point_name(layer)}",
            )
        self.layer = layer
        self.keep_error = bool(keep_error)

    def points(self, model) -> list:
        return [self.layer]

    def check(self, model) -> None:
        self.sae.check_model(model)
        super().check(model)

    # The latents of x that we steer, from precomputed slices of the encoder.
    def _encoder(self, device):
        sae, cfg = self.sae, self.sae.cfg
        idx = torch.tensor(self.features, dtype=torch.long)
        b_dec = sae.b_dec.detach().to(device, torch.float32) if cfg.apply_b_dec_to_input else None
        scale = float(cfg.input_scale)
        arch = cfg.architecture
        if arch == "topk":
            w_enc = sae.W_enc.detach().to(device, torch.float32)
            b_enc = sae.b_enc.detach().to(device, torch.float32)
            idx_d, k = idx.to(device), cfg.k
        else:
            w_enc = sae.W_enc.detach()[:, idx].to(device, torch.float32).contiguous()
            b_enc = sae.b_enc.detach()[idx].to(device, torch.float32)
            theta = None if sae.threshold is None else sae.threshold.detach()[idx].to(device, torch.float32)

        def encode(x: torch.Tensor) -> torch.Tensor:
            x = x.float()
            if scale != 1.0:
                x = x * scale
            if b_dec is not None:
                x = x - b_dec
            pre = x @ w_enc + b_enc
            if arch == "topk":
                kth = pre.topk(k, dim=-1).values[..., -1:]
                sub = pre[..., idx_d]
                return torch.relu(sub) * (sub >= kth)
            if theta is None:
                return torch.relu(pre)
            return torch.relu(pre) * (pre > theta)

        return encode

    def _delta_fn(self, device):
        values = torch.tensor(self.values, dtype=torch.float32, device=device)
        dirs = self.sae.decoder_directions(self.features).detach().to(device, torch.float32)  # [k, d]
        if not self.keep_error:
            return self._reconstruction_fn(device, values)
        if self.mode == "add":
            shift = values @ dirs

            return lambda x: shift.expand(x.shape[0], -1)
        encode = self._encoder(device)
        if self.mode == "set":
            return lambda x: (values - encode(x)) @ dirs
        factor = values - 1.0
        return lambda x: (factor * encode(x)) @ dirs

    def _reconstruction_fn(self, device, values):
        sae = self.sae
        where = sae.W_enc.device
        idx = torch.tensor(self.features, dtype=torch.long, device=where)
        values = values.to(where)
        mode = self.mode

        def delta(x):
            f = sae.encode(x.to(where, sae.W_enc.dtype))
            old = f[..., idx]
            new = values.to(f.dtype) if mode == "set" else (old * values if mode == "scale" else old + values)
            f = f.index_copy(-1, idx, new.expand_as(old).to(f.dtype))
            return sae.decode(f).float().to(x.device) - x.float()

        return delta

    def hooks(self, model, rows: RowFilter | None = None) -> list:
        self.check(model)
        positions = resolve_positions(self.positions, model)
        delta_fn = self._delta_fn(model.device)

        def fn(hidden, ctx):
            return apply_delta(hidden, _selected(ctx, positions, rows), delta_fn)

        return [(self.layer, fn)]

    def to_dict(self) -> dict[str, Any]:
        from .spec import sae_ref

        out = {
            "kind": self.kind,
            "sae": sae_ref(self.sae, self.sae_source),
            "layer": self.layer,
            "features": list(self.features),
            "mode": self.mode,
            "value": self.values[0] if len(set(self.values)) == 1 else list(self.values),
            "positions": positions_to_json(self.positions),
        }
        if not self.keep_error:
            out["keep_error"] = False
        return out

    def describe(self) -> str:
        c = self.sae.cfg
        vals = _fmt(self.values[0]) if len(set(self.values)) == 1 else "[" + ", ".join(map(_fmt, self.values)) + "]"
        action = {"set": f"set to {vals}", "scale": f"scaled by {vals}", "add": f"increased by {vals}"}
        feats = ", ".join(map(str, self.features[:8])) + (f", … ({len(self.features)} in all)" if len(self.features) > 8 else "")
        error = "" if self.keep_error else ", replaced by the SAE reconstruction (error dropped)"
        return (
            f"{point_name(self.layer)}: SAE latents [{feats}] {action[self.mode]} at {_pos_text(self.positions)} "
            f"({c.architecture} {c.d_in}→{c.d_sae}{error})"
        )


def _pos_text(positions) -> str:
    if isinstance(positions, str):
        return {"all": "all tokens", "prompt": "prompt tokens", "generated": "generated tokens"}.get(
            positions, "post-instruction tokens"
        )
    return "prompt positions " + ", ".join(map(str, positions))


# ---------------------------------------------------------------------- directions
class DirectionAblation(Intervention):
    """Project a direction out of the residual stream at every layer (Arditi et al., 2024).

    `layers="all"` hooks the embedding output and the output of every block, so no block
    reads a residual stream with a component along d̂ (the published variant also removes
    it between attention and MLP inside a block, which resid_post hooks cannot reach).
    """

    kind = "ablation"

    def __init__(self, direction, layers: str | Sequence = "all", *, positions: Positions = "all"):
        self.direction = as_direction(direction)
        self.unit = _unit(self.direction)
        if isinstance(layers, str) and layers != "all":
            raise RefusalScopeError(f"unknown layers '{layers}'", "use 'all' or a list of layer indices (and/or 'embed')")
        self.layers = layers if isinstance(layers, str) else list(layers)
        if not isinstance(self.layers, str) and not self.layers:
            raise RefusalScopeError("no layers given for the ablation", "use layers='all' or a list of layers")
        self.positions = check_positions(positions)

    def points(self, model) -> list:
        if self.layers == "all":
            return ["embed", *range(model.n_layers)]
        return list(self.layers)

    def check(self, model) -> None:
        check_vector(model, self.direction, "ablation direction")
        super().check(model)

    def hooks(self, model, rows: RowFilter | None = None) -> list:
        self.check(model)
        positions = resolve_positions(self.positions, model)
        unit = self.unit.to(model.device)

        def delta(x):
            return -(x.float() @ unit)[:, None] * unit

        def fn(hidden, ctx):
            return apply_delta(hidden, _selected(ctx, positions, rows), delta)

        return [(p, fn) for p in self.points(model)]

    def to_dict(self) -> dict[str, Any]:
        from .spec import direction_ref

        return {
            "kind": self.kind,
            "direction": direction_ref(self.direction),
            "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
            "positions": positions_to_json(self.positions),
        }

    def describe(self) -> str:
        where = "every layer and the embedding" if self.layers == "all" else "layers " + ", ".join(map(str, self.layers))
        return f"ablate a direction (|d|={self.direction.norm():.3g}) at {where}, {_pos_text(self.positions)}"


class ActAdd(Intervention):
    """Add `coefficient · direction` to the residual stream after one block.

    The direction is used as given (e.g. an unnormalised difference of means, as in the
    refusal-direction work); `normalize=True` scales it to unit norm first.
    """

    kind = "actadd"

    def __init__(self, direction, layer: int | str, coefficient: float = 1.0, *, positions: Positions = "all", normalize: bool = False):
        self.direction = as_direction(direction)
        self.normalize = bool(normalize)
        if self.normalize:
            _unit(self.direction)
        self.layer = layer
        self.coefficient = finite([float(coefficient)], "ActAdd coefficient")[0]
        self.positions = check_positions(positions)

    @property
    def vector(self) -> torch.Tensor:
        d = _unit(self.direction) if self.normalize else self.direction
        return self.coefficient * d

    def points(self, model) -> list:
        return [self.layer]

    def check(self, model) -> None:
        check_vector(model, self.direction, "ActAdd direction")
        super().check(model)

    def hooks(self, model, rows: RowFilter | None = None) -> list:
        self.check(model)
        positions = resolve_positions(self.positions, model)
        shift = self.vector.to(model.device)

        def fn(hidden, ctx):
            return apply_delta(hidden, _selected(ctx, positions, rows), lambda x: shift.expand(x.shape[0], -1))

        return [(self.layer, fn)]

    def to_dict(self) -> dict[str, Any]:
        from .spec import direction_ref

        out = {
            "kind": self.kind,
            "direction": direction_ref(self.direction),
            "layer": self.layer,
            "coefficient": self.coefficient,
            "positions": positions_to_json(self.positions),
        }
        if self.normalize:
            out["normalize"] = True
        return out

    def describe(self) -> str:
        norm = 1.0 if self.normalize else float(self.direction.norm())
        return f"{point_name(self.layer)}: add {_fmt(self.coefficient)} × direction (|d|={norm:.3g}) at {_pos_text(self.positions)}"


class DirectionClamp(Intervention):
    """Set the component of (x − bias) along d̂ to `value`: lm-eval's 'clamp' action.

    With an SAE feature as the direction (`from_sae_feature`) this is what
    lm-evaluation-harness' steered model does for `action=clamp`: d = W_dec[j], bias =
    b_dec. Note that this is not the same as setting the SAE latent (FeatureSteer 'set').
    """

    kind = "clamp"

    def __init__(self, direction, layer: int | str, value: float, *, bias=None, positions: Positions = "all"):
        self.direction = as_direction(direction)
        self.unit = _unit(self.direction)
        self.bias = None if bias is None else as_direction(bias, "bias")
        if self.bias is not None and self.bias.shape != self.direction.shape:
            raise RefusalScopeError("the clamp bias and direction have different sizes")
        self.layer = layer
        self.value = finite([float(value)], "clamp value")[0]
        self.positions = check_positions(positions)
        self.origin: dict[str, Any] | None = None  # {"sae": SAE, "source": str, "feature": int}

    @classmethod
    def from_sae_feature(cls, sae, feature: int, value: float, *, positions: Positions = "all", layer=None, sae_source=None):
        from .spec import resolve_sae

        sae, source = resolve_sae(sae, sae_source)
        sae.check_features(torch.tensor([int(feature)]))
        trained = sae_point(sae)
        if layer is None:
            layer = trained
        elif trained is not None and layer != trained:
            raise RefusalScopeError(
                f"the SAE was trained on {point_name(trained)}, not {point_name(layer)}",
                f"clamp at {point_name(trained)} with this SAE",
            )
        if layer is None:
            raise RefusalScopeError("the SAE does not record its layer", "pass layer= explicitly")
        scale = float(sae.cfg.input_scale)
        out = cls(
            sae.W_dec.detach()[int(feature)], layer, value, bias=sae.b_dec.detach() / scale, positions=positions
        )
        out.origin = {"sae": sae, "source": source, "feature": int(feature)}
        return out

    def points(self, model) -> list:
        return [self.layer]

    def check(self, model) -> None:
        check_vector(model, self.direction, "clamp direction")
        if self.origin is not None:
            self.origin["sae"].check_model(model)
        super().check(model)

    def hooks(self, model, rows: RowFilter | None = None) -> list:
        self.check(model)
        positions = resolve_positions(self.positions, model)
        unit = self.unit.to(model.device)
        offset = self.value + (0.0 if self.bias is None else float(self.bias @ self.unit))

        def delta(x):
            return (offset - x.float() @ unit)[:, None] * unit

        def fn(hidden, ctx):
            return apply_delta(hidden, _selected(ctx, positions, rows), delta)

        return [(self.layer, fn)]

    def to_dict(self) -> dict[str, Any]:
        from .spec import direction_ref, sae_ref

        out: dict[str, Any] = {"kind": self.kind, "layer": self.layer, "value": self.value}
        if self.origin is not None:
            out["sae"] = sae_ref(self.origin["sae"], self.origin["source"])
            out["feature"] = self.origin["feature"]
        else:
            out["direction"] = direction_ref(self.direction)
            out["bias"] = None if self.bias is None else direction_ref(self.bias)
        out["positions"] = positions_to_json(self.positions)
        return out

    def describe(self) -> str:
        what = f"SAE latent {self.origin['feature']}'s decoder direction" if self.origin else "a direction"
        bias = " (relative to the SAE's b_dec)" if self.origin else (" (relative to a bias)" if self.bias is not None else "")
        return f"{point_name(self.layer)}: clamp the component along {what} to {_fmt(self.value)}{bias} at {_pos_text(self.positions)}"
