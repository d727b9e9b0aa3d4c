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
(a gate around other interventions), and the null-space kinds (steering/nullspace.py).
Each kind writes and reads its own entry (`to_spec` / `from_spec`, registered in
`kinds.py`); this module holds the file around them. Directions are stored inline as
`values`, or as `{"file": "direction.pt", "key": …, "sha256": …}` relative to the spec file
(`references.py`).

`id` is a content hash of the model identity and the interventions (not of the name,
description or versions): results that link to it name exactly what was done. Loading
verifies each SAE's content hash, so a spec can never silently run with other weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from ..checks import check_keys, number
from ..errors import RefusalScopeError
from . import interventions as builtin_kinds  # noqa: F401 - registers feature, ablation, actadd and clamp
from .conditional import Conditional
from .kinds import GATE_KEYS, INTERVENTION_KEYS, Hook, Intervention, SpecReader, register_kind
from .references import check_sources, spec_identity

FORMAT = "refusalscope-steering"
VERSION = 1

# Every field a spec may hold (anything else is a typo that would otherwise fall back to a
# default silently); each intervention and gate kind lists its own (`kinds.INTERVENTION_KEYS`).
SPEC_KEYS = ("format", "version", "id", "name", "description", "model", "interventions", "metadata", "created_with")
#: what `steer` and `Steering` accept: a Steering, one intervention, several, or a spec file path
SteeringLike = Union["Steering", Intervention, Sequence[Intervention], str, Path]  # noqa: UP007 - a runtime alias

__all__ = [
    "FORMAT",
    "GATE_KEYS",
    "INTERVENTION_KEYS",
    "SPEC_KEYS",
    "VERSION",
    "Steering",
    "SteeringLike",
    "as_steering",
    "content_id",
    "register_kind",
    "steer",
    "write_tensor_files",
]


def write_tensor_files(items: Sequence[Intervention], folder: Path) -> None:
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
                        handle.write(
                            save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()})
                        )
        for attr in ("inner", "interventions"):
            nested = getattr(item, attr, None)
            if isinstance(nested, Intervention):
                write_tensor_files([nested], folder)
            elif isinstance(nested, list):
                write_tensor_files(nested, folder)


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
    def check(self, model: Any) -> None:
        """Raise a clear error if any intervention cannot act on `model`."""
        for item in self.interventions:
            item.check(model)
        if self.model and self.model.get("sha256") and model.info.sha256 and self.model["sha256"] != model.info.sha256:
            warnings.warn(
                f"this steering was written for {self.model.get('name')} ({self.model['sha256'][:12]}), "
                f"it is applied to {model.info.name} ({model.info.sha256[:12]})",
                stacklevel=3,
            )

    def hooks(self, model: Any) -> list[Hook]:
        out = []
        for item in self.interventions:
            out.extend(item.hooks(model))
        return out

    @property
    def prefix_safe(self) -> bool:
        """Whether ChatModel may share the prefill of a common prompt prefix (see Intervention)."""
        return all(item.prefix_safe for item in self.interventions)

    def prefix_tail(self, model: Any) -> int:
        """Trailing prompt tokens a shared prefix must leave out (see Intervention.prefix_tail)."""
        return max((item.prefix_tail(model) for item in self.interventions), default=0)

    def apply(self, model: Any) -> contextlib.AbstractContextManager[Steering]:
        """Context manager: `with steering.apply(model): model.generate(...)`."""
        return steer(model, self)

    def for_model(self, model: Any) -> Steering:
        """Record `model`'s identity in the spec (once; the id then covers it)."""
        if self.model is None:
            info = model.info
            self.model = {
                "name": info.name,
                "sha256": info.sha256,
                "spec": info.spec,
                "n_layers": info.n_layers,
                "d_model": info.d_model,
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
        check_sources(content["interventions"])
        out = {"format": FORMAT, "version": VERSION, "id": content_id(content)}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["model"] = self.model
        out["interventions"] = content["interventions"]
        if self.metadata:
            out["metadata"] = self.metadata
        out["created_with"] = {
            k: v for k, v in package_versions().items() if k in ("refusalscope", "torch", "transformers")
        }
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
    def load(
        cls, path: str | Path, *, saes: dict[str, Any] | None = None, sae_loader: Callable | None = None
    ) -> Steering:
        """Read a spec file; SAEs are loaded from their recorded source (relative paths
        resolve against the spec's folder) unless `saes` maps a source to an SAE."""
        from ..paths import read_json_or_yaml

        path = Path(path)
        data = read_json_or_yaml(path, "steering spec")
        return cls.from_dict(data, base=path.parent, saes=saes, sae_loader=sae_loader)

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        *,
        base: str | Path | None = None,
        saes: dict[str, Any] | None = None,
        sae_loader: Callable | None = None,
    ) -> Steering:
        if not isinstance(data, dict) or data.get("format", FORMAT) != FORMAT:
            raise RefusalScopeError("this is not a refusalscope steering spec", f'a spec has "format": "{FORMAT}"')
        check_keys(data, SPEC_KEYS, "steering spec")
        version = number(data.get("version", VERSION), "the steering spec's version", integer=True, minimum=1)
        if version > VERSION:
            raise RefusalScopeError(
                f"steering spec version {version} is newer than this refusalscope understands ({VERSION})",
                "upgrade refusalscope",
            )
        reader = SpecReader(Path(base) if base else Path.cwd(), saes or {}, sae_loader)
        items = data.get("interventions")
        if not isinstance(items, list):
            raise RefusalScopeError("the steering spec has no list of interventions", 'add "interventions": [...]')
        for key, kind in (("name", str), ("description", str), ("model", dict), ("metadata", dict), ("id", str)):
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise RefusalScopeError(
                    f"the steering spec's '{key}' must be a {kind.__name__}, got {type(data[key]).__name__}"
                )
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
    canonical = json.dumps(spec_identity(content), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "steer-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def as_steering(interventions: SteeringLike) -> Steering:
    if isinstance(interventions, Steering):
        return interventions
    if isinstance(interventions, (str, Path)):
        return Steering.load(interventions)
    if isinstance(interventions, Intervention):
        return Steering([interventions])
    return Steering(list(interventions))


@contextlib.contextmanager
def steer(model: Any, interventions: SteeringLike) -> Iterator[Steering]:
    """Apply interventions (a Steering, an intervention, a list, or a spec file path) to
    every forward of `model` inside the block; hooks are removed on exit, also on errors.

        with steer(chat, FeatureSteer(sae, [1234], "set", 8.0)) as s:
            replies = chat.generate(prompts)
        print(s.describe())
    """
    steering = as_steering(interventions)
    steering.check(model)
    steering.for_model(model)
    attach = getattr(model, "attached", None)  # ChatModel's own path (knows prefix_safe)
    with attach(steering) if attach is not None else model.hooks.attached(steering.hooks(model)):
        yield steering
