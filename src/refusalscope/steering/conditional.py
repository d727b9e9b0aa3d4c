"""Conditional steering: steer a prompt only when a gate fires on it.

O'Brien et al. find that refusal steering costs capability even on safe inputs; the
mitigation is to steer only requests that look harmful. A `Conditional` wraps any
interventions with a gate read on the prompt tokens during the prefill:

    gate score per token   feature: an SAE latent's activation
                           direction: x · d̂ (a projection, e.g. on the refusal direction)
                           probe: x · w + b (a linear probe's logit; optionally over SAE latents)
    per prompt             max | mean | last over the gate's prompt positions
    fires                  when that exceeds `threshold`

The decision is made once per prompt in the prefill and remembered per row across the
KV-cached decode steps (keyed by the batch's stable row ids), so the whole reply of a
gated prompt is steered and the reply of an ungated prompt is exactly the unsteered one.

Because the gate is measured in the same forward pass as the steering, it must read a
layer at or before the earliest layer its interventions change (at the same layer it
sees the residual before the change); an intervention that touches generated tokens only
may sit at any layer. Position 0 (BOS, with norms ~100× the rest) is skipped by default.

`fired` / `seen` count decisions as they are made; `decisions(model, prompts)` computes
them for a list of prompts in prompt order without generating, so an evaluation can
report on which benign prompts the capability cost was avoided.

Shared prefixes. ChatModel (and GCG) may compute the chat template's prefix, identical for
every prompt, once and run each prompt's suffix over its KV cache. The gate then sees the
prefix in one forward and the rest of the prompt in another: it remembers the prefix
tokens' scores from the first (keyed by that forward's batch id, or `ctx.extra[PREFIX_ID]`),
and in the second lays prefix and suffix scores out as one whole-prompt forward would and
reduces them there, so the decision is the one a single forward makes (bit-identical when
the per-token scores are). Nothing is steered in the prefix forward, so a conditional is
`prefix_safe` only when every edit it controls stays out of the prefix: generated tokens,
or prompt positions counted from the end (e.g. 'post_instruction'), which `prefix_tail`
asks ChatModel to keep after the prefix. Edits of 'all' / 'prompt' tokens, or of positions
counted from the start, would need a steered prefix for the rows that fire: not prefix-safe.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from ..checks import choice, number
from ..errors import RefusalScopeError
from ..models.hooks import ForwardContext
from ..models.placement import at_layer
from ..sae.model import SAE
from ..types import Reduction, choices
from .kinds import GATE_COMMON, Gate, Hook, Intervention, SpecReader, gate_kind, intervention_kind
from .latents import latents_fn, steering_view
from .points import Point, point_name, point_order, sae_point
from .positions import Positions, RowFilter, check_positions, position_mask, positions_to_json, resolve_positions
from .references import as_direction, check_vector, direction_ref, number_text, resolve_sae, sae_ref, unit_vector

REDUCTIONS: tuple[str, ...] = choices(Reduction)
#: ctx.extra key: which prefix forward a forward over a prefilled cache continues (its batch
#: id); without it the gate looks the prefix up under the continuing forward's own batch id
PREFIX_ID = "refusalscope.prefix_id"
_PREFIXES_KEPT = 16  # prefix forwards whose gate scores a conditional remembers

__all__ = [
    "GATE_COMMON",
    "REDUCTIONS",
    "Conditional",
    "DirectionGate",
    "FeatureGate",
    "Gate",
    "GateDecisions",
    "PREFIX_ID",
    "ProbeGate",
]


# ---------------------------------------------------------------------- gates
# A gate's score of a token must not depend on how many other tokens share its forward
# (a decision must not change with the batch a prompt lands in, and a shared prefix may be
# scored in a forward of its own). A matrix-vector product does not promise that (its
# rounding can change with the number of rows: seen on a CPU), a product and a sum over the
# last dimension reduce each token on its own.
def _dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., d] · w [d] -> [...], each token reduced on its own."""
    return (x * w).sum(-1)


def _token_latents(sae: SAE, features: Sequence[int], device: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [..., d_in] -> [..., len(features)] float32 activations (as `latents_fn`), each
    latent's pre-activation a `_dot` per token; TopK runs the whole encoder (`latents_fn`)."""
    if sae.cfg.architecture == "topk":
        return latents_fn(sae, features, device)
    view = steering_view(sae, device)
    index = torch.tensor(list(features), dtype=torch.long)
    view.check_features(index)
    index = index.to(view.W_enc.device)
    columns = view.W_enc[:, index].T.contiguous()  # [k, d_in]
    bias = view.b_enc[index]
    theta = view.threshold[index] if view.threshold is not None else None

    def fn(x: torch.Tensor) -> torch.Tensor:
        inputs = view.encoder_input(x)
        pre = torch.stack([_dot(inputs, column) for column in columns], dim=-1) + bias
        return view.activation(pre, theta)

    return fn


@gate_kind
class FeatureGate(Gate):
    """The activation of one SAE latent (e.g. a 'harm' feature) at the SAE's layer."""

    kind = "feature"
    spec_keys = ("sae", "feature")

    def __init__(self, sae: SAE | str, feature: int, *, sae_source: str | None = None):
        self.sae, self.sae_source = resolve_sae(sae, sae_source)
        self.feature = int(feature)
        self.sae.check_features(torch.tensor([self.feature]))
        layer = sae_point(self.sae)
        if layer is None:
            raise RefusalScopeError("the gate's SAE does not record its layer", "set sae.cfg.layer")
        self.layer = layer

    def check(self, model: Any) -> None:
        self.sae.check_model(model)
        super().check(model)

    def scorer(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        latents = _token_latents(self.sae, [self.feature], model.device)
        return lambda hidden: latents(hidden)[..., 0]

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "sae": sae_ref(self.sae, self.sae_source), "feature": self.feature}

    @classmethod
    def from_spec(cls, reader: SpecReader, g: dict[str, Any], where: str) -> FeatureGate:
        sae, source = reader.sae(g["sae"], where)
        return cls(sae, number(g["feature"], f"{where}.feature", integer=True, minimum=0), sae_source=source)

    def describe(self) -> str:
        return f"SAE latent {self.feature} at {point_name(self.layer)}"


@gate_kind
class DirectionGate(Gate):
    """The projection x · d̂ on a direction (unit-normalised unless normalize=False)."""

    kind = "direction"
    spec_keys = ("direction", "layer", "normalize")

    def __init__(self, direction: Any, layer: Point, *, normalize: bool = True):
        self.direction = as_direction(direction)
        self.normalize = bool(normalize)
        self.layer = layer

    def check(self, model: Any) -> None:
        check_vector(model, self.direction, "gate direction")
        super().check(model)

    def scorer(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        d = (unit_vector(self.direction) if self.normalize else self.direction).to(model.device)
        return lambda hidden: _dot(hidden.float(), d)

    def to_spec(self) -> dict[str, Any]:
        out = {"kind": self.kind, "direction": direction_ref(self.direction), "layer": self.layer}
        if not self.normalize:
            out["normalize"] = False
        return out

    @classmethod
    def from_spec(cls, reader: SpecReader, g: dict[str, Any], where: str) -> DirectionGate:
        return cls(
            reader.direction(g["direction"], where),
            reader.layer(g["layer"], f"{where}.layer"),
            normalize=reader.flag(g, "normalize", True, where),
        )

    def describe(self) -> str:
        return f"projection on a direction at {point_name(self.layer)}"


@gate_kind
class ProbeGate(Gate):
    """A linear probe's logit x · w + b, on the residual or on a few SAE latents.

    With `sae` and `features`, the probe reads those latents' activations (the sparse
    probes of Yeo et al.); `weights` then has one entry per feature. A scikit-learn
    LogisticRegression converts with `ProbeGate.from_sklearn`; fold any input
    standardisation into the weights first. The threshold is on the logit (0 = p 0.5).
    """

    kind = "probe"
    spec_keys = ("weights", "bias", "layer", "sae", "features")

    def __init__(
        self,
        weights: Any,
        bias: float = 0.0,
        layer: Point | None = None,
        *,
        sae: SAE | str | None = None,
        features: Sequence[int] | None = None,
        sae_source: str | None = None,
    ):
        self.weights = as_direction(weights, "probe weights")
        self.bias = float(bias)
        self.sae = self.sae_source = None
        self.features = None
        if sae is not None:
            self.sae, self.sae_source = resolve_sae(sae, sae_source)
            if features is None:
                raise RefusalScopeError("a probe over SAE latents needs features=", "list the latents it reads")
            self.features = [int(f) for f in features]
            self.sae.check_features(torch.tensor(self.features))
            if len(self.features) != self.weights.numel():
                raise RefusalScopeError(
                    f"the probe has {self.weights.numel()} weights for {len(self.features)} latents",
                    "give one weight per latent",
                )
            trained = sae_point(self.sae)
            if layer is not None and trained is not None and layer != trained:
                raise RefusalScopeError(
                    f"the probe's SAE was trained on {point_name(trained)}, not {point_name(layer)}"
                )
            layer = trained if layer is None else layer
        if layer is None:
            raise RefusalScopeError("the probe gate needs the layer it reads", "pass layer=")
        self.layer = layer

    @classmethod
    def from_sklearn(cls, clf: Any, layer: Point | None = None, **kwargs: Any) -> ProbeGate:
        coef = torch.as_tensor(clf.coef_, dtype=torch.float32).reshape(-1)
        intercept = float(torch.as_tensor(clf.intercept_).reshape(-1)[0])
        return cls(coef, intercept, layer, **kwargs)

    @classmethod
    def from_probe(cls, probe: Any, sae: SAE | None = None) -> ProbeGate:
        """The gate of a saved `probes.linear.LinearProbe` (or the folder it was saved in).

        A projection probe w·(x·d̂)+b becomes the dense probe (w d̂)·x + b; a latent probe
        needs its SAE (`sae`, else loaded from the source the probe records). Use it with
        reduce='mean', positions='post_instruction' and the probe's threshold: that is the
        quantity the probe was trained and evaluated on."""
        from ..probes.linear import LinearProbe

        if not isinstance(probe, LinearProbe):
            probe = LinearProbe.load(probe)
        spec = probe.spec
        if spec.kind == "dense":
            return cls(torch.as_tensor(probe.weights, dtype=torch.float32), probe.bias, spec.layer)
        if spec.kind == "projection":
            weights = torch.as_tensor(probe.weights[0] * probe.direction, dtype=torch.float32)
            return cls(weights, probe.bias, spec.layer)
        if sae is None:
            if not spec.sae:
                raise RefusalScopeError("the probe reads SAE latents but records no SAE source", "pass sae=")
            sae, _ = resolve_sae(spec.sae)
        if spec.sae_sha256 and sae.content_hash() != spec.sae_sha256:
            raise RefusalScopeError(
                "the SAE given is not the one the probe was trained on",
                f"use the SAE recorded in the probe ({spec.sae})",
            )
        return cls(
            torch.as_tensor(probe.weights, dtype=torch.float32),
            probe.bias,
            spec.layer,
            sae=sae,
            features=spec.features,
            sae_source=spec.sae,
        )

    def check(self, model: Any) -> None:
        if self.sae is not None:
            self.sae.check_model(model)
        else:
            check_vector(model, self.weights, "probe weight vector")
        super().check(model)

    def scorer(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        w = self.weights.to(model.device)
        if self.sae is None or self.features is None:
            return lambda hidden: _dot(hidden.float(), w) + self.bias
        latents = _token_latents(self.sae, self.features, model.device)
        return lambda hidden: _dot(latents(hidden), w) + self.bias

    def to_spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "weights": direction_ref(self.weights),
            "bias": self.bias,
            "layer": self.layer,
        }
        if self.sae is not None and self.features is not None:
            out["sae"] = sae_ref(self.sae, self.sae_source)
            out["features"] = list(self.features)
        return out

    @classmethod
    def from_spec(cls, reader: SpecReader, g: dict[str, Any], where: str) -> ProbeGate:
        bias = number(g.get("bias", 0.0), f"{where}.bias")
        layer = reader.optional_layer(g.get("layer"), f"{where}.layer")
        if "sae" in g:
            sae, source = reader.sae(g["sae"], where)
            return cls(
                reader.direction(g["weights"], where),
                bias,
                layer,
                sae=sae,
                features=reader.latents(g["features"], f"{where}.features"),
                sae_source=source,
            )
        return cls(reader.direction(g["weights"], where), bias, g["layer"] if layer is None else layer)

    def describe(self) -> str:
        over = f"{len(self.features)} SAE latents" if self.features is not None else "the residual stream"
        return f"linear probe over {over} at {point_name(self.layer)}"


# ---------------------------------------------------------------------- conditional
@dataclass
class GateDecisions:
    """Per-prompt gate scores and decisions, in the order of the prompts given."""

    scores: torch.Tensor
    fired: torch.Tensor

    @property
    def fire_rate(self) -> float:
        return float(self.fired.float().mean()) if self.fired.numel() else 0.0


@dataclass
class _State:
    batch_id: int
    fired: torch.Tensor  # [B0] over the batch's original rows
    scores: torch.Tensor


@intervention_kind
class Conditional(Intervention):
    """Apply `interventions` only to prompts on which `gate` scores above `threshold`."""

    kind = "conditional"
    spec_keys = ("kind", "gate", "interventions")

    def __init__(
        self,
        interventions: Intervention | Sequence[Intervention],
        gate: Gate,
        threshold: float,
        *,
        reduce: Reduction = "max",
        positions: Positions = "prompt",
        skip_first: bool = True,
    ):
        self.interventions = [interventions] if isinstance(interventions, Intervention) else list(interventions)
        if not self.interventions:
            raise RefusalScopeError("a conditional intervention needs at least one intervention to gate")
        self.gate = gate
        self.threshold = float(threshold)
        if not math.isfinite(self.threshold):
            raise RefusalScopeError(
                f"the gate threshold must be a finite number, got {threshold}", "use an ordinary number"
            )
        if reduce not in REDUCTIONS:
            raise RefusalScopeError(f"unknown gate reduction '{reduce}'", f"use one of {', '.join(REDUCTIONS)}")
        self.reduce = reduce
        self.positions = check_positions(positions)
        if self.positions in ("generated", "all"):
            raise RefusalScopeError(
                f"a gate reads prompt tokens only, so positions='{self.positions}' is not meaningful",
                "use 'prompt', 'post_instruction' or a list of prompt indices",
            )
        self.skip_first = bool(skip_first)
        self.fired = 0
        self.seen = 0
        self._state: _State | None = None
        self._prefixes: OrderedDict[int, torch.Tensor] = OrderedDict()  # prefix forward id -> [R, P] gate scores

    # ------------------------------------------------------------ statistics
    @property
    def fire_rate(self) -> float:
        """Fraction of the prompts seen so far on which the gate fired."""
        return self.fired / self.seen if self.seen else 0.0

    def reset_stats(self) -> None:
        self.fired = self.seen = 0

    # ------------------------------------------------------------ structure
    def touches_prompt(self) -> bool:
        return any(i.touches_prompt() for i in self.interventions)

    @property
    def prefix_safe(self) -> bool:
        """True when every edit it controls stays out of a shared prefix (see the module
        docstring): the gate's decision over prefix + suffix forwards is then exact."""
        return all(_tail_kind(item) for item in self.interventions)

    def prefix_tail(self, model: Any) -> int:
        """The trailing prompt tokens its edits may steer, which a shared prefix must leave out."""
        return max((_tail(item, model) for item in self.interventions), default=0)

    def points(self, model: Any) -> list[Point]:
        return [self.gate.layer] + [p for i in self.interventions for p in i.points(model)]

    def check(self, model: Any) -> None:
        self.gate.check(model)
        for item in self.interventions:
            item.check(model)
            if not item.touches_prompt():
                continue
            earliest = min(item.points(model), key=point_order)
            if point_order(earliest) < point_order(self.gate.layer):
                raise RefusalScopeError(
                    f"the gate reads {point_name(self.gate.layer)} but an intervention it controls already "
                    f"changes {point_name(earliest)} of the prompt, earlier in the same forward pass",
                    "gate on a layer at or before the earliest steered layer, or steer only positions='generated'",
                )

    # ------------------------------------------------------------ hooks
    def _gate_mask(self, ctx, positions) -> torch.Tensor:
        """[B, T] the prompt tokens the gate reduces over."""
        mask = position_mask(ctx, positions) & ctx.is_prompt()
        if self.skip_first:
            mask = mask & (ctx.token_index() > 0)
        return mask

    def _decide(self, scores, ctx, positions) -> _State:
        """The decision of each row from its tokens' gate scores [B, T] in a forward `ctx`
        that starts at the beginning of the prompts."""
        mask = self._gate_mask(ctx, positions)
        if self.reduce == "max":
            reduced = scores.masked_fill(~mask, float("-inf")).amax(-1)
        elif self.reduce == "mean":
            reduced = (scores * mask).sum(-1) / mask.sum(-1).clamp_min(1)
            reduced = reduced.masked_fill(~mask.any(-1), float("-inf"))
        else:
            last = torch.where(mask, ctx.token_index(), -1).argmax(-1)
            reduced = scores.gather(-1, last[:, None])[:, 0].masked_fill(~mask.any(-1), float("-inf"))
        fired = reduced > self.threshold
        full_fired = torch.zeros(
            int(ctx.rows.max()) + 1 if ctx.rows.numel() else 0, dtype=torch.bool, device=fired.device
        )
        full_scores = torch.full(full_fired.shape, float("nan"), device=fired.device)
        full_fired[ctx.rows] = fired
        full_scores[ctx.rows] = reduced
        return _State(ctx.batch_id, full_fired, full_scores)

    def _gate_hook(self, model, count: bool = True):
        score_fn = self.gate.scorer(at_layer(model, self.gate.layer))  # on the device of the layer it reads
        positions = resolve_positions(self.positions, model)

        def fn(hidden, ctx):
            if ctx.phase == "decode":
                return
            scores = score_fn(hidden)  # [B, T]
            if ctx.past_length == 0 and bool((ctx.chunk_mask.sum(-1) < ctx.prompt_lengths).any()):
                self._remember_prefix(scores, ctx)  # the prompts go on in a later forward
                return
            if ctx.past_length > 0:
                scores, ctx = self._whole_prompt(scores, ctx, positions)
            self._state = state = self._decide(scores, ctx, positions)
            if count:
                self.seen += int(ctx.rows.numel())
                self.fired += int(state.fired[ctx.rows].sum())
            return

        return fn

    def _remember_prefix(self, scores: torch.Tensor, ctx) -> None:
        """A forward over a prefix of the prompts (a shared prefix, computed once): keep its
        tokens' scores for the forward that continues it, and steer nothing in it."""
        if not bool((ctx.chunk_mask > 0).all()):
            raise RefusalScopeError(
                "a gate saw a padded forward over part of the prompts", "prefill shared prefixes without padding"
            )
        self._prefixes[ctx.batch_id] = scores.detach().float()
        self._prefixes.move_to_end(ctx.batch_id)
        while len(self._prefixes) > _PREFIXES_KEPT:
            self._prefixes.popitem(last=False)
        rows = int(ctx.rows.max()) + 1 if ctx.rows.numel() else 0
        none = torch.zeros(rows, dtype=torch.bool, device=scores.device)
        self._state = _State(ctx.batch_id, none, torch.full(none.shape, float("nan"), device=scores.device))

    def _whole_prompt(self, scores: torch.Tensor, ctx, positions) -> tuple[torch.Tensor, ForwardContext]:
        """The scores [B, past + T] and context of one forward over the whole prompts, from a
        forward `ctx` over a prefilled cache: the remembered prefix scores, then this chunk's,
        real tokens right-aligned after the padding as in a left-padded whole forward."""
        past = ctx.past_length
        order = torch.sort(ctx.attention_mask, dim=-1, stable=True).indices  # padding first, else in order
        whole = ForwardContext(
            ctx.attention_mask.gather(-1, order), ctx.prompt_lengths, 0, ctx.rows, ctx.batch_id, ctx.phase
        )
        prefix = self._prefixes.get(ctx.extra.get(PREFIX_ID, ctx.batch_id))
        if prefix is None:
            if bool((self._gate_mask(whole, positions) & (order < past)).any()):
                raise RefusalScopeError(
                    "the gate reads prompt tokens of a prefilled prefix it did not see",
                    "prefill the prefix with the conditional attached, and pass its batch id in "
                    "ctx.extra[PREFIX_ID] if the continuing forward has another one",
                )
            prefix = scores.new_zeros(scores.shape[0], past)  # never read: the gate's tokens are all in this chunk
        elif prefix.shape[1] != past or prefix.shape[0] not in (1, scores.shape[0]):
            raise RefusalScopeError(
                f"the gate remembered a {tuple(prefix.shape)} prefix, but this forward continues "
                f"{scores.shape[0]} rows after {past} tokens",
                "run each prompt suffix right after the prefix it continues",
            )
        combined = torch.cat([prefix.to(scores.device).expand(scores.shape[0], -1), scores.float()], dim=-1)
        return combined.gather(-1, order), whole

    def _rows(self, ctx) -> torch.Tensor:
        state = self._state
        if state is None or state.batch_id != ctx.batch_id or int(ctx.rows.max()) >= state.fired.numel():
            return torch.zeros(ctx.rows.shape[0], dtype=torch.bool, device=ctx.rows.device)
        return state.fired[ctx.rows]

    def hooks(self, model: Any, rows: RowFilter | None = None) -> list[Hook]:
        self.check(model)
        if rows is None:
            combined = self._rows
        else:

            def combined(ctx):
                outer = rows(ctx)
                return self._rows(ctx) if outer is None else outer & self._rows(ctx)

        out = [(self.gate.layer, self._gate_hook(model))]  # first: at a shared layer it reads the unsteered residual
        for item in self.interventions:
            out.extend(item.hooks(model, rows=combined))
        return out

    # ------------------------------------------------------------ offline decisions
    @torch.no_grad()
    def decisions(
        self,
        model: Any,
        prompts: str | Sequence[str],
        batch_size: int = 16,
        *,
        system: str | None = None,
        progress: bool = False,
    ) -> GateDecisions:
        """Gate scores and decisions for `prompts` (in order), from a forward pass that
        stops at the gate's layer; the same numbers the gate computes during `generate`."""
        self.gate.check(model)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        scores = torch.empty(len(prompts))
        fired = torch.empty(len(prompts), dtype=torch.bool)
        gate = self

        class _GateOnly:
            prefix_safe = True  # the gate alone edits nothing: the template's prefix is computed once

            def hooks(self, m):
                return [(gate.gate.layer, gate._gate_hook(m, count=False))]

        saved = self._state
        try:
            for index, _ in model.iter_residual(
                prompts,
                [self.gate.layer],
                "last",
                batch_size,
                system=system,
                interventions=_GateOnly(),
                progress=progress,
            ):
                state = self._state
                assert state is not None  # the gate hook ran in this forward
                scores[index] = state.scores[: len(index)].float().cpu()
                fired[index] = state.fired[: len(index)].cpu()
        finally:
            self._state = saved
        return GateDecisions(scores, fired)

    # ------------------------------------------------------------ serialisation
    def to_spec(self) -> dict[str, Any]:
        gate = self.gate.to_dict()
        gate.update(
            threshold=self.threshold,
            reduce=self.reduce,
            positions=positions_to_json(self.positions),
            skip_first=self.skip_first,
        )
        return {"kind": self.kind, "gate": gate, "interventions": [i.to_dict() for i in self.interventions]}

    @classmethod
    def from_spec(cls, reader: SpecReader, d: dict[str, Any], where: str) -> Conditional:
        g = d["gate"]
        if not isinstance(g, dict):
            raise RefusalScopeError(f"{where}.gate must be a mapping with a 'kind' and a 'threshold'")
        inner_items = d["interventions"]
        if not isinstance(inner_items, list):
            raise RefusalScopeError(f"{where}.interventions must be a list")
        inner = [reader.intervention(x, f"{where}.interventions[{i}]") for i, x in enumerate(inner_items)]
        return cls(
            inner,
            reader.gate(g, f"{where}.gate"),
            number(g["threshold"], f"{where}.gate.threshold"),
            reduce=cast(Reduction, choice(g.get("reduce", "max"), f"{where}.gate.reduce", REDUCTIONS)),
            positions=g.get("positions", "prompt"),
            skip_first=reader.flag(g, "skip_first", True, f"{where}.gate"),
        )

    def describe(self) -> str:
        inner = "; ".join(i.describe() for i in self.interventions)
        first = "" if self.skip_first else ", BOS included"
        return (
            f"only when {self.reduce} over {'the prompt' if self.positions == 'prompt' else self.positions} of "
            f"{self.gate.describe()} > {number_text(self.threshold)}{first}: {inner}"
        )


def _tail_kind(item: Intervention) -> bool:
    """Whether `item`, gated, steers only tokens after any shared prefix: generated tokens, or
    prompt positions counted from the end (kept after the prefix by `prefix_tail`)."""
    if isinstance(item, Conditional):
        return item.prefix_safe
    if not item.touches_prompt():
        return item.prefix_safe
    if type(item).prefix_safe is not Intervention.prefix_safe:  # a kind with a rule of its own: stay out
        return False
    positions = check_positions(item.positions)
    return positions == "post_instruction" or (isinstance(positions, tuple) and all(i < 0 for i in positions))


def _tail(item: Intervention, model: Any) -> int:
    """How many trailing prompt tokens `item` (one `_tail_kind` accepts) may steer."""
    if isinstance(item, Conditional):
        return item.prefix_tail(model)
    if not item.touches_prompt():
        return item.prefix_tail(model)
    positions = resolve_positions(item.positions, model)
    return -min(cast("tuple[int, ...]", positions))
