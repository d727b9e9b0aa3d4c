"""`Steering`: a list of interventions plus what is needed to reproduce it, and `steer()`.

A steering spec file (JSON, or YAML with a .yaml/.yml suffix) records the model, each
SAE's source and content hash, layers, features, modes, values, positions and gates:

    {
      "format": "refusalscope-steering", "version": 1,
      "id": "steer-3f9c0a4b1d2e",
      "name": "refusal-up", "description": "clamp two refusal latents high",
      "model": {"name": "qwen2.5-coder-0.5b-instruct", "sha256": "1d96…", "spec": "default"},
      "interventions": [
        {"kind": "feature", "layer": 12, "features": [1234, 77], "mode": "set", "value": 8.0,
         "positions": "all",
         "sae": {"source": "saes/qwen-l12", "sha256": "…", "layer": 12, "d_in": 896,
                 "d_sae": 7168, "architecture": "jumprelu"}},
        {"kind": "conditional",
         "gate": {"kind": "feature", "sae": {…}, "feature": 99, "threshold": 2.0,
                  "reduce": "max", "positions": "prompt", "skip_first": true},
         "interventions": [{"kind": "actadd", "layer": 10, "coefficient": 4.0,
                            "direction": {"values": [… d_model numbers …]}, "positions": "all"}]}
      ],
      "created_with": {"refusalscope": "0.1.0", "torch": "2.13.0", …}
    }

Kinds: feature (SAE latents: set/scale/add), ablation (directional ablation at every
layer), actadd (activation addition), clamp (lm-eval's projection clamp), conditional
(a gate around other interventions). Directions are stored inline as `values`, or as
`{"file": "direction.pt", "key": …, "sha256": …}` relative to the spec file.

`id` is a content hash of the model identity and the interventions (not of the name,
description or versions): results that link to it name exactly what was done. Loading
verifies each SAE's content hash, so a spec can never silently run with other weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checks import check_keys, choice, did_you_mean, number
from ..errors import RefusalScopeError
from .conditional import REDUCTIONS, Conditional, DirectionGate, FeatureGate, Gate, ProbeGate
from .interventions import MODES, ActAdd, DirectionAblation, DirectionClamp, FeatureSteer, Intervention

FORMAT = "refusalscope-steering"
VERSION = 1

# Every field a spec may hold, per kind: anything else is a typo that would otherwise fall
# back to a default silently (`valeu: 8` would clamp to 0.0).
SPEC_KEYS = ("format", "version", "id", "name", "description", "model", "interventions", "metadata", "created_with")
INTERVENTION_KEYS = {
    "feature": ("kind", "sae", "layer", "features", "mode", "value", "positions", "keep_error"),
    "ablation": ("kind", "direction", "layers", "positions"),
    "actadd": ("kind", "direction", "layer", "coefficient", "positions", "normalize"),
    "clamp": ("kind", "sae", "feature", "direction", "bias", "layer", "value", "positions"),
    "conditional": ("kind", "gate", "interventions"),
}
GATE_COMMON = ("kind", "threshold", "reduce", "positions", "skip_first")
GATE_KEYS = {
    "feature": (*GATE_COMMON, "sae", "feature"),
    "direction": (*GATE_COMMON, "direction", "layer", "normalize"),
    "probe": (*GATE_COMMON, "weights", "bias", "layer", "sae", "features"),
}
SAE_REF_KEYS = ("source", "sha256", "layer", "hook_name", "d_in", "d_sae", "architecture", "model_name", "lm_eval")
DIRECTION_KEYS = ("values", "file", "key", "sha256")
# Kinds defined outside this module (steering/nullspace.py): kind -> reader(reader, dict, where).
# They register themselves, so this module need not import them (no import cycle).
EXTRA_READERS: dict[str, Callable] = {}


def register_kind(kind: str, keys: tuple[str, ...], reader: Callable) -> None:
    """Let spec files hold another intervention kind: its allowed fields and its reader."""
    INTERVENTION_KEYS[kind] = tuple(keys)
    EXTRA_READERS[kind] = reader


def write_tensor_files(items, folder: Path) -> None:
    """Write the tensor files (e.g. a null-space basis) that interventions' entries reference."""
    for item in items:
        files = getattr(item, "tensor_files", None)
        if files is not None:
            from ..paths import atomic_file

            for name, tensors in files().items():
                target = folder / name
                if not target.is_file():
                    from safetensors.torch import save

                    with atomic_file(target, "wb") as handle:
                        handle.write(save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}))
        for attr in ("inner", "interventions"):
            nested = getattr(item, attr, None)
            if isinstance(nested, Intervention):
                write_tensor_files([nested], folder)
            elif isinstance(nested, list):
                write_tensor_files(nested, folder)


# ---------------------------------------------------------------------- SAE identity
def _sae_source_of(sae) -> str | None:
    """Where an SAE object can be reloaded from: an explicit `.source`, its pretrained
    release name, or the path its reader recorded (verified by hash when a spec is loaded)."""
    prov = sae.cfg.provenance or {}
    if getattr(sae, "source", None):
        return str(sae.source)
    if prov.get("release") and prov.get("sae_id"):
        return f"{prov['release']}/{prov['sae_id']}"
    return str(prov["source"]) if prov.get("source") else None


def resolve_sae(sae, sae_source: str | None = None):
    """(SAE, source): load `sae` with `load_sae` if it is a path or name."""
    from ..sae.model import SAE

    if isinstance(sae, (str, Path)):
        from ..sae import load_sae

        source = str(sae)
        return load_sae(source), sae_source or source
    if not isinstance(sae, SAE):
        raise RefusalScopeError(
            f"expected an SAE (or a path/name load_sae accepts), got {type(sae).__name__}",
            "pass refusalscope.sae.SAE or the folder it was saved to",
        )
    return sae, sae_source or _sae_source_of(sae)


_HASHES: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()


def sae_hash(sae) -> str:
    """content_hash() of an SAE, cached per object until its weights change in place."""
    tensors = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec) + (() if sae.threshold is None else (sae.threshold,))
    version = tuple(t._version for t in tensors)
    hit = _HASHES.get(sae)
    if hit is not None and hit[0] == version:
        return hit[1]
    digest = sae.content_hash()
    _HASHES[sae] = (version, digest)
    return digest


def sae_ref(sae, source: str | None) -> dict[str, Any]:
    """How a spec names an SAE: where to load it from, and its content hash to verify it."""
    c = sae.cfg
    ref = {
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


def _is_sae_ref(obj) -> bool:
    return isinstance(obj, dict) and "sha256" in obj and "d_sae" in obj


def _identity(obj):
    """The content that defines a steering: SAE refs without their location on disk."""
    if _is_sae_ref(obj):
        return {k: v for k, v in obj.items() if k not in ("source", "lm_eval")}
    if isinstance(obj, dict):
        return {k: _identity(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_identity(v) for v in obj]
    return obj


def _check_sources(obj) -> None:
    if _is_sae_ref(obj):
        if not obj.get("source"):
            raise RefusalScopeError(
                "an SAE in this steering has no source on disk, so a spec file could not reload it",
                "save it with refusalscope.sae.save_sae(sae, folder) and pass sae=folder (or sae_source=folder)",
            )
    elif isinstance(obj, dict):
        for v in obj.values():
            _check_sources(v)
    elif isinstance(obj, list):
        for v in obj:
            _check_sources(v)


def direction_ref(vec: torch.Tensor) -> dict[str, Any]:
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
            raise RefusalScopeError(f"cannot read the direction file {path}: {exc}", "save it with numpy.save") from None
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
    from .interventions import as_direction

    return as_direction(obj, f"the direction in {path.name}")


# ---------------------------------------------------------------------- Steering
@dataclass
class Steering:
    """Interventions applied together, with the metadata that makes them reproducible."""

    interventions: list[Intervention]
    name: str | None = None
    description: str = ""
    model: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.interventions, Intervention):
            self.interventions = [self.interventions]
        self.interventions = list(self.interventions)
        for item in self.interventions:
            if not isinstance(item, Intervention):
                raise RefusalScopeError(
                    f"{type(item).__name__} is not a steering intervention",
                    "use FeatureSteer, DirectionAblation, ActAdd, DirectionClamp or Conditional",
                )

    # ------------------------------------------------------------ applying
    def check(self, model) -> None:
        """Raise a clear error if any intervention cannot act on `model`."""
        for item in self.interventions:
            item.check(model)
        if self.model and self.model.get("sha256") and model.info.sha256 and self.model["sha256"] != model.info.sha256:
            warnings.warn(
                f"this steering was written for {self.model.get('name')} ({self.model['sha256'][:12]}), "
                f"it is applied to {model.info.name} ({model.info.sha256[:12]})",
                stacklevel=3,
            )

    def hooks(self, model) -> list:
        out = []
        for item in self.interventions:
            out.extend(item.hooks(model))
        return out

    @property
    def prefix_safe(self) -> bool:
        """Whether ChatModel may share the prefill of a common prompt prefix (see Intervention)."""
        return all(item.prefix_safe for item in self.interventions)

    def apply(self, model):
        """Context manager: `with steering.apply(model): model.generate(...)`."""
        return steer(model, self)

    def for_model(self, model) -> Steering:
        """Record `model`'s identity in the spec (once; the id then covers it)."""
        if self.model is None:
            info = model.info
            self.model = {
                "name": info.name, "sha256": info.sha256, "spec": info.spec,
                "n_layers": info.n_layers, "d_model": info.d_model,
            }
        return self

    @property
    def conditionals(self) -> list[Conditional]:
        return [i for i in self.interventions if isinstance(i, Conditional)]

    # ------------------------------------------------------------ identity
    def content(self) -> dict[str, Any]:
        model = None
        if self.model:
            model = {"name": self.model.get("name"), "sha256": self.model.get("sha256")}
        return {"model": model, "interventions": [i.to_dict() for i in self.interventions]}

    @property
    def id(self) -> str:
        """'steer-' + 12 hex digits of the sha256 of the canonical content (SAEs by their
        content hash, not their location, so moving a file keeps the id)."""
        return content_id(self.content())

    def to_dict(self) -> dict[str, Any]:
        from ..provenance import package_versions

        content = self.content()
        _check_sources(content["interventions"])
        out = {"format": FORMAT, "version": VERSION, "id": content_id(content)}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["model"] = self.model
        out["interventions"] = content["interventions"]
        if self.metadata:
            out["metadata"] = self.metadata
        out["created_with"] = {k: v for k, v in package_versions().items() if k in ("refusalscope", "torch", "transformers")}
        return out

    def save(self, path: str | Path) -> Path:
        """Write the spec file (YAML for .yaml/.yml, JSON otherwise); returns the path."""
        from ..paths import atomic_file

        path = Path(path)
        data = self.to_dict()
        write_tensor_files(self.interventions, path.parent)
        with atomic_file(path) as handle:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                yaml.safe_dump(data, handle, sort_keys=False, width=120)
            else:
                json.dump(data, handle, indent=2)
                handle.write("\n")
        return path

    @classmethod
    def load(cls, path: str | Path, *, saes: dict[str, Any] | None = None, sae_loader: Callable | None = None) -> Steering:
        """Read a spec file; SAEs are loaded from their recorded source (relative paths
        resolve against the spec's folder) unless `saes` maps a source to an SAE."""
        from ..paths import read_json_or_yaml

        path = Path(path)
        data = read_json_or_yaml(path, "steering spec")
        return cls.from_dict(data, base=path.parent, saes=saes, sae_loader=sae_loader)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: str | Path | None = None, saes=None, sae_loader=None) -> Steering:
        if not isinstance(data, dict) or data.get("format", FORMAT) != FORMAT:
            raise RefusalScopeError("this is not a refusalscope steering spec", f"a spec has \"format\": \"{FORMAT}\"")
        check_keys(data, SPEC_KEYS, "steering spec")
        version = number(data.get("version", VERSION), "the steering spec's version", integer=True, minimum=1)
        if version > VERSION:
            raise RefusalScopeError(
                f"steering spec version {version} is newer than this refusalscope understands ({VERSION})",
                "upgrade refusalscope",
            )
        reader = _Reader(Path(base) if base else Path.cwd(), saes or {}, sae_loader)
        items = data.get("interventions")
        if not isinstance(items, list):
            raise RefusalScopeError("the steering spec has no list of interventions", 'add "interventions": [...]')
        for key, kind in (("name", str), ("description", str), ("model", dict), ("metadata", dict), ("id", str)):
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise RefusalScopeError(f"the steering spec's '{key}' must be a {kind.__name__}, got {type(data[key]).__name__}")
        for key, value in (data.get("model") or {}).items():
            if key in ("name", "sha256", "spec") and value is not None and not isinstance(value, str):
                raise RefusalScopeError(f"the steering spec's model.{key} must be a string, got {value!r}")
        steering = cls(
            [reader.intervention(item, f"interventions[{i}]") for i, item in enumerate(items)],
            name=data.get("name"),
            description=data.get("description") or "",
            model=data.get("model"),
            metadata=data.get("metadata") or {},
        )
        stored = data.get("id")
        if stored and stored != steering.id:
            warnings.warn(
                f"the spec's stored id {stored} does not match its content ({steering.id}); it was edited by hand. "
                f"Results will link to {steering.id}",
                stacklevel=2,
            )
        return steering

    # ------------------------------------------------------------ humans
    def describe(self) -> str:
        head = f"steering {self.id}"
        if self.name:
            head += f" '{self.name}'"
        if self.model:
            head += f" for {self.model.get('name')}"
        lines = [head + ":"]
        if self.description:
            lines.append(f"  {self.description}")
        if not self.interventions:
            lines.append("  (no interventions: the model runs unchanged)")
        for n, item in enumerate(self.interventions, 1):
            lines.append(f"  {n}. {item.describe()}")
        for c in self.conditionals:
            if c.seen:
                lines.append(f"  gate fired on {c.fired} of {c.seen} prompts ({c.fire_rate:.0%})")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.interventions)


def content_id(content: dict[str, Any]) -> str:
    canonical = json.dumps(_identity(content), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "steer-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def as_steering(interventions) -> Steering:
    if isinstance(interventions, Steering):
        return interventions
    if isinstance(interventions, (str, Path)):
        return Steering.load(interventions)
    if isinstance(interventions, Intervention):
        return Steering([interventions])
    return Steering(list(interventions))


@contextlib.contextmanager
def steer(model, interventions) -> Iterator[Steering]:
    """Apply interventions (a Steering, an intervention, a list, or a spec file path) to
    every forward of `model` inside the block; hooks are removed on exit, also on errors.

        with steer(chat, FeatureSteer(sae, [1234], "set", 8.0)) as s:
            replies = chat.generate(prompts)
        print(s.describe())
    """
    steering = as_steering(interventions)
    steering.check(model)
    steering.for_model(model)
    attach = getattr(model, "_interventions", None)  # ChatModel's own path (knows prefix_safe)
    with attach(steering) if attach is not None else model.hooks.attached(steering.hooks(model)):
        yield steering


# ---------------------------------------------------------------------- reading specs
def _layer(value: Any, where: str, *, optional: bool = False):
    """A hook point as written in a spec: a block index (>= 0) or 'embed'."""
    if value is None and optional:
        return None
    if value == "embed":
        return value
    return number(value, where, integer=True, minimum=0)


def _flag(d: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise RefusalScopeError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _latents(value: Any, where: str) -> list[int]:
    items = value if isinstance(value, list) else [value]
    return [number(f, where, integer=True, minimum=0) for f in items]


class _Reader:
    def __init__(self, base: Path, saes: dict[str, Any], loader: Callable | None):
        self.base = base
        self.saes = dict(saes)
        self.loader = loader
        self.loaded: dict[str, Any] = {}

    def sae(self, ref: dict[str, Any], where: str):
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
                from ..sae import load_sae

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

    def direction(self, ref, where: str) -> torch.Tensor:
        from .interventions import as_direction

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

    def intervention(self, d: dict[str, Any], where: str) -> Intervention:
        if not isinstance(d, dict) or "kind" not in d:
            raise RefusalScopeError(f"{where}: each intervention needs a 'kind'")
        kind = d["kind"]
        if kind not in INTERVENTION_KEYS:
            raise RefusalScopeError(
                f"{where}: unknown intervention kind {kind!r}{did_you_mean(str(kind), INTERVENTION_KEYS)}",
                "use feature, ablation, actadd, clamp or conditional",
            )
        check_keys(d, INTERVENTION_KEYS[kind], f"{where} ({kind})")
        positions = d.get("positions", "all")
        try:
            if kind in EXTRA_READERS:
                return EXTRA_READERS[kind](self, d, where)
            if kind == "feature":
                sae, source = self.sae(d["sae"], where)
                value = d.get("value", 0.0)
                values = (
                    [number(v, f"{where}.value entry") for v in value] if isinstance(value, list)
                    else number(value, f"{where}.value")
                )
                return FeatureSteer(
                    sae, _latents(d["features"], f"{where}.features"), choice(d.get("mode", "set"), f"{where}.mode", MODES),
                    values, positions=positions, layer=_layer(d.get("layer"), f"{where}.layer", optional=True),
                    keep_error=_flag(d, "keep_error", True, where), sae_source=source,
                )
            if kind == "ablation":
                layers = d.get("layers", "all")
                if isinstance(layers, list):
                    layers = [_layer(x, f"{where}.layers entry") for x in layers]
                return DirectionAblation(self.direction(d["direction"], where), layers, positions=positions)
            if kind == "actadd":
                return ActAdd(
                    self.direction(d["direction"], where), _layer(d["layer"], f"{where}.layer"),
                    number(d.get("coefficient", 1.0), f"{where}.coefficient"),
                    positions=positions, normalize=_flag(d, "normalize", False, where),
                )
            if kind == "clamp":
                value = number(d["value"], f"{where}.value")
                if "sae" in d:
                    sae, source = self.sae(d["sae"], where)
                    return DirectionClamp.from_sae_feature(
                        sae, number(d["feature"], f"{where}.feature", integer=True, minimum=0), value,
                        positions=positions, layer=_layer(d.get("layer"), f"{where}.layer", optional=True),
                        sae_source=source,
                    )
                bias = d.get("bias")
                return DirectionClamp(
                    self.direction(d["direction"], where), _layer(d["layer"], f"{where}.layer"), value,
                    bias=None if bias is None else self.direction(bias, f"{where}.bias"), positions=positions,
                )
            g = d["gate"]
            if not isinstance(g, dict):
                raise RefusalScopeError(f"{where}.gate must be a mapping with a 'kind' and a 'threshold'")
            inner_items = d["interventions"]
            if not isinstance(inner_items, list):
                raise RefusalScopeError(f"{where}.interventions must be a list")
            inner = [self.intervention(x, f"{where}.interventions[{i}]") for i, x in enumerate(inner_items)]
            return Conditional(
                inner, self.gate(g, f"{where}.gate"), number(g["threshold"], f"{where}.gate.threshold"),
                reduce=choice(g.get("reduce", "max"), f"{where}.gate.reduce", REDUCTIONS),
                positions=g.get("positions", "prompt"), skip_first=_flag(g, "skip_first", True, f"{where}.gate"),
            )
        except KeyError as exc:
            raise RefusalScopeError(f"{where}: a '{kind}' intervention needs the field {exc}") from None

    def gate(self, g: dict[str, Any], where: str) -> Gate:
        kind = g.get("kind")
        if kind not in GATE_KEYS:
            raise RefusalScopeError(
                f"{where}: unknown gate kind {kind!r}{did_you_mean(str(kind), GATE_KEYS)}", "use feature, direction or probe"
            )
        check_keys(g, GATE_KEYS[kind], f"{where} ({kind})")
        if kind == "feature":
            sae, source = self.sae(g["sae"], where)
            return FeatureGate(sae, number(g["feature"], f"{where}.feature", integer=True, minimum=0), sae_source=source)
        if kind == "direction":
            return DirectionGate(
                self.direction(g["direction"], where), _layer(g["layer"], f"{where}.layer"),
                normalize=_flag(g, "normalize", True, where),
            )
        bias = number(g.get("bias", 0.0), f"{where}.bias")
        layer = _layer(g.get("layer"), f"{where}.layer", optional=True)
        if "sae" in g:
            sae, source = self.sae(g["sae"], where)
            return ProbeGate(
                self.direction(g["weights"], where), bias, layer, sae=sae,
                features=_latents(g["features"], f"{where}.features"), sae_source=source,
            )
        return ProbeGate(self.direction(g["weights"], where), bias, g["layer"] if layer is None else layer)
