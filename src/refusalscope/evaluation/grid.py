"""The steering grid a sweep runs: tasks with their item limits, methods × strengths ×
gate on/off, and the configurations (grid points) they expand to on a model.

    gate = GateSpec(FeatureGate(sae, harm_latent), threshold=2.0)       # the harm detector
    probe_gate = GateSpec.from_probe("runs/probes/gate-probe")          # or a saved probe (`refusalscope probes`)
    grid = Grid([
        # SAE features clamped to multiples of their peak activation, ungated and gated
        Method.features(sae, feats, peaks, [0.5, 1, 2, 4], method="features:cossim+ig", conditional=(False, True)),
        # the dense-direction baseline: ActAdd at coefficients, ungated and gated
        Method.actadd(direction.raw, direction.layer, [1, 2, 4], conditional=(False, True)),
        # anything else: a factory strength -> interventions
        Method("features-scaled", lambda s: FeatureSteer(sae, feats, "scale", s), [2, 4], method="features:scale"),
    ], gate=gate)                                    # the unsteered model ("none") is added by default
    tasks = [TaskSpec(RefusalTask("jbb-harmful", "harmful/jailbreakbench"), limit=20),
             TaskSpec(RefusalTask("jbb-benign", "harmless/jailbreakbench", expect="answer"), limit=20),
             TaskSpec(capability_task("mmlu"), limit=40)]

A method may carry its own gate (`Method(..., gate=probe_gate)`), so one grid runs the
same steering behind the refusal-direction gate and behind a probe gate;
`evaluation.gate_comparison` then reads what each gate did. `evaluation.sweep.run_sweep`
runs them; `evaluation.grid_file` reads the same from a YAML/JSON file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import RefusalScopeError
from ..types import Mode, Positions, Reduction, TaskRole
from .store import Config, config_hash
from .tasks import Task

if TYPE_CHECKING:
    import torch

    from ..models import ChatModel
    from ..sae import SAE
    from ..steering import Conditional, Gate, Steering

# ---------------------------------------------------------------------- tasks


@dataclass
class TaskSpec:
    """A task with the items a sweep runs on: `limit` items drawn with `seed`."""

    task: Task
    limit: int | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        return self.task.name


def as_task_spec(task: Task | TaskSpec) -> TaskSpec:
    """`task` as a TaskSpec (all its items), checked to be a task."""
    if isinstance(task, TaskSpec):
        return task
    if not hasattr(task, "run") or not hasattr(task, "items") or not hasattr(task, "name"):
        raise RefusalScopeError(
            f"{type(task).__name__} is not an evaluation task",
            "pass objects following refusalscope.evaluation.tasks.Task (name, items(), run(), describe()), or TaskSpec(task, limit, seed)",
        )
    return TaskSpec(task)


def task_role(task: Task) -> TaskRole:
    """harmful | benign | jailbreak | capability: how the report uses a task's results.
    A task may say so itself with a `role` attribute."""
    role = getattr(task, "role", None)
    if role:
        return cast(TaskRole, str(role))  # the store checks it against ROLES
    expect = getattr(task, "expect", None)
    if expect is None:
        return "capability"
    dataset = str(getattr(task, "dataset", "") or "")
    if expect == "refuse" and (dataset.startswith("jailbreak/") or getattr(task, "template_requests", None)):
        return "jailbreak"
    return "harmful" if expect == "refuse" else "benign"


def task_judge(task: Task) -> str | None:
    """The name of the judge that scores a task's replies, as the store records it."""
    described = task.describe() if hasattr(task, "describe") else {}
    judge = described.get("judge") if isinstance(described, dict) else None
    scorer = getattr(task, "judge", None)
    if judge is None and scorer is not None:
        judge = getattr(scorer, "name", type(scorer).__name__)
    return None if judge is None else str(judge)


def item_id_of(item: Any, task_name: str) -> str:
    """An item's id (the `id` or `item_id` attribute, or a dict's "id"): how the store tells done items."""
    for attr in ("id", "item_id"):
        value = getattr(item, attr, None)
        if value is not None:
            return str(value)
    if isinstance(item, dict) and "id" in item:
        return str(item["id"])
    raise RefusalScopeError(
        f"task '{task_name}' gave an item without an id ({type(item).__name__})",
        "items need an `id` so the store can tell which are done",
    )


# ---------------------------------------------------------------------- steering grid


@dataclass
class GateSpec:
    """The conditional gate a method is wrapped in when run with conditional=True."""

    gate: Gate  # FeatureGate, DirectionGate, ProbeGate
    threshold: float
    reduce: Reduction = "max"
    positions: Positions = "prompt"
    skip_first: bool = True
    trained_on: dict[str, Any] | None = None  # the model a probe gate was trained on (ModelInfo.to_dict())
    source: str | None = None  # the file or folder the gate was read from, for messages

    def wrap(self, interventions: Sequence[Any]) -> Conditional:
        """`interventions` behind this gate."""
        from ..steering import Conditional

        return Conditional(
            list(interventions),
            self.gate,
            self.threshold,
            reduce=self.reduce,
            positions=self.positions,
            skip_first=self.skip_first,
        )

    @classmethod
    def from_conditional(cls, cond: Conditional) -> GateSpec:
        return cls(cond.gate, cond.threshold, cond.reduce, cond.positions, cond.skip_first)

    @classmethod
    def from_spec(cls, path: str | Path) -> GateSpec:
        """The gate of the one conditional intervention in a steering spec file."""
        from ..steering import Steering

        conds = Steering.load(path).conditionals
        if len(conds) != 1:
            raise RefusalScopeError(
                f"{path} holds {len(conds)} conditional interventions", "a gate file holds exactly one"
            )
        return cls.from_conditional(conds[0])

    @classmethod
    def from_probe(cls, probe: Any, sae: SAE | str | None = None) -> GateSpec:
        """The gate a saved probe makes (`refusalscope probes` writes the best one to
        `gate-probe/`; a `probes.linear.LinearProbe` works too), read exactly as the probe
        was trained and thresholded: the mean of its logit over the post-instruction tokens
        against the threshold chosen on validation. A probe over SAE latents loads the SAE it
        records unless `sae` is given (a folder or an SAE; it must be the same SAE).

        The model the probe was trained on travels with the gate, so binding it to another
        model (`check_model`) is an error instead of a gate that reads the wrong residual."""
        from ..probes.linear import LinearProbe
        from ..steering import ProbeGate

        source = None if isinstance(probe, LinearProbe) else str(probe)
        if not isinstance(probe, LinearProbe):
            probe = LinearProbe.load(probe)
        if isinstance(sae, (str, Path)):
            from ..sae.io import load_sae

            sae = load_sae(str(sae))
        gate = ProbeGate.from_probe(probe, sae)
        model = probe.info.get("model")
        return cls(
            gate,
            probe.threshold,
            reduce="mean",
            positions="post_instruction",
            trained_on=model if isinstance(model, dict) else None,
            source=source,
        )

    def check_model(self, chat: ChatModel) -> None:
        """Refuse a gate trained on another model: by weights hash where both models have one
        (embedded and GGUF models), else by architecture (family, layers, width; a model
        folder records no hash, and its name is only the folder's). The gate's own checks
        (layer in range, vector size, SAE fits) run when the steering is bound."""
        if not self.trained_on:
            return
        mine, theirs = chat.info.to_dict(), self.trained_on
        keys = ("sha256",) if mine.get("sha256") and theirs.get("sha256") else ("family", "n_layers", "d_model")
        if any(mine.get(k) != theirs.get(k) for k in keys):

            def name(info: dict[str, Any]) -> str:
                return f"{info.get('name')} ({', '.join(f'{k} {info.get(k)}' for k in keys)})"

            where = f" ({self.source})" if self.source else ""
            raise RefusalScopeError(
                f"the probe gate{where} was trained on {name(theirs)}, not on {name(mine)}",
                "train a probe on this model with `refusalscope probes --model ...` and gate with its gate-probe/",
            )

    def describe(self) -> str:
        return f"{self.reduce} of {self.gate.describe()} > {self.threshold:g}"


def scale_interventions(interventions: Any, strength: float) -> list:
    """Copies of `interventions` with their magnitudes multiplied by `strength`: feature
    values (set: the clamp level, scale: the factor, add: the amount), ActAdd
    coefficients, clamp values. Gates are left as they are."""
    from ..steering import ActAdd, Conditional, DirectionAblation, DirectionClamp, FeatureSteer, as_steering

    out: list[Any] = []
    for item in as_steering(interventions).interventions:
        if isinstance(item, Conditional):
            inner = scale_interventions(item.interventions, strength)
            out.append(
                Conditional(
                    inner,
                    item.gate,
                    item.threshold,
                    reduce=item.reduce,
                    positions=item.positions,
                    skip_first=item.skip_first,
                )
            )
            continue
        new: Any = copy.copy(item)
        scaled = getattr(item, "scaled", None)  # interventions that know their own magnitude (null-space)
        if isinstance(item, FeatureSteer):
            new.values = [v * strength for v in item.values]
        elif isinstance(item, ActAdd):
            new.coefficient = item.coefficient * strength
        elif isinstance(item, DirectionClamp):
            new.value = item.value * strength
        elif isinstance(item, DirectionAblation):
            if strength != 1:
                raise RefusalScopeError(
                    "a directional ablation has no strength to scale",
                    "run ablation methods at strength 1 (or without strengths)",
                )
        elif callable(scaled):
            new = scaled(strength)
        else:
            raise RefusalScopeError(f"do not know how to scale a {type(item).__name__}")
        out.append(new)
    return out


@dataclass
class Method:
    """A named steering factory run at several strengths.

    `build(strength)` returns interventions (an Intervention, a list, or a Steering);
    `method` is the plotting family and detail, e.g. "features:cossim+ig",
    "dense:actadd", "none" (the part before ':' groups lines: features, dense, none).
    `conditional` lists the gate settings to run: (False,), (True,) or (False, True).
    """

    name: str
    build: Callable[[float | None], Any] | None = None
    strengths: Sequence[float | None] = (None,)
    method: str | None = None
    conditional: Sequence[bool] = (False,)
    gate: GateSpec | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.method = self.method or self.name
        self.strengths = list(self.strengths) or [None]
        if isinstance(self.conditional, bool):
            self.conditional = (self.conditional,)
        self.conditional = tuple(bool(c) for c in self.conditional)
        if self.build is None and self.strengths != [None]:
            raise RefusalScopeError(
                f"method '{self.name}' has strengths but no steering factory", "pass build=lambda s: ..."
            )

    @property
    def family(self) -> str:
        return self.kind.split(":", 1)[0]

    @property
    def kind(self) -> str:
        """`method` (the name when none was given): what the store records as the method."""
        return self.method or self.name

    @classmethod
    def unsteered(cls) -> Method:
        return cls("none", None, (None,), method="none", description="the model as it is")

    @classmethod
    def actadd(
        cls,
        direction: torch.Tensor,
        layer: int,
        strengths: Sequence[float],
        *,
        name: str = "actadd",
        normalize: bool = False,
        positions: Positions = "all",
        method: str = "dense:actadd",
        **kwargs: Any,
    ) -> Method:
        """The dense-direction baseline: add `strength × direction` at `layer`."""
        from ..steering import ActAdd

        def build(s: float | None) -> ActAdd:
            return ActAdd(direction, layer, _magnitude(s, name), positions=positions, normalize=normalize)

        return cls(name, build, strengths, method=method, **kwargs)

    @classmethod
    def features(
        cls,
        sae: SAE,
        features: Sequence[int],
        peaks: Sequence[float] | float,
        strengths: Sequence[float],
        *,
        name: str = "features",
        method: str = "features",
        mode: Mode = "set",
        positions: Positions = "all",
        sae_source: str | None = None,
        **kwargs: Any,
    ) -> Method:
        """SAE feature steering: clamp (`mode="set"`) each latent to `strength × its peak
        activation` (`peaks`: one per feature, or one for all), e.g. the peak on harmful
        prompts from discovery; with mode "scale" the strength is the factor itself."""
        from ..steering import FeatureSteer

        peaks = [float(peaks)] * len(features) if isinstance(peaks, (int, float)) else [float(p) for p in peaks]
        if len(peaks) != len(features):
            raise RefusalScopeError(
                f"{len(peaks)} peak activations for {len(features)} features", "give one per feature"
            )

        def build(s: float | None) -> FeatureSteer:
            values = [_magnitude(s, name)] * len(peaks) if mode == "scale" else [_magnitude(s, name) * p for p in peaks]
            return FeatureSteer(sae, list(features), mode, values, positions=positions, sae_source=sae_source)

        return cls(name, build, strengths, method=method, **kwargs)

    @classmethod
    def from_steering(
        cls,
        steering: Any,
        strengths: Sequence[float] = (1.0,),
        *,
        name: str | None = None,
        method: str | None = None,
        **kwargs: Any,
    ) -> Method:
        """A saved steering (object or spec file) with its magnitudes multiplied by each strength."""
        from ..steering import Steering, as_steering

        base = Steering.load(steering) if isinstance(steering, (str, Path)) else as_steering(steering)
        name = name or base.name or base.id
        return cls(
            name,
            lambda s: scale_interventions(base, 1.0 if s is None else float(s)),
            strengths,
            method=method or name,
            description=kwargs.pop("description", base.description),
            **kwargs,
        )


def _magnitude(strength: float | None, method: str) -> float:
    if strength is None:
        raise RefusalScopeError(f"method '{method}' needs a strength", "give it strengths, e.g. [1, 2]")
    return float(strength)


def _label(name: str, strength: float | None, conditional: bool) -> str:
    text = name if strength is None else f"{name} ×{strength:g}"
    return text + (" (conditional)" if conditional else "")


@dataclass
class Configuration:
    """One grid point: a steering at a strength, gated or not, bound to a model."""

    name: str
    method: str
    strength: float | None
    conditional: bool
    steering: Steering  # possibly empty
    label: str
    description: str = ""
    model_id: str | None = None

    @property
    def family(self) -> str:
        return self.method.split(":", 1)[0]

    @cached_property
    def config_id(self) -> str:
        """A content hash of the steering (model identity included), strength, gate flag and method."""
        return config_hash(self.steering.content(), self.strength, self.conditional, self.method)

    @property
    def interventions(self) -> Steering | None:
        """What to pass as `interventions=`: None for the unsteered model."""
        return self.steering if len(self.steering) else None

    @property
    def conditionals(self) -> list[Conditional]:
        """Every gate in the steering (nested ones too), for their counters."""
        from ..steering import Conditional

        found = []

        def walk(items: Sequence[Any]) -> None:
            for item in items:
                if isinstance(item, Conditional):
                    found.append(item)
                    walk(item.interventions)

        walk(self.steering.interventions)
        return found

    def spec(self) -> dict[str, Any]:
        content = self.steering.content()
        return {"id": self.steering.id, "name": self.steering.name, **content}

    def to_store(self) -> Config:
        return Config(
            self.config_id,
            self.name,
            self.label,
            self.method,
            self.family,
            self.strength,
            self.conditional,
            self.steering.id if len(self.steering) else None,
            self.model_id,
            self.spec(),
            self.description,
        )


@dataclass
class Grid:
    """Methods × strengths × conditional on/off (+ the unsteered model unless unsteered=False)."""

    methods: list[Method]
    gate: GateSpec | None = None
    unsteered: bool = True

    def all_methods(self) -> list[Method]:
        methods = list(self.methods)
        if self.unsteered and not any(m.family == "none" for m in methods):
            methods.insert(0, Method.unsteered())
        names = [m.name for m in methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RefusalScopeError(f"method names repeat in the grid: {dup}", "give every method its own name")
        return methods

    def configurations(self, chat: ChatModel) -> list[Configuration]:
        """Every grid point, bound to `chat` and checked against it; points whose content
        hash repeats (the same steering reached twice) are kept once."""
        from ..steering import Steering, as_steering

        out: list[Configuration] = []
        seen: set[str] = set()
        for m in self.all_methods():
            for strength in m.strengths:
                strength = None if strength is None else float(strength)
                for conditional in m.conditional:
                    items = [] if m.build is None else list(as_steering(m.build(strength)).interventions)
                    if conditional:
                        gate = m.gate or self.gate
                        if gate is None:
                            raise RefusalScopeError(
                                f"method '{m.name}' asks for conditional steering but no gate was given",
                                "pass Grid(..., gate=GateSpec(gate, threshold)) or Method(..., gate=...)",
                            )
                        gate.check_model(chat)
                        if not items:
                            raise RefusalScopeError(
                                f"method '{m.name}' has nothing to gate", "run it with conditional=(False,)"
                            )
                        items = [gate.wrap(items)]
                    steering = Steering(items, name=_label(m.name, strength, conditional)).for_model(chat)
                    steering.check(chat)
                    cfg = Configuration(
                        m.name,
                        m.kind,
                        strength,
                        conditional,
                        steering,
                        _label(m.name, strength, conditional),
                        m.description,
                        chat.info.id,
                    )
                    if cfg.config_id in seen:
                        continue
                    seen.add(cfg.config_id)
                    out.append(cfg)
        return out

    def describe(self) -> dict[str, Any]:
        def gate(m: Method) -> str | None:
            spec = m.gate or self.gate
            return spec.describe() if any(m.conditional) and spec else None

        return {
            "methods": [
                {
                    "name": m.name,
                    "method": m.method,
                    "strengths": list(m.strengths),
                    "conditional": list(m.conditional),
                    "gate": gate(m),
                }
                for m in self.all_methods()
            ],
        }
