"""What a steering refers to: SAEs and direction vectors, their identity, hashes and loading.

A spec file names an SAE by where it can be reloaded from (`source`: a path or a pretrained
`release/id`) *and* by its content hash, so a spec never silently runs with other weights;
its identity (and so the spec id) is the hash, not the location. Directions are stored
inline as `values`, or as `{"file": …, "key": …, "sha256": …}` relative to the spec file.
`ReferenceReader` resolves both when a spec is read; the functions below write them.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checks import check_keys, number
from ..errors import RefusalScopeError
from ..sae.model import SAE

SAE_REF_KEYS = ("source", "sha256", "layer", "hook_name", "d_in", "d_sae", "architecture", "model_name", "lm_eval")
DIRECTION_KEYS = ("values", "file", "key", "sha256")

__all__ = [
    "DIRECTION_KEYS",
    "SAE_REF_KEYS",
    "ReferenceReader",
    "as_direction",
    "check_sources",
    "check_vector",
    "direction_ref",
    "finite",
    "is_sae_ref",
    "load_direction",
    "number_text",
    "resolve_sae",
    "sae_hash",
    "sae_ref",
    "sae_source_of",
    "spec_identity",
    "tensor_sha256",
    "unit_vector",
]


# ---------------------------------------------------------------------- vectors
def as_direction(direction: Any, name: str = "direction") -> torch.Tensor:
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
    for v in values:
        if not math.isfinite(v):
            raise RefusalScopeError(f"the {what} must be a finite number, got {v}", "use an ordinary number")
    return values


def unit_vector(vec: torch.Tensor, name: str = "direction") -> torch.Tensor:
    """vec / |vec|; the zero vector has no direction and is refused."""
    norm = vec.norm()
    if norm == 0:
        raise RefusalScopeError(f"the {name} is the zero vector", "pass a non-zero direction")
    return vec / norm


def check_vector(model: Any, vec: torch.Tensor, what: str) -> None:
    """Raise when a residual-space vector does not have the model's d_model entries."""
    if vec.shape[-1] != model.d_model:
        raise RefusalScopeError(
            f"the {what} has {vec.shape[-1]} entries but {model.info.name} has d_model={model.d_model}",
            f"use a {what} computed on {model.info.name}",
        )


def number_text(value: float) -> str:
    """A steering magnitude as `describe()` prints it (8.0 -> '8')."""
    return f"{value:g}"


def direction_ref(vec: torch.Tensor) -> dict[str, Any]:
    """How a spec stores a vector inline."""
    return {"values": [float(v) for v in vec.detach().to(torch.float32).cpu().reshape(-1)]}


def tensor_sha256(vec: torch.Tensor) -> str:
    return hashlib.sha256(vec.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()


def load_direction(path: str | Path, key: str | None = None) -> torch.Tensor:
    """A vector from a .pt/.pth (tensor or dict), .safetensors, .npy or .json (list) file."""
    path = Path(path)
    if not path.is_file():
        raise RefusalScopeError(f"direction file {path} does not exist", "check the path")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        from ..sae.files import load_weights_only

        obj = load_weights_only(path, "direction file")
    elif suffix == ".safetensors":
        from ..sae.files import read_safetensors

        obj = read_safetensors(path)
    elif suffix == ".npy":
        import numpy as np

        try:
            obj = torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError, EOFError, TypeError) as exc:
            raise RefusalScopeError(
                f"cannot read the direction file {path}: {exc}", "save it with numpy.save"
            ) from None
    elif suffix == ".json":
        from ..checks import parse_json, read_text

        obj = parse_json(read_text(path, "direction file"), f"the direction file {path}")
    else:
        raise RefusalScopeError(f"cannot read a direction from '{path.name}'", "use .pt, .safetensors, .npy or .json")
    if isinstance(obj, dict):
        if key is None:
            tensors = [k for k, v in obj.items() if torch.is_tensor(v) or isinstance(v, list)]
            if len(tensors) != 1:
                raise RefusalScopeError(f"{path} holds several arrays: {sorted(obj)}", "say which one with a key")
            key = tensors[0]
        if key not in obj:
            raise RefusalScopeError(f"{path} has no entry '{key}'", f"use one of {sorted(obj)}")
        obj = obj[key]
    return as_direction(obj, f"the direction in {path.name}")


# ---------------------------------------------------------------------- SAEs
def sae_source_of(sae: SAE) -> str | None:
    """Where an SAE object can be reloaded from: an explicit `.source`, its pretrained
    release name, or the path its reader recorded (verified by hash when a spec is loaded)."""
    prov = sae.cfg.provenance or {}
    if getattr(sae, "source", None):
        return str(sae.source)
    if prov.get("release") and prov.get("sae_id"):
        return f"{prov['release']}/{prov['sae_id']}"
    return str(prov["source"]) if prov.get("source") else None


def resolve_sae(sae: SAE | str | Path, sae_source: str | None = None) -> tuple[SAE, str | None]:
    """(SAE, source): load `sae` with `load_sae` if it is a path or name."""
    if isinstance(sae, (str, Path)):
        from ..sae.io import load_sae  # file formats and the hub client load on first use

        source = str(sae)
        return load_sae(source), sae_source or source
    if not isinstance(sae, SAE):
        raise RefusalScopeError(
            f"expected an SAE (or a path/name load_sae accepts), got {type(sae).__name__}",
            "pass refusalscope.sae.SAE or the folder it was saved to",
        )
    return sae, sae_source or sae_source_of(sae)


def _weights_version(sae: SAE) -> tuple[int, ...]:
    """Changes whenever a weight tensor is modified in place (torch's version counter)."""
    tensors = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec) + (() if sae.threshold is None else (sae.threshold,))
    return tuple(t._version for t in tensors)


_HASHES: weakref.WeakKeyDictionary[SAE, tuple[tuple[int, ...], str]] = weakref.WeakKeyDictionary()


def sae_hash(sae: SAE) -> str:
    """content_hash() of an SAE, cached per object until its weights change in place."""
    version = _weights_version(sae)
    hit = _HASHES.get(sae)
    if hit is not None and hit[0] == version:
        return hit[1]
    digest = sae.content_hash()
    _HASHES[sae] = (version, digest)
    return digest


def sae_ref(sae: SAE, source: str | None) -> dict[str, Any]:
    """How a spec names an SAE: where to load it from, and its content hash to verify it."""
    c = sae.cfg
    ref: dict[str, Any] = {
        "source": source,
        "sha256": sae_hash(sae),
        "layer": c.layer,
        "hook_name": c.hook_name,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "architecture": c.architecture,
    }
    if c.model_name:
        ref["model_name"] = c.model_name
    lm_eval = (c.provenance or {}).get("lm_eval")
    if lm_eval:
        ref["lm_eval"] = dict(lm_eval)
    return ref


def is_sae_ref(obj: Any) -> bool:
    return isinstance(obj, dict) and "sha256" in obj and "d_sae" in obj


def spec_identity(obj: Any) -> Any:
    """The content that defines a steering: SAE refs without their location on disk."""
    if is_sae_ref(obj):
        return {k: v for k, v in obj.items() if k not in ("source", "lm_eval")}
    if isinstance(obj, dict):
        return {k: spec_identity(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [spec_identity(v) for v in obj]
    return obj


def check_sources(obj: Any) -> None:
    """Refuse to write a spec that names an SAE it could not reload (no source on disk)."""
    if is_sae_ref(obj):
        if not obj.get("source"):
            raise RefusalScopeError(
                "an SAE in this steering has no source on disk, so a spec file could not reload it",
                "save it with refusalscope.sae.save_sae(sae, folder) and pass sae=folder (or sae_source=folder)",
            )
    elif isinstance(obj, dict):
        for v in obj.values():
            check_sources(v)
    elif isinstance(obj, list):
        for v in obj:
            check_sources(v)


# ---------------------------------------------------------------------- reading references
class ReferenceReader:
    """Resolves the SAE and direction references of one spec file.

    Relative paths resolve against the spec's folder (`base`); `saes` maps a source to an
    SAE already in memory; `loader(target)` replaces `load_sae`. Each source is loaded once
    per spec, and every SAE is checked against the content hash the spec recorded.
    """

    def __init__(self, base: Path, saes: dict[str, Any] | None = None, loader: Callable[[str], SAE] | None = None):
        self.base = base
        self.saes = dict(saes or {})
        self.loader = loader
        self.loaded: dict[str, Any] = {}

    def sae(self, ref: dict[str, Any], where: str) -> tuple[SAE, str]:
        if not isinstance(ref, dict) or not ref.get("source") or not isinstance(ref["source"], str):
            raise RefusalScopeError(f"{where}: the SAE reference needs a 'source' (a path or release/id)")
        check_keys(ref, SAE_REF_KEYS, f"{where}.sae")
        if ref.get("sha256") is not None and not isinstance(ref["sha256"], str):
            raise RefusalScopeError(f"{where}.sae.sha256 must be a hex string")
        source = ref["source"]
        if source in self.loaded:
            return self.loaded[source], source
        if source in self.saes:
            sae = self.saes[source]
        else:
            candidate = Path(source) if Path(source).is_absolute() else self.base / source
            target = str(candidate) if candidate.exists() else source
            if self.loader is not None:
                sae = self.loader(target)
            else:
                from ..sae.io import load_sae  # file formats and the hub client load on first use

                sae = load_sae(target)
        expected = ref.get("sha256")
        if expected and sae_hash(sae) != expected:
            raise RefusalScopeError(
                f"{where}: the SAE at '{source}' is not the one this spec was written with "
                f"(content hash {sae_hash(sae)[:12]}, expected {expected[:12]})",
                "restore the SAE the spec names, or write a new spec for this SAE",
            )
        if ref.get("lm_eval"):
            if not isinstance(ref["lm_eval"], dict):
                raise RefusalScopeError(f"{where}.sae.lm_eval must be a mapping")
            sae.cfg.provenance = {**(sae.cfg.provenance or {}), "lm_eval": dict(ref["lm_eval"])}
        self.loaded[source] = sae
        return sae, source

    def direction(self, ref: Any, where: str) -> torch.Tensor:
        if isinstance(ref, list):
            return as_direction([number(v, f"{where} entry") for v in ref], where)
        if not isinstance(ref, dict):
            raise RefusalScopeError(f"{where}: a direction is {{'values': [...]}} or {{'file': ...}}")
        check_keys(ref, DIRECTION_KEYS, where)
        if "values" in ref:
            if not isinstance(ref["values"], list):
                raise RefusalScopeError(f"{where}.values must be a list of numbers")
            return as_direction([number(v, f"{where}.values entry") for v in ref["values"]], where)
        if "file" in ref:
            if not isinstance(ref["file"], str):
                raise RefusalScopeError(f"{where}.file must be a path")
            if ref.get("key") is not None and not isinstance(ref["key"], str):
                raise RefusalScopeError(f"{where}.key must be a string")
            path = Path(ref["file"])
            vec = load_direction(path if path.is_absolute() else self.base / path, ref.get("key"))
            if ref.get("sha256") and tensor_sha256(vec) != ref["sha256"]:
                raise RefusalScopeError(f"{where}: {path} changed since the spec was written (sha256 mismatch)")
            return vec
        raise RefusalScopeError(f"{where}: a direction needs 'values' or 'file'")
