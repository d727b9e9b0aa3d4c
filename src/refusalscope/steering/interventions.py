"""Interventions on the residual stream: SAE feature edits, directional ablation, ActAdd.

Every intervention acts on the residual stream after a decoder block (hook point `l`, or
`"embed"` for the token embeddings) at chosen token positions (see `positions`), and
contributes hooks to a ChatModel through `.hooks(model)`, so it works in `generate`
(KV-cached, batched), `residual`, `next_token_logits`, or a `with steer(model, ...)` block.
Each says only what it adds to a selected residual vector (`delta_fn`); the hook around it
is shared (`kinds.Intervention.hooks`).

The maths, per selected token x (the residual vector, d_model entries):

    feature  x + Σ_j (f'_j − f_j) · W_dec[j]        f = the SAE's latents of x
             set: f'_j = v_j;  scale: f'_j = c·f_j;  add: f'_j = f_j + v_j
    ablate   x − (x·d̂) d̂                             at every layer (and the embedding)
    actadd   x + c · d                               at one layer
    clamp    x + (v − (x − b)·d̂) d̂                   lm-eval's 'clamp' (d̂ = d/|d|)

The feature edit keeps the SAE's reconstruction error: a setting that leaves every latent
as it was leaves the model exactly as it was. Only the steered latents are computed
(`SAE.encode_subset`): for ReLU, JumpReLU and (threshold-form) BatchTopK SAEs that is
O(d_model · |features|) per token. A TopK latent is active only if it is among the k
largest of all d_sae, so the exact f_j needs the full encoder (O(d_model · d_sae) per
steered token, about half the cost of a full encode/decode; the decoder is still only
|features| rows). `add` needs no encoder at all. `keep_error=False` instead replaces x by
the SAE's reconstruction with the edited latents (encode → edit → decode, as in much
published code), which costs a full encode and decode and changes the model even when
nothing is edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from ..checks import choice, number
from ..errors import RefusalScopeError
from ..sae.model import SAE
from ..types import Mode, choices
from .kinds import Intervention, SpecReader, intervention_kind
from .latents import latents_fn, steering_view
from .points import Point, point_name, sae_point
from .positions import DeltaFn, Positions, check_positions, position_text, positions_to_json
from .references import (
    as_direction,
    check_vector,
    direction_ref,
    finite,
    number_text,
    resolve_sae,
    sae_ref,
    unit_vector,
)

MODES: tuple[str, ...] = choices(Mode)

__all__ = ["MODES", "ActAdd", "DirectionAblation", "DirectionClamp", "FeatureSteer"]


# ---------------------------------------------------------------------- SAE features
@intervention_kind
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
    spec_keys = ("kind", "sae", "layer", "features", "mode", "value", "positions", "keep_error")

    def __init__(
        self,
        sae: SAE | str,
        features: Sequence[int] | int,
        mode: Mode = "set",
        value: float | Sequence[float] = 0.0,
        *,
        positions: Positions = "all",
        layer: Point | None = None,
        keep_error: bool = True,
        sae_source: str | None = None,
    ):
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

    def points(self, model: Any) -> list[Point]:
        return [self.layer]

    def check(self, model: Any) -> None:
        self.sae.check_model(model)
        super().check(model)

    def delta_fn(self, model: Any) -> DeltaFn:
        device = model.device
        values = torch.tensor(self.values, dtype=torch.float32, device=device)
        if not self.keep_error:
            return self._reconstruction_fn(device, values)
        dirs = self.sae.decoder_directions(self.features).detach().to(device, torch.float32)  # [k, d]
        if self.mode == "add":
            shift = values @ dirs
            return lambda x: shift.expand(x.shape[0], -1)
        latents = latents_fn(self.sae, self.features, device)
        if self.mode == "set":
            return lambda x: (values - latents(x)) @ dirs
        factor = values - 1.0
        return lambda x: (factor * latents(x)) @ dirs

    def _reconstruction_fn(self, device, values: torch.Tensor) -> DeltaFn:
        sae = self.sae
        if sae.W_enc.device != torch.device(device):  # the SAE where its layer runs, in its own dtype
            sae = steering_view(sae, device, dtype=sae.W_enc.dtype)
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

    def to_spec(self) -> dict[str, Any]:
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

    @classmethod
    def from_spec(cls, reader: SpecReader, d: dict[str, Any], where: str) -> FeatureSteer:
        sae, source = reader.sae(d["sae"], where)
        value = d.get("value", 0.0)
        values = (
            [number(v, f"{where}.value entry") for v in value]
            if isinstance(value, list)
            else number(value, f"{where}.value")
        )
        return cls(
            sae,
            reader.latents(d["features"], f"{where}.features"),
            cast(Mode, choice(d.get("mode", "set"), f"{where}.mode", MODES)),
            values,
            positions=d.get("positions", "all"),
            layer=reader.optional_layer(d.get("layer"), f"{where}.layer"),
            keep_error=reader.flag(d, "keep_error", True, where),
            sae_source=source,
        )

    def describe(self) -> str:
        c = self.sae.cfg
        vals = (
            number_text(self.values[0])
            if len(set(self.values)) == 1
            else "[" + ", ".join(map(number_text, self.values)) + "]"
        )
        action = {"set": f"set to {vals}", "scale": f"scaled by {vals}", "add": f"increased by {vals}"}
        feats = ", ".join(map(str, self.features[:8])) + (
            f", … ({len(self.features)} in all)" if len(self.features) > 8 else ""
        )
        error = "" if self.keep_error else ", replaced by the SAE reconstruction (error dropped)"
        return (
            f"{point_name(self.layer)}: SAE latents [{feats}] {action[self.mode]} at {position_text(self.positions)} "
            f"({c.architecture} {c.d_in}→{c.d_sae}{error})"
        )


# ---------------------------------------------------------------------- directions
@intervention_kind
class DirectionAblation(Intervention):
    """Project a direction out of the residual stream at every layer (Arditi et al., 2024).

    `layers="all"` hooks the embedding output and the output of every block, so no block
    reads a residual stream with a component along d̂ (the published variant also removes
    it between attention and MLP inside a block, which resid_post hooks cannot reach).
    """

    kind = "ablation"
    spec_keys = ("kind", "direction", "layers", "positions")

    def __init__(self, direction: Any, layers: str | Sequence[Point] = "all", *, positions: Positions = "all"):
        self.direction = as_direction(direction)
        self.unit = unit_vector(self.direction)
        if isinstance(layers, str) and layers != "all":
            raise RefusalScopeError(
                f"unknown layers '{layers}'", "use 'all' or a list of layer indices (and/or 'embed')"
            )
        self.layers = layers if isinstance(layers, str) else list(layers)
        if not isinstance(self.layers, str) and not self.layers:
            raise RefusalScopeError("no layers given for the ablation", "use layers='all' or a list of layers")
        self.positions = check_positions(positions)

    def points(self, model: Any) -> list[Point]:
        if self.layers == "all":
            return ["embed", *range(model.n_layers)]
        return list(self.layers)

    def check(self, model: Any) -> None:
        check_vector(model, self.direction, "ablation direction")
        super().check(model)

    def delta_fn(self, model: Any) -> DeltaFn:
        unit = self.unit.to(model.device)
        return lambda x: -(x.float() @ unit)[:, None] * unit

    def to_spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "direction": direction_ref(self.direction),
            "layers": self.layers if isinstance(self.layers, str) else list(self.layers),
            "positions": positions_to_json(self.positions),
        }

    @classmethod
    def from_spec(cls, reader: SpecReader, d: dict[str, Any], where: str) -> DirectionAblation:
        layers = d.get("layers", "all")
        if isinstance(layers, list):
            layers = [reader.layer(x, f"{where}.layers entry") for x in layers]
        return cls(reader.direction(d["direction"], where), layers, positions=d.get("positions", "all"))

    def describe(self) -> str:
        where = (
            "every layer and the embedding" if self.layers == "all" else "layers " + ", ".join(map(str, self.layers))
        )
        return f"ablate a direction (|d|={self.direction.norm():.3g}) at {where}, {position_text(self.positions)}"


@intervention_kind
class ActAdd(Intervention):
    """Add `coefficient · direction` to the residual stream after one block.

    The direction is used as given (e.g. an unnormalised difference of means, as in the
    refusal-direction work); `normalize=True` scales it to unit norm first.
    """

    kind = "actadd"
    spec_keys = ("kind", "direction", "layer", "coefficient", "positions", "normalize")

    def __init__(
        self,
        direction: Any,
        layer: Point,
        coefficient: float = 1.0,
        *,
        positions: Positions = "all",
        normalize: bool = False,
    ):
        self.direction = as_direction(direction)
        self.normalize = bool(normalize)
        if self.normalize:
            unit_vector(self.direction)
        self.layer = layer
        self.coefficient = finite([float(coefficient)], "ActAdd coefficient")[0]
        self.positions = check_positions(positions)

    @property
    def vector(self) -> torch.Tensor:
        d = unit_vector(self.direction) if self.normalize else self.direction
        return self.coefficient * d

    def points(self, model: Any) -> list[Point]:
        return [self.layer]

    def check(self, model: Any) -> None:
        check_vector(model, self.direction, "ActAdd direction")
        super().check(model)

    def delta_fn(self, model: Any) -> DeltaFn:
        shift = self.vector.to(model.device)
        return lambda x: shift.expand(x.shape[0], -1)

    def to_spec(self) -> dict[str, Any]:
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

    @classmethod
    def from_spec(cls, reader: SpecReader, d: dict[str, Any], where: str) -> ActAdd:
        return cls(
            reader.direction(d["direction"], where),
            reader.layer(d["layer"], f"{where}.layer"),
            number(d.get("coefficient", 1.0), f"{where}.coefficient"),
            positions=d.get("positions", "all"),
            normalize=reader.flag(d, "normalize", False, where),
        )

    def describe(self) -> str:
        norm = 1.0 if self.normalize else float(self.direction.norm())
        return (
            f"{point_name(self.layer)}: add {number_text(self.coefficient)} × direction (|d|={norm:.3g}) "
            f"at {position_text(self.positions)}"
        )


@intervention_kind
class DirectionClamp(Intervention):
    """Set the component of (x − bias) along d̂ to `value`: lm-eval's 'clamp' action.

    With an SAE feature as the direction (`from_sae_feature`) this is what
    lm-evaluation-harness' steered model does for `action=clamp`: d = W_dec[j], bias =
    b_dec. Note that this is not the same as setting the SAE latent (FeatureSteer 'set').
    """

    kind = "clamp"
    spec_keys = ("kind", "sae", "feature", "direction", "bias", "layer", "value", "positions")

    def __init__(self, direction: Any, layer: Point, value: float, *, bias: Any = None, positions: Positions = "all"):
        self.direction = as_direction(direction)
        self.unit = unit_vector(self.direction)
        self.bias = None if bias is None else as_direction(bias, "bias")
        if self.bias is not None and self.bias.shape != self.direction.shape:
            raise RefusalScopeError("the clamp bias and direction have different sizes")
        self.layer = layer
        self.value = finite([float(value)], "clamp value")[0]
        self.positions = check_positions(positions)
        self.origin: dict[str, Any] | None = None  # {"sae": SAE, "source": str, "feature": int}

    @classmethod
    def from_sae_feature(
        cls,
        sae: SAE | str,
        feature: int,
        value: float,
        *,
        positions: Positions = "all",
        layer: Point | None = None,
        sae_source: str | None = None,
    ) -> DirectionClamp:
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
        out = cls(sae.W_dec.detach()[int(feature)], layer, value, bias=sae.b_dec.detach() / scale, positions=positions)
        out.origin = {"sae": sae, "source": source, "feature": int(feature)}
        return out

    def points(self, model: Any) -> list[Point]:
        return [self.layer]

    def check(self, model: Any) -> None:
        check_vector(model, self.direction, "clamp direction")
        if self.origin is not None:
            self.origin["sae"].check_model(model)
        super().check(model)

    def delta_fn(self, model: Any) -> DeltaFn:
        unit = self.unit.to(model.device)
        offset = self.value + (0.0 if self.bias is None else float(self.bias @ self.unit))
        return lambda x: (offset - x.float() @ unit)[:, None] * unit

    def to_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "layer": self.layer, "value": self.value}
        if self.origin is not None:
            out["sae"] = sae_ref(self.origin["sae"], self.origin["source"])
            out["feature"] = self.origin["feature"]
        else:
            out["direction"] = direction_ref(self.direction)
            out["bias"] = None if self.bias is None else direction_ref(self.bias)
        out["positions"] = positions_to_json(self.positions)
        return out

    @classmethod
    def from_spec(cls, reader: SpecReader, d: dict[str, Any], where: str) -> DirectionClamp:
        value = number(d["value"], f"{where}.value")
        positions = d.get("positions", "all")
        if "sae" in d:
            sae, source = reader.sae(d["sae"], where)
            return cls.from_sae_feature(
                sae,
                number(d["feature"], f"{where}.feature", integer=True, minimum=0),
                value,
                positions=positions,
                layer=reader.optional_layer(d.get("layer"), f"{where}.layer"),
                sae_source=source,
            )
        bias = d.get("bias")
        return cls(
            reader.direction(d["direction"], where),
            reader.layer(d["layer"], f"{where}.layer"),
            value,
            bias=None if bias is None else reader.direction(bias, f"{where}.bias"),
            positions=positions,
        )

    def describe(self) -> str:
        what = f"SAE latent {self.origin['feature']}'s decoder direction" if self.origin else "a direction"
        bias = (
            " (relative to the SAE's b_dec)"
            if self.origin
            else (" (relative to a bias)" if self.bias is not None else "")
        )
        return (
            f"{point_name(self.layer)}: clamp the component along {what} to {number_text(self.value)}{bias} "
            f"at {position_text(self.positions)}"
        )
