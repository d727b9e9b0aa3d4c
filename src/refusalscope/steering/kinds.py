"""What an intervention or a gate is, the one hook body they share, and the registry of kinds.

Every intervention edits the residual stream at some hook points and contributes hooks to
a ChatModel through `.hooks(model)`. A single-layer edit only says what it adds to a
residual vector (`delta_fn`); `Intervention.hooks` turns that into the hook, the same for
all of them: the edit is applied at the selected positions of the rows a gate lets through.

Each kind writes its own spec dict (`to_spec`) and reads it back (`from_spec`), and is
registered under its `kind` with the fields its dict may hold (`spec_keys`), so a spec
file can name any registered kind and refuse unknown fields, and a new kind (e.g.
steering/nullspace.py) plugs in without touching the spec reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ..checks import check_keys, did_you_mean, number
from ..errors import RefusalScopeError
from ..models.placement import at_layer
from .points import Point, check_point
from .positions import DeltaFn, Positions, RowFilter, apply_delta, resolve_positions, selection
from .references import ReferenceReader

#: a hook as ChatModel takes it: (point, fn(hidden, ctx) -> new hidden or None)
Hook = tuple[Point, Callable[[Any, Any], Any]]
#: reads one spec dict: (reader, dict, where in the file) -> the object it describes
SpecReaderFn = Callable[["SpecReader", dict[str, Any], str], Any]

#: kind -> the fields its spec dict may hold; kind -> its reader (in registration order)
INTERVENTION_KEYS: dict[str, tuple[str, ...]] = {}
INTERVENTION_READERS: dict[str, SpecReaderFn] = {}
GATE_COMMON = ("kind", "threshold", "reduce", "positions", "skip_first")
GATE_KEYS: dict[str, tuple[str, ...]] = {}
GATE_READERS: dict[str, SpecReaderFn] = {}

__all__ = [
    "GATE_COMMON",
    "GATE_KEYS",
    "INTERVENTION_KEYS",
    "Gate",
    "Hook",
    "Intervention",
    "SpecReader",
    "gate_kind",
    "intervention_kind",
    "register_gate",
    "register_kind",
]


def register_kind(kind: str, keys: tuple[str, ...], reader: SpecReaderFn) -> None:
    """Let spec files hold another intervention kind: its allowed fields and its reader."""
    INTERVENTION_KEYS[kind] = tuple(keys)
    INTERVENTION_READERS[kind] = reader


def register_gate(kind: str, keys: tuple[str, ...], reader: SpecReaderFn) -> None:
    """Let spec files hold another gate kind (its fields besides GATE_COMMON, and its reader)."""
    GATE_KEYS[kind] = (*GATE_COMMON, *keys)
    GATE_READERS[kind] = reader


AnyIntervention = TypeVar("AnyIntervention", bound="Intervention")
AnyGate = TypeVar("AnyGate", bound="Gate")


def intervention_kind(cls: type[AnyIntervention]) -> type[AnyIntervention]:
    """Class decorator: register an Intervention subclass under its `kind`."""
    register_kind(cls.kind, cls.spec_keys, cls.from_spec)
    return cls


def gate_kind(cls: type[AnyGate]) -> type[AnyGate]:
    """Class decorator: register a Gate subclass under its `kind`."""
    register_gate(cls.kind, cls.spec_keys, cls.from_spec)
    return cls


# ---------------------------------------------------------------------- interventions
class Intervention:
    """Base class: something that edits the residual stream at some hook points."""

    kind: ClassVar[str] = "intervention"
    #: the fields this kind's spec dict may hold (anything else is a typo to refuse)
    spec_keys: ClassVar[tuple[str, ...]] = ()
    positions: Positions = "all"

    def points(self, model: Any) -> list[Point]:
        """The hook points this intervention writes to."""
        raise NotImplementedError

    def check(self, model: Any) -> None:
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

    def prefix_tail(self, model: Any) -> int:
        """How many trailing prompt tokens a shared prefix must leave out for this item to
        stay exact when `prefix_safe` (0 here; a gate that steers the end of the prompt
        needs those tokens after the prefix, see `Conditional.prefix_tail`)."""
        return 0

    def delta_fn(self, model: Any) -> DeltaFn:
        """x [N, d] -> the float32 change this intervention adds to each selected residual
        vector, with its tensors already on `model`'s device."""
        raise NotImplementedError

    def hooks(self, model: Any, rows: RowFilter | None = None) -> list[Hook]:
        """[(point, fn)] for `model`; `rows(ctx)` optionally restricts which rows are steered.

        The one hook body of every edit: `delta_fn` applied at the selected positions."""
        self.check(model)
        positions = resolve_positions(self.positions, model)
        deltas: dict[str, DeltaFn] = {}  # one per device: layers spread over GPUs (device_map) each get theirs

        def hook(delta: DeltaFn) -> Callable[[Any, Any], Any]:
            def fn(hidden, ctx):
                return apply_delta(hidden, selection(ctx, positions, rows), delta)

            return fn

        out = []
        for point in self.points(model):
            placed = at_layer(model, point)  # tensors on the device of the layer this hook runs on
            key = str(placed.device)
            if key not in deltas:
                deltas[key] = self.delta_fn(placed)
            out.append((point, hook(deltas[key])))
        return out

    def to_spec(self) -> dict[str, Any]:
        """This intervention's spec dict (what a spec file stores; its id hashes it)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The spec dict (the name Steering and older code use)."""
        return self.to_spec()

    @classmethod
    def from_spec(cls, reader: SpecReader, spec: dict[str, Any], where: str) -> Intervention:
        """The intervention a spec dict describes (fields already checked against spec_keys)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


# ---------------------------------------------------------------------- gates
class Gate:
    """Scores every token of a forward chunk at one hook point."""

    kind: ClassVar[str] = "gate"
    spec_keys: ClassVar[tuple[str, ...]] = ()
    layer: Point

    def check(self, model: Any) -> None:
        check_point(model, self.layer)

    def scorer(self, model: Any) -> Callable[[Any], Any]:
        """fn(hidden [B, T, d]) -> [B, T] float32 scores."""
        raise NotImplementedError

    def to_spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return self.to_spec()

    @classmethod
    def from_spec(cls, reader: SpecReader, spec: dict[str, Any], where: str) -> Gate:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


# ---------------------------------------------------------------------- reading specs
class SpecReader(ReferenceReader):
    """Reads the interventions and gates of one spec file, by their registered kinds."""

    def intervention(self, d: Any, where: str) -> Intervention:
        if not isinstance(d, dict) or "kind" not in d:
            raise RefusalScopeError(f"{where}: each intervention needs a 'kind'")
        kind = d["kind"]
        if kind not in INTERVENTION_KEYS:
            raise RefusalScopeError(
                f"{where}: unknown intervention kind {kind!r}{did_you_mean(str(kind), INTERVENTION_KEYS)}",
                "use feature, ablation, actadd, clamp or conditional",
            )
        check_keys(d, INTERVENTION_KEYS[kind], f"{where} ({kind})")
        try:
            return INTERVENTION_READERS[kind](self, d, where)
        except KeyError as exc:
            raise RefusalScopeError(f"{where}: a '{kind}' intervention needs the field {exc}") from None

    def gate(self, g: dict[str, Any], where: str) -> Gate:
        kind = g.get("kind")
        if kind not in GATE_KEYS:
            raise RefusalScopeError(
                f"{where}: unknown gate kind {kind!r}{did_you_mean(str(kind), GATE_KEYS)}",
                "use feature, direction or probe",
            )
        check_keys(g, GATE_KEYS[kind], f"{where} ({kind})")
        return GATE_READERS[kind](self, g, where)

    # the field types spec dicts share
    @staticmethod
    def layer(value: Any, where: str) -> Point:
        """A hook point as written in a spec: a block index (>= 0) or 'embed'."""
        if value == "embed":
            return "embed"
        return number(value, where, integer=True, minimum=0)

    @staticmethod
    def optional_layer(value: Any, where: str) -> Point | None:
        """A hook point, or None where the spec leaves it out (the SAE then says which)."""
        return None if value is None else SpecReader.layer(value, where)

    @staticmethod
    def flag(d: dict[str, Any], key: str, default: bool, where: str) -> bool:
        value = d.get(key, default)
        if not isinstance(value, bool):
            raise RefusalScopeError(f"{where}.{key} must be true or false, got {value!r}")
        return value

    @staticmethod
    def latents(value: Any, where: str) -> list[int]:
        items = value if isinstance(value, list) else [value]
        return [number(f, where, integer=True, minimum=0) for f in items]
