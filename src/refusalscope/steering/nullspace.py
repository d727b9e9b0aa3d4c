"""Null-space constrained steering: steer harmful inputs without moving benign ones.

Steering refusal up also raises refusal of benign requests and costs capability on text
that has nothing to do with refusal, because the same residual directions carry both.
AlphaSteer (ICLR 2026) confines the steering to directions that benign activations do not
use. Two forms, both acting on the residual stream after one block:

    projected   x + P⊥ δ(x)            δ: any single-layer intervention's edit (a dense
                                       ActAdd, an SAE feature delta, a clamp)
    learned     x + c · (x Δ),  Δ = P⊥ W   W: ridge least squares, harmful x ↦ r

B ([k, d], orthonormal rows) spans the *benign subspace*: the top principal directions of
harmless-prompt and ordinary-text activations at that layer, each token scaled to unit
norm (so the model's few huge-norm attention-sink tokens do not decide it alone), k chosen
by explained variance; P⊥ = I − BᵀB projects onto its orthogonal complement.

The two differ in what they guarantee. The projected edit P⊥ δ is orthogonal to every
benign direction, so no component of the residual that benign text uses changes — but a
fixed delta is still added to benign activations. The learned map is linear in x with no
offset and reads x only through P⊥, so an activation that lies in the benign subspace is
left *exactly* unchanged (x P⊥ = 0), while harmful activations (which have components
outside it) are mapped towards the refusal direction r. This is why the subspace is
estimated from uncentred activations: the span must contain the benign activations
themselves, not only their deviations from the mean.

Spec files store the basis and matrix as safetensors beside the spec, named and verified
by their content hash (`Steering.save` writes them, via each intervention's `tensor_files()`):

    {"kind": "nullspace", "layer": 6, "intervention": {"kind": "actadd", …},
     "basis": {"file": "nullspace-3f9c0a4b1d2e.safetensors", "key": "basis", "sha256": "…"},
     "fit": {"variance": 0.99, "rank": 212, "n": 4096}}
    {"kind": "nullspace_learned", "layer": 6, "coefficient": 1.0, "positions": "all",
     "matrix": {"file": "nullspace-….safetensors", "key": "matrix", "sha256": "…"}, "fit": {…}}
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checks import check_keys, need_mapping, number
from ..errors import RefusalScopeError
from ..models.placement import layer_device
from .interventions import ActAdd, DirectionClamp, FeatureSteer
from .kinds import Intervention, register_kind
from .points import point_name
from .positions import (
    Positions,
    RowFilter,
    apply_delta,
    check_positions,
    position_mask,
    positions_to_json,
    resolve_positions,
)
from .references import as_direction, check_vector, tensor_sha256

PROJECTED_KEYS = ("kind", "layer", "basis", "intervention", "fit")
LEARNED_KEYS = ("kind", "layer", "matrix", "coefficient", "positions", "fit")
TENSOR_KEYS = ("file", "key", "sha256")


# ---------------------------------------------------------------------- estimating the subspace
def benign_activations(
    chat,
    layer: int,
    prompts: Sequence[str] = (),
    texts: Sequence[str] = (),
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """[N, d] residual activations after block `layer` at every token of the chat-formatted
    `prompts` and of the plain `texts` (padding removed): what steering must leave alone."""
    rows: list[torch.Tensor] = []
    for items, as_chat in ((list(prompts), True), (list(texts), False)):
        if items:
            acts = chat.residual(
                items, [layer], positions="all", batch_size=batch_size, chat=as_chat, progress=progress
            )
            rows.extend(acts[layer])
    if not rows:
        raise RefusalScopeError("no benign prompts or texts were given", "pass harmless prompts and/or ordinary text")
    return torch.cat(rows)


WEIGHTINGS = ("token", "energy")


def benign_subspace(
    activations: torch.Tensor, *, variance: float = 0.99, max_rank: int | None = None, weighting: str = "token"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(basis [k, d] with orthonormal rows, fit record): the fewest principal directions of
    the uncentred activations that explain `variance` of their second moment.

    `weighting="token"` (the default) scales every activation to unit norm first, so each
    token counts once. With `"energy"` (raw activations) a few attention-sink tokens decide
    the subspace: on the default model ~1% of tokens have norms of 1,000-2,300 against a
    median of 24-31, carry 99% of the second moment, and a 0.99 subspace had rank 2-3 of
    896, which left ActAdd unchanged by the projection. With unit rows the same prompts and
    texts give rank 117-136 at 0.9 and 429-492 at 0.99 (layers 14 and 16).

    At least one dimension is always left outside the subspace (else nothing could be
    steered); `max_rank` caps k lower.
    """
    acts = torch.as_tensor(activations).detach().to("cpu", torch.float64)
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise RefusalScopeError(f"benign activations must be a non-empty [N, d] matrix, got shape {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise RefusalScopeError("the benign activations contain NaN or infinite values")
    number(variance, "variance", minimum=0.0, maximum=1.0)
    if weighting not in WEIGHTINGS:
        raise RefusalScopeError(f"unknown weighting '{weighting}'", f"use one of {', '.join(WEIGHTINGS)}")
    d = acts.shape[1]
    if weighting == "token":
        norms = acts.norm(dim=1, keepdim=True)
        acts = acts[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
        if acts.shape[0] == 0:
            raise RefusalScopeError(
                "the benign activations are all zero", "collect activations from a real model layer"
            )
    _, s, vh = torch.linalg.svd(acts, full_matrices=False)
    energy = s**2
    total = float(energy.sum())
    if total == 0:
        raise RefusalScopeError("the benign activations are all zero", "collect activations from a real model layer")
    cumulative = torch.cumsum(energy, 0) / total
    k = int((cumulative < variance - 1e-12).sum()) + 1
    k = min(k, int((s > s[0] * 1e-6).sum()), d - 1)
    if max_rank is not None:
        k = min(k, number(max_rank, "max_rank", integer=True, minimum=1))
    basis = vh[:k].to(torch.float32).contiguous()
    return basis, {
        "variance": float(variance),
        "rank": k,
        "explained": float(cumulative[k - 1]),
        "n": int(acts.shape[0]),
        "weighting": weighting,
    }


def complement_projector(basis: torch.Tensor) -> torch.Tensor:
    """P⊥ = I − BᵀB ([d, d], float64) for orthonormal rows B."""
    b = basis.to(torch.float64)
    return torch.eye(b.shape[1], dtype=torch.float64) - b.T @ b


def fit_steering_matrix(
    harmful: torch.Tensor, basis: torch.Tensor, target: torch.Tensor, *, ridge: float = 1e-2
) -> torch.Tensor:
    """Δ = P⊥ W with W = argmin ‖H P⊥ W − R‖² + λ‖W‖², every row of R = `target`.

    λ = `ridge` × the mean eigenvalue of (H P⊥)ᵀ(H P⊥), so the setting does not depend on
    the activations' scale. Solved in float64; returns [d, d] float32.
    """
    h = torch.as_tensor(harmful).detach().to("cpu", torch.float64)
    if h.ndim != 2 or h.shape[0] == 0:
        raise RefusalScopeError(f"harmful activations must be a non-empty [N, d] matrix, got shape {tuple(h.shape)}")
    number(ridge, "ridge", positive=True)
    t = as_direction(target, "the steering target").to(torch.float64)
    if t.shape[0] != h.shape[1] or basis.shape[1] != h.shape[1]:
        raise RefusalScopeError(
            f"sizes disagree: activations have {h.shape[1]} entries, target {t.shape[0]}, basis {basis.shape[1]}"
        )
    p = complement_projector(basis)
    a = h @ p
    gram = a.T @ a
    lam = float(ridge) * max(float(torch.trace(gram)) / gram.shape[0], 1e-12)
    rhs = a.T @ t.expand(h.shape[0], -1)
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=torch.float64), rhs)
    return (p @ w).to(torch.float32).contiguous()


# ---------------------------------------------------------------------- tensors beside the spec
def tensor_ref(tensor: torch.Tensor, key: str) -> dict[str, Any]:
    """How a spec names a stored tensor: a file named by its content hash, and the hash."""
    digest = tensor_sha256(tensor)
    return {"file": f"nullspace-{digest[:12]}.safetensors", "key": key, "sha256": digest}


def read_tensor(ref: Any, base: Path, where: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The tensor a spec references, checked against its recorded content hash."""
    from ..sae.files import read_safetensors

    ref = need_mapping(ref, where, "a mapping with 'file', 'key' and 'sha256'")
    check_keys(ref, TENSOR_KEYS, where)
    if not isinstance(ref.get("file"), str) or not isinstance(ref.get("key"), str):
        raise RefusalScopeError(f"{where} needs a 'file' path and a 'key' (strings)")
    path = Path(ref["file"])
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise RefusalScopeError(
            f"{where}: {path} does not exist", "keep the .safetensors files beside the spec that names them"
        )
    tensors = read_safetensors(path)
    if ref["key"] not in tensors:
        raise RefusalScopeError(f"{where}: {path.name} has no tensor '{ref['key']}'", f"it holds {sorted(tensors)}")
    tensor = tensors[ref["key"]].to(torch.float32)
    if ref.get("sha256") and tensor_sha256(tensor) != ref["sha256"]:
        raise RefusalScopeError(f"{where}: {path.name} changed since the spec was written (sha256 mismatch)")
    if shape is not None and tuple(tensor.shape) != shape:
        raise RefusalScopeError(f"{where}: expected a tensor of shape {shape}, {path.name} holds {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise RefusalScopeError(f"{where}: {path.name} contains NaN or infinite values")
    return tensor


def _check_basis(basis: torch.Tensor) -> torch.Tensor:
    basis = torch.as_tensor(basis).detach().to("cpu", torch.float32)
    if basis.ndim != 2 or basis.shape[0] == 0 or basis.shape[0] >= basis.shape[1]:
        raise RefusalScopeError(
            f"a benign basis is a [k, d] matrix with 0 < k < d, got shape {tuple(basis.shape)}",
            "estimate it with benign_subspace(activations)",
        )
    gram = basis @ basis.T
    if not torch.allclose(gram, torch.eye(basis.shape[0]), atol=1e-3):
        raise RefusalScopeError(
            "the benign basis' rows are not orthonormal", "estimate it with benign_subspace(activations)"
        )
    return basis


def _selection(ctx, positions, rows: RowFilter | None):
    """(mask, all selected, any selected) for apply_delta, honouring a gate's row filter."""
    mask = position_mask(ctx, positions)
    keep = rows(ctx) if rows is not None else None
    if keep is not None:
        mask = mask & keep[:, None]
    return mask, bool(mask.all()), bool(mask.any())


# ---------------------------------------------------------------------- projected form
class NullSpaceProjection(Intervention):
    """Another single-layer intervention with its edit projected off the benign subspace.

    >>> NullSpaceProjection(ActAdd(r, 6, 4.0), basis)            # dense direction
    >>> NullSpaceProjection(FeatureSteer(sae, [12, 7], "set", 8.0), basis)

    The inner intervention decides where (positions, gates) and how much; this keeps only
    the part of its edit orthogonal to every benign direction.
    """

    kind = "nullspace"

    def __init__(self, intervention: Intervention, basis: torch.Tensor, *, fit: dict[str, Any] | None = None):
        if not isinstance(intervention, Intervention) or isinstance(
            intervention, (NullSpaceProjection, LearnedNullSpaceSteer)
        ):
            raise RefusalScopeError(
                f"cannot project a {type(intervention).__name__}", "wrap an ActAdd, FeatureSteer or DirectionClamp"
            )
        layer = getattr(intervention, "layer", None)
        if layer is None or isinstance(getattr(intervention, "interventions", None), list):
            raise RefusalScopeError(
                f"a {intervention.kind} intervention does not act at one layer, so it has no single subspace to avoid",
                "wrap an ActAdd, FeatureSteer or DirectionClamp (put a gate around the projection instead)",
            )
        self.inner = intervention
        self.layer = layer
        self.basis = _check_basis(basis)
        self.positions = intervention.positions
        self.fit = dict(fit or {})

    @property
    def prefix_safe(self) -> bool:
        return self.inner.prefix_safe

    def touches_prompt(self) -> bool:
        return self.inner.touches_prompt()

    def points(self, model) -> list:
        return [self.layer]

    def check(self, model) -> None:
        check_vector(model, self.basis, "benign basis")
        self.inner.check(model)
        if self.inner.points(model) != [self.layer]:
            raise RefusalScopeError(
                f"the wrapped intervention writes to {self.inner.points(model)}, not only {point_name(self.layer)}"
            )

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """delta − (delta Bᵀ) B: the part of [..., d] edits orthogonal to the benign subspace."""
        b = self.basis.to(delta.device)
        return delta - (delta @ b.T) @ b

    def hooks(self, model, rows: RowFilter | None = None) -> list:
        self.check(model)
        inner = self.inner.hooks(model, rows=rows)
        basis = self.basis.to(layer_device(model, self.layer))

        def wrap(fn):
            def hook(hidden, ctx):
                x = hidden.float()
                edited = fn(x, ctx)
                if edited is None:
                    return None
                delta = edited.float() - x
                return hidden + (delta - (delta @ basis.T) @ basis).to(hidden.dtype)

            return hook

        return [(point, wrap(fn)) for point, fn in inner]

    def scaled(self, strength: float) -> NullSpaceProjection:
        """A copy with the inner edit's magnitude × `strength` (a sweep's strength axis)."""
        inner = copy.copy(self.inner)
        if isinstance(inner, FeatureSteer):
            inner.values = [v * strength for v in inner.values]
        elif isinstance(inner, ActAdd):
            inner.coefficient = inner.coefficient * strength
        elif isinstance(inner, DirectionClamp):
            inner.value = inner.value * strength
        else:
            raise RefusalScopeError(f"do not know how to scale a projected {type(inner).__name__}")
        return NullSpaceProjection(inner, self.basis, fit=self.fit)

    def tensor_files(self) -> dict[str, dict[str, torch.Tensor]]:
        ref = tensor_ref(self.basis, "basis")
        return {ref["file"]: {"basis": self.basis}}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "layer": self.layer,
            "basis": tensor_ref(self.basis, "basis"),
            "intervention": self.inner.to_dict(),
        }
        if self.fit:
            out["fit"] = dict(self.fit)
        return out

    def describe(self) -> str:
        return f"{self.inner.describe()}, projected off a {self.basis.shape[0]}-dim benign subspace"


# ---------------------------------------------------------------------- learned form
class LearnedNullSpaceSteer(Intervention):
    """x + c · (x Δ) at one layer, Δ = P⊥ W fitted so harmful x ↦ r (AlphaSteer).

    Build it with `LearnedNullSpaceSteer.fit(harmful, benign, direction, layer)`; `coefficient`
    scales the learned edit without refitting (a sweep's strength).
    """

    kind = "nullspace_learned"

    def __init__(
        self,
        matrix: torch.Tensor,
        layer: int,
        coefficient: float = 1.0,
        *,
        positions: Positions = "all",
        fit: dict[str, Any] | None = None,
    ):
        m = torch.as_tensor(matrix).detach().to("cpu", torch.float32)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise RefusalScopeError(f"the steering matrix must be square [d, d], got shape {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise RefusalScopeError("the steering matrix contains NaN or infinite values")
        self.matrix = m.contiguous()
        self.layer = layer
        self.coefficient = number(coefficient, "the learned steering's coefficient")
        self.positions = check_positions(positions)
        self.fit = dict(fit or {})

    @classmethod
    def fit_from(
        cls,
        harmful: torch.Tensor,
        benign: torch.Tensor,
        direction: torch.Tensor,
        layer: int,
        *,
        variance: float = 0.99,
        max_rank: int | None = None,
        ridge: float = 1e-2,
        coefficient: float = 1.0,
        positions: Positions = "all",
        weighting: str = "token",
    ) -> LearnedNullSpaceSteer:
        """Fit on [N, d] harmful and [M, d] benign activations of `layer`, target `direction`
        (used as given: the unnormalised difference of means is what ActAdd adds)."""
        basis, record = benign_subspace(benign, variance=variance, max_rank=max_rank, weighting=weighting)
        matrix = fit_steering_matrix(harmful, basis, direction, ridge=ridge)
        record.update({"ridge": float(ridge), "n_harmful": int(harmful.shape[0])})
        return cls(matrix, layer, coefficient, positions=positions, fit=record)

    def points(self, model) -> list:
        return [self.layer]

    def check(self, model) -> None:
        check_vector(model, self.matrix, "steering matrix")
        super().check(model)

    def edit(self, x: torch.Tensor) -> torch.Tensor:
        """The change c · (x Δ) for [..., d] activations (float32)."""
        return self.coefficient * (x.float() @ self.matrix.to(x.device))

    def hooks(self, model, rows: RowFilter | None = None) -> list:
        self.check(model)
        positions = resolve_positions(self.positions, model)
        matrix = (self.coefficient * self.matrix).to(layer_device(model, self.layer))

        def fn(hidden, ctx):
            return apply_delta(hidden, _selection(ctx, positions, rows), lambda x: x.float() @ matrix)

        return [(self.layer, fn)]

    def scaled(self, strength: float) -> LearnedNullSpaceSteer:
        """A copy with the coefficient × `strength` (a sweep's strength axis; no refit)."""
        return LearnedNullSpaceSteer(
            self.matrix, self.layer, self.coefficient * strength, positions=self.positions, fit=self.fit
        )

    def tensor_files(self) -> dict[str, dict[str, torch.Tensor]]:
        ref = tensor_ref(self.matrix, "matrix")
        return {ref["file"]: {"matrix": self.matrix}}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "layer": self.layer,
            "matrix": tensor_ref(self.matrix, "matrix"),
            "coefficient": self.coefficient,
            "positions": positions_to_json(self.positions),
        }
        if self.fit:
            out["fit"] = dict(self.fit)
        return out

    def describe(self) -> str:
        rank = self.fit.get("rank")
        sub = f" (benign subspace of rank {rank} left unchanged)" if rank else ""
        return f"{point_name(self.layer)}: add {self.coefficient:g} × (x Δ), a learned null-space steering matrix{sub}"


# ---------------------------------------------------------------------- spec files
def _fit_record(d: dict[str, Any], where: str) -> dict[str, Any]:
    return dict(need_mapping(d.get("fit") or {}, f"{where}.fit"))


def _layer(value: Any, where: str) -> int:
    return number(value, where, integer=True, minimum=0)


def read_projected(reader, d: dict[str, Any], where: str) -> NullSpaceProjection:
    inner = reader.intervention(need_mapping(d["intervention"], f"{where}.intervention"), f"{where}.intervention")
    basis = read_tensor(d["basis"], reader.base, f"{where}.basis")
    out = NullSpaceProjection(inner, basis, fit=_fit_record(d, where))
    if _layer(d["layer"], f"{where}.layer") != out.layer:
        raise RefusalScopeError(
            f"{where}: layer {d['layer']} differs from the wrapped intervention's {point_name(out.layer)}"
        )
    return out


def read_learned(reader, d: dict[str, Any], where: str) -> LearnedNullSpaceSteer:
    matrix = read_tensor(d["matrix"], reader.base, f"{where}.matrix")
    return LearnedNullSpaceSteer(
        matrix,
        _layer(d["layer"], f"{where}.layer"),
        number(d.get("coefficient", 1.0), f"{where}.coefficient"),
        positions=d.get("positions", "all"),
        fit=_fit_record(d, where),
    )


register_kind(NullSpaceProjection.kind, PROJECTED_KEYS, read_projected)
register_kind(LearnedNullSpaceSteer.kind, LEARNED_KEYS, read_learned)
