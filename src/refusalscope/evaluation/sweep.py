"""Sweeps: run a grid of steering configurations over tasks, resumably, into a results store.

A grid is a list of `Method`s (named steering factories `strength -> interventions`, each
run at some strengths, with the conditional gate off and/or on) plus, by default, the
unsteered model. Every (configuration, task) cell runs only the items the store has no
result for, in batches written one transaction each, so a killed sweep resumes where it
stopped and nothing is computed twice.

    from refusalscope.evaluation.sweep import GateSpec, Grid, Method, TaskSpec, run_sweep, summarise

    gate = GateSpec(FeatureGate(sae, harm_latent), threshold=2.0)       # the harm detector
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
    run_sweep(chat, grid, tasks, "results.db", data_dir="../shared/data")
    print(summarise("results.db").table())
"""

from __future__ import annotations

import copy
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import RefusalScopeError
from ..stats import difference
from .store import Config, ResultsStore, config_hash

# ---------------------------------------------------------------------- dataset pairs (Δs)


@dataclass(frozen=True)
class DatasetPair:
    """A harmful dataset and its benign counterpart; Δs = refusal(harmful) − refusal(benign).
    A split of None matches any split of the dataset."""

    name: str
    harmful: tuple[str, str | None]
    benign: tuple[str, str | None]


DATASET_PAIRS: list[DatasetPair] = [
    DatasetPair("jailbreakbench", ("harmful/jailbreakbench", None), ("harmless/jailbreakbench", None)),
    DatasetPair("xstest", ("xstest/unsafe", None), ("xstest/safe", None)),
    DatasetPair("minimal-pairs", ("builtin/minimal-pairs", "harmful"), ("builtin/minimal-pairs", "benign")),
]


def register_pair(name: str, harmful: tuple[str, str | None], benign: tuple[str, str | None]) -> DatasetPair:
    """Declare another (harmful, benign) dataset pair whose Δs every summary reports."""
    pair = DatasetPair(name, tuple(harmful), tuple(benign))
    DATASET_PAIRS.append(pair)
    return pair


def _matches(task: dict, side: tuple[str, str | None]) -> bool:
    dataset, split = side
    return task.get("dataset") == dataset and (split is None or task.get("split") == split)


def find_pairs(tasks: Sequence[dict]) -> list[dict]:
    """(name, harmful_task, benign_task) for every registered dataset pair present among
    `tasks` (rows of the store's tasks table); when several tasks match a side, only
    tasks judged by the same judge are paired."""
    out = []
    for pair in DATASET_PAIRS:
        harm = [t for t in tasks if t["role"] == "harmful" and _matches(t, pair.harmful)]
        ben = [t for t in tasks if t["role"] == "benign" and _matches(t, pair.benign)]
        combos = [(h, b) for h in harm for b in ben if h.get("judge") == b.get("judge") or len(harm) * len(ben) == 1]
        for h, b in combos:
            name = pair.name if len(combos) == 1 else f"{pair.name} ({h['task']} − {b['task']})"
            out.append({"name": name, "harmful_task": h["task"], "benign_task": b["task"]})
    return out


# ---------------------------------------------------------------------- tasks


@dataclass
class TaskSpec:
    """A task with the items a sweep runs on: `limit` items drawn with `seed`."""

    task: Any
    limit: int | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        return self.task.name


def as_task_spec(task) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    if not hasattr(task, "run") or not hasattr(task, "items") or not hasattr(task, "name"):
        raise RefusalScopeError(
            f"{type(task).__name__} is not an evaluation task",
            "pass objects following refusalscope.evaluation.tasks.Task (name, items(), run(), describe()), or TaskSpec(task, limit, seed)",
        )
    return TaskSpec(task)


def task_role(task) -> str:
    """harmful | benign | jailbreak | capability: how the report uses a task's results.
    A task may say so itself with a `role` attribute."""
    role = getattr(task, "role", None)
    if role:
        return str(role)
    expect = getattr(task, "expect", None)
    if expect is None:
        return "capability"
    dataset = str(getattr(task, "dataset", "") or "")
    if expect == "refuse" and (dataset.startswith("jailbreak/") or getattr(task, "template_requests", None)):
        return "jailbreak"
    return "harmful" if expect == "refuse" else "benign"


def task_judge(task) -> str | None:
    described = task.describe() if hasattr(task, "describe") else {}
    judge = described.get("judge") if isinstance(described, dict) else None
    if judge is None and getattr(task, "judge", None) is not None:
        judge = getattr(task.judge, "name", type(task.judge).__name__)
    return None if judge is None else str(judge)


def _item_id(item, task_name: str) -> str:
    for attr in ("id", "item_id"):
        value = getattr(item, attr, None)
        if value is not None:
            return str(value)
    if isinstance(item, dict) and "id" in item:
        return str(item["id"])
    raise RefusalScopeError(f"task '{task_name}' gave an item without an id ({type(item).__name__})",
                            "items need an `id` so the store can tell which are done")


# ---------------------------------------------------------------------- steering grid


@dataclass
class GateSpec:
    """The conditional gate a method is wrapped in when run with conditional=True."""

    gate: Any  # a steering.Gate (FeatureGate, DirectionGate, ProbeGate)
    threshold: float
    reduce: str = "max"
    positions: Any = "prompt"
    skip_first: bool = True

    def wrap(self, interventions) -> Any:
        from ..steering import Conditional

        return Conditional(list(interventions), self.gate, self.threshold, reduce=self.reduce,
                           positions=self.positions, skip_first=self.skip_first)

    @classmethod
    def from_conditional(cls, cond) -> GateSpec:
        return cls(cond.gate, cond.threshold, cond.reduce, cond.positions, cond.skip_first)

    @classmethod
    def from_spec(cls, path: str | Path) -> GateSpec:
        """The gate of the one conditional intervention in a steering spec file."""
        from ..steering import Steering

        conds = Steering.load(path).conditionals
        if len(conds) != 1:
            raise RefusalScopeError(f"{path} holds {len(conds)} conditional interventions", "a gate file holds exactly one")
        return cls.from_conditional(conds[0])

    def describe(self) -> str:
        return f"{self.reduce} of {self.gate.describe()} > {self.threshold:g}"


def scale_interventions(interventions, strength: float) -> list:
    """Copies of `interventions` with their magnitudes multiplied by `strength`: feature
    values (set: the clamp level, scale: the factor, add: the amount), ActAdd
    coefficients, clamp values. Gates are left as they are."""
    from ..steering import ActAdd, Conditional, DirectionAblation, DirectionClamp, FeatureSteer, as_steering

    out = []
    for item in as_steering(interventions).interventions:
        if isinstance(item, Conditional):
            inner = scale_interventions(item.interventions, strength)
            out.append(Conditional(inner, item.gate, item.threshold, reduce=item.reduce, positions=item.positions,
                                   skip_first=item.skip_first))
            continue
        new = copy.copy(item)
        if isinstance(item, FeatureSteer):
            new.values = [v * strength for v in item.values]
        elif isinstance(item, ActAdd):
            new.coefficient = item.coefficient * strength
        elif isinstance(item, DirectionClamp):
            new.value = item.value * strength
        elif isinstance(item, DirectionAblation):
            if strength != 1:
                raise RefusalScopeError("a directional ablation has no strength to scale",
                                        "run ablation methods at strength 1 (or without strengths)")
        elif callable(getattr(item, "scaled", None)):  # interventions that know their own magnitude (null-space)
            new = item.scaled(strength)
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
            raise RefusalScopeError(f"method '{self.name}' has strengths but no steering factory", "pass build=lambda s: ...")

    @property
    def family(self) -> str:
        return self.method.split(":", 1)[0]

    @classmethod
    def unsteered(cls) -> Method:
        return cls("none", None, (None,), method="none", description="the model as it is")

    @classmethod
    def actadd(cls, direction, layer: int, strengths: Sequence[float], *, name: str = "actadd", normalize: bool = False,
               positions="all", method: str = "dense:actadd", **kwargs) -> Method:
        """The dense-direction baseline: add `strength × direction` at `layer`."""
        from ..steering import ActAdd

        def build(s):
            return ActAdd(direction, layer, float(s), positions=positions, normalize=normalize)

        return cls(name, build, strengths, method=method, **kwargs)

    @classmethod
    def features(cls, sae, features: Sequence[int], peaks: Sequence[float] | float, strengths: Sequence[float], *,
                 name: str = "features", method: str = "features", mode: str = "set", positions="all",
                 sae_source: str | None = None, **kwargs) -> Method:
        """SAE feature steering: clamp (`mode="set"`) each latent to `strength × its peak
        activation` (`peaks`: one per feature, or one for all), e.g. the peak on harmful
        prompts from discovery; with mode "scale" the strength is the factor itself."""
        from ..steering import FeatureSteer

        peaks = [float(peaks)] * len(features) if isinstance(peaks, (int, float)) else [float(p) for p in peaks]
        if len(peaks) != len(features):
            raise RefusalScopeError(f"{len(peaks)} peak activations for {len(features)} features", "give one per feature")

        def build(s):
            values = [float(s)] * len(peaks) if mode == "scale" else [float(s) * p for p in peaks]
            return FeatureSteer(sae, list(features), mode, values, positions=positions, sae_source=sae_source)

        return cls(name, build, strengths, method=method, **kwargs)

    @classmethod
    def from_steering(cls, steering, strengths: Sequence[float] = (1.0,), *, name: str | None = None,
                      method: str | None = None, **kwargs) -> Method:
        """A saved steering (object or spec file) with its magnitudes multiplied by each strength."""
        from ..steering import Steering, as_steering

        base = Steering.load(steering) if isinstance(steering, (str, Path)) else as_steering(steering)
        name = name or base.name or base.id
        return cls(name, lambda s: scale_interventions(base, 1.0 if s is None else float(s)), strengths,
                   method=method or name, description=kwargs.pop("description", base.description), **kwargs)


def _label(name: str, strength, conditional: bool) -> str:
    text = name if strength is None else f"{name} ×{strength:g}"
    return text + (" (conditional)" if conditional else "")


@dataclass
class Configuration:
    """One grid point: a steering at a strength, gated or not, bound to a model."""

    name: str
    method: str
    strength: float | None
    conditional: bool
    steering: Any  # steering.Steering (possibly empty)
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
    def interventions(self):
        """What to pass as `interventions=`: None for the unsteered model."""
        return self.steering if len(self.steering) else None

    @property
    def conditionals(self) -> list:
        from ..steering import Conditional

        found = []

        def walk(items):
            for item in items:
                if isinstance(item, Conditional):
                    found.append(item)
                    walk(item.interventions)

        walk(self.steering.interventions)
        return found

    def spec(self) -> dict:
        content = self.steering.content()
        return {"id": self.steering.id, "name": self.steering.name, **content}

    def to_store(self) -> Config:
        return Config(self.config_id, self.name, self.label, self.method, self.family, self.strength, self.conditional,
                      self.steering.id if len(self.steering) else None,
                      self.model_id, self.spec(), self.description)


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

    def configurations(self, chat) -> list[Configuration]:
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
                            raise RefusalScopeError(f"method '{m.name}' asks for conditional steering but no gate was given",
                                                    "pass Grid(..., gate=GateSpec(gate, threshold)) or Method(..., gate=...)")
                        if not items:
                            raise RefusalScopeError(f"method '{m.name}' has nothing to gate", "run it with conditional=(False,)")
                        items = [gate.wrap(items)]
                    steering = Steering(items, name=_label(m.name, strength, conditional)).for_model(chat)
                    steering.check(chat)
                    cfg = Configuration(m.name, m.method, strength, conditional, steering,
                                        _label(m.name, strength, conditional), m.description, chat.info.id)
                    if cfg.config_id in seen:
                        continue
                    seen.add(cfg.config_id)
                    out.append(cfg)
        return out

    def describe(self) -> dict:
        return {
            "methods": [
                {"name": m.name, "method": m.method, "strengths": list(m.strengths), "conditional": list(m.conditional),
                 "gate": (m.gate or self.gate).describe() if any(m.conditional) and (m.gate or self.gate) else None}
                for m in self.all_methods()
            ],
        }


# ---------------------------------------------------------------------- running


@dataclass
class SweepResult:
    db_path: Path
    run_id: int
    computed: int  # items computed by this run
    skipped: int  # items already in the store
    seconds: float
    task_calls: int = 0


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _gate_prompts(task, items) -> list[str] | None:
    """The prompts a task feeds the model verbatim, where known (refusal tasks): then the
    gate's decision can be recorded per item."""
    verbatim = getattr(task, "gate_prompts", None)
    if verbatim is None:
        described = task.describe() if hasattr(task, "describe") else {}
        verbatim = isinstance(described, dict) and described.get("kind") == "refusal"
    if not verbatim:
        return None
    prompts = [getattr(it, "prompt", None) for it in items]
    return prompts if all(isinstance(p, str) for p in prompts) else None


def run_sweep(
    chat,
    grid: Grid,
    tasks: Sequence,
    db_path: str | Path,
    *,
    data_dir=None,
    batch_size: int = 16,
    chunk_size: int | None = None,
    pairs: Sequence | None = None,
    gate_items: bool = True,
    progress: bool = True,
    note: str | None = None,
    executor=None,
) -> SweepResult:
    """Run every configuration of `grid` on every task, writing each chunk of items to the
    results store at `db_path` as soon as it is computed; items already stored are skipped.

    `tasks`: Tasks or TaskSpec(task, limit, seed). `batch_size` is passed to each task's
    run (prompts per forward); `chunk_size` (default: batch_size) is the number of items
    computed and committed together. `pairs`: extra (harmful task, benign task) names,
    or {"name", "harmful", "benign"} dicts, whose Δs the summary reports beside the
    registered dataset pairs. With a conditional gate, its fire rate is recorded per
    chunk, and per item for refusal tasks when `gate_items` (a forward to the gate's layer).

    `executor`: where the chunks are computed. None computes them here with `chat`; an
    object with `compute(chunks, batch_size=, gate_items=)` yielding one `ChunkResult`
    per `Chunk`, in any order, computes them elsewhere (e.g. `distributed.RayExecutor`,
    an actor pool). Either way this process stays the only writer of the store.
    """
    from ..provenance import environment

    started = time.time()
    if batch_size < 1:
        raise RefusalScopeError(f"batch_size must be at least 1, got {batch_size}")
    chunk_size = int(chunk_size or batch_size)
    specs = [as_task_spec(t) for t in tasks]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RefusalScopeError(f"task names repeat: {dup}", "give every task its own name")
    configs = grid.configurations(chat)

    with ResultsStore(db_path) as db:
        model = {**chat.info.to_dict(), "id": chat.info.id}
        grid_info = {**grid.describe(), "tasks": [{"name": s.name, "limit": s.limit, "seed": s.seed} for s in specs],
                     "batch_size": batch_size, "chunk_size": chunk_size}
        interrupted = db.mark_interrupted_runs()  # runs killed before they could say so
        run_id = db.start_run(model, environment(), grid_info, note)
        computed = skipped = calls = 0
        status = "failed"
        bar = None
        try:
            for cfg in configs:
                db.add_config(cfg.to_store())
            loaded = []
            for spec in specs:
                task = spec.task
                items = list(task.items(data_dir=data_dir, limit=spec.limit, seed=spec.seed))
                ids = [_item_id(it, spec.name) for it in items]
                if len(set(ids)) != len(ids):
                    raise RefusalScopeError(f"task '{spec.name}' has repeated item ids", "item ids must be unique within a task")
                db.add_task(spec.name, dataset=getattr(task, "dataset", None), split=getattr(task, "split", None),
                            primary=task.primary, higher_is_better=bool(task.higher_is_better), role=task_role(task),
                            judge=task_judge(task), describe=task.describe(), limit=spec.limit, seed=spec.seed)
                loaded.append((spec, list(zip(ids, items))))
            for pair in find_pairs(db.tasks()):
                db.add_pair(pair["name"], pair["harmful_task"], pair["benign_task"])
            known = {t["task"] for t in db.tasks()}
            for pair in pairs or ():
                name, harm, ben = (pair["name"], pair["harmful"], pair["benign"]) if isinstance(pair, dict) else (
                    f"{pair[0]} − {pair[1]}", pair[0], pair[1])
                missing = [t for t in (harm, ben) if t not in known]
                if missing:
                    raise RefusalScopeError(f"pair '{name}' names tasks not in this sweep: {missing}")
                db.add_pair(name, harm, ben)

            plan = []
            for cfg in configs:
                for spec, items in loaded:
                    done = db.done_items(cfg.config_id, spec.name)
                    todo = [(i, it) for i, it in items if i not in done]
                    skipped += len(items) - len(todo)
                    plan.append((cfg, spec, todo))
            total = sum(len(todo) for _, _, todo in plan)
            if progress and skipped:
                was = f" (run {', '.join(map(str, interrupted))} was interrupted)" if interrupted else ""
                print(f"resuming: {skipped:,} of {skipped + total:,} items stored in {db_path}{was}; {total:,} to compute",
                      file=sys.stderr, flush=True)
            bar = _progress(total, progress)
            chunks = [Chunk(cfg, spec, [i for i, _ in part], [it for _, it in part], k, len(plan))
                      for k, (cfg, spec, todo) in enumerate(plan, 1) for part in _chunks(todo, chunk_size)]
            if executor is None:
                done_chunks = (compute_chunk(chat, c, batch_size=batch_size, gate_items=gate_items, bar=bar) for c in chunks)
            else:
                if bar is not None:
                    bar.set_description(str(getattr(executor, "label", type(executor).__name__)), refresh=False)
                done_chunks = executor.compute(chunks, batch_size=batch_size, gate_items=gate_items)
            for out in done_chunks:
                calls += 1
                computed += db.write_batch(out.config_id, out.task, out.results, run_id, gate=out.gate, extra=out.extra)
                if bar is not None:
                    bar.update(len(out.results))
            status = "complete"
            _warn_first_token_disagreement(db)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if bar is not None:
                bar.close()
            db.finish_run(run_id, status, computed, skipped)
    return SweepResult(Path(db_path), run_id, computed, skipped, time.time() - started, calls)


@dataclass
class Chunk:
    """Items of one (configuration, task) cell computed and written together: the unit a
    sweep hands to whatever computes it (here, or a worker elsewhere)."""

    config: Configuration
    spec: TaskSpec
    ids: list[str]
    items: list
    cell: int = 1  # which (configuration, task) cell, 1-based, of `cells`
    cells: int = 1


@dataclass
class ChunkResult:
    """What the store writes for a chunk: one ItemResult per item, the gate's counters
    (fired, seen) and per-item gate metrics where the configuration is conditional."""

    config_id: str
    task: str
    results: list
    gate: tuple[int, int] | None = None
    extra: dict[str, dict[str, float]] | None = None


def compute_chunk(chat, chunk: Chunk, *, batch_size: int = 16, gate_items: bool = True, bar=None) -> ChunkResult:
    """Run one chunk on `chat`: the task's results (checked to be exactly one per item)
    plus the gate's decisions. Pure computation, no store: a sweep's driver and its remote
    workers run the same function, so a distributed sweep computes what a local one does."""
    cfg, spec, ids, items = chunk.config, chunk.spec, chunk.ids, chunk.items
    if bar is not None:
        bar.set_description(f"[{chunk.cell}/{chunk.cells}] {cfg.label} · {spec.name}", refresh=False)
    conds = cfg.conditionals
    for c in conds:
        c.reset_stats()
    results = list(spec.task.run(chat, items, interventions=cfg.interventions, batch_size=batch_size))
    got = [str(r.item_id) for r in results]
    if sorted(got) != sorted(ids):
        raise RefusalScopeError(
            f"task '{spec.name}' returned results for items {sorted(set(got) ^ set(ids))[:5]} "
            "that differ from the items it was given",
            "a task's run() returns exactly one ItemResult per item, with the item's id",
        )
    gate = extra = None
    if conds:
        gate = (sum(c.fired for c in conds), sum(c.seen for c in conds))
        prompts = _gate_prompts(spec.task, items) if gate_items else None
        if prompts is not None:
            extra = _gate_metrics(chat, conds, ids, prompts, batch_size)
    return ChunkResult(cfg.config_id, spec.name, results, gate, extra)


def _warn_first_token_disagreement(db) -> None:
    """Flag configurations where the first-token judge disagrees with judged full replies
    (tasks with check_every; see evaluation/first_token_check.py)."""
    import warnings

    from .first_token_check import AGREEMENT_FLOOR, first_token_agreement

    low = [a for a in first_token_agreement(db) if a.flagged]
    if low:
        cells = "; ".join(f"{a.label} · {a.task}: {a.agreement}" for a in low)
        warnings.warn(f"first-token judge agrees with judged replies below {AGREEMENT_FLOOR:.0%} in {cells}; "
                      "do not trust its refusal rate there (rerun those cells with generated replies)", stacklevel=3)


def _gate_metrics(chat, conds, ids, prompts, batch_size) -> dict[str, dict[str, float]]:
    decided = [c.decisions(chat, prompts, batch_size) for c in conds]
    out = {}
    for row, item_id in enumerate(ids):
        metrics = {"gate_fired": float(any(bool(d.fired[row]) for d in decided))}
        if len(decided) == 1:
            metrics["gate_score"] = float(decided[0].scores[row])
        out[item_id] = metrics
    return out


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


# ---------------------------------------------------------------------- summaries


@dataclass
class Summary:
    """Per (configuration, task): the primary metric with its bootstrap CI and n (and the
    gate's fire rate); per (configuration, dataset pair): Δs with a bootstrap CI."""

    configs: list[dict]
    tasks: list[dict]
    cells: list[dict] = field(default_factory=list)
    deltas: list[dict] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'configuration':34} {'task':22} {'metric':10} {'value':>7} {'95% CI':>17} {'n':>5}  gate"]
        for c in self.cells:
            fire = "" if c["fire_rate"] is None else f"{c['fire_rate']:.0%}"
            lines.append(f"{c['label'][:34]:34} {c['task'][:22]:22} {c['metric'][:10]:10} {_num(c['value']):>7} "
                         f"{'[' + _num(c['low']) + ', ' + _num(c['high']) + ']':>17} {c['n']:>5}  {fire}")
        if self.deltas:
            lines.append("")
            lines.append(f"{'configuration':34} {'Δs pair':22} {'':10} {'Δs':>7} {'95% CI':>17} {'n':>5}")
            for d in self.deltas:
                lines.append(f"{d['label'][:34]:34} {d['pair'][:22]:22} {'':10} {_num(d['value']):>7} "
                             f"{'[' + _num(d['low']) + ', ' + _num(d['high']) + ']':>17} {d['n']:>5}")
        return "\n".join(lines)


def _num(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _config_fields(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("config_id", "name", "label", "method", "family", "strength", "conditional")}


def summarise(db, seed: int = 0) -> Summary:
    """Summaries from a results store (a path or an open ResultsStore)."""
    if isinstance(db, ResultsStore):
        return _summarise(db, seed)
    with ResultsStore(db, create=False) as store:
        return _summarise(store, seed)


def _summarise(db: ResultsStore, seed: int) -> Summary:
    configs, tasks = db.configs(), db.tasks()
    summary = Summary(configs, tasks)
    by_task = {t["task"]: t for t in tasks}
    for cfg in configs:
        for t in tasks:
            est = db.estimate(cfg["config_id"], t["task"], t["primary_metric"], seed=seed)
            if est.n == 0:
                continue
            fire = db.gate_rate(cfg["config_id"], t["task"]) if cfg["conditional"] else None
            summary.cells.append({
                **_config_fields(cfg), "task": t["task"], "role": t["role"], "dataset": t["dataset"],
                "metric": t["primary_metric"], "higher_is_better": t["higher_is_better"],
                "value": est.value, "low": est.low, "high": est.high, "n": est.n,
                "fire_rate": None if fire is None else fire.value,
                "fire_low": None if fire is None else fire.low,
                "fire_high": None if fire is None else fire.high,
                "fire_n": None if fire is None else fire.n,
            })
    pairs = {(p["harmful_task"], p["benign_task"]): p["name"] for p in db.pairs()}
    for p in find_pairs(tasks):
        pairs.setdefault((p["harmful_task"], p["benign_task"]), p["name"])
    for (harm, ben), name in pairs.items():
        if harm not in by_task or ben not in by_task:
            continue
        hm, bm = by_task[harm]["primary_metric"], by_task[ben]["primary_metric"]
        for cfg in configs:
            a = [v for v in db.values(cfg["config_id"], harm, hm).values() if not math.isnan(v)]
            b = [v for v in db.values(cfg["config_id"], ben, bm).values() if not math.isnan(v)]
            if not a or not b:
                continue
            est = difference(a, b, seed=seed)
            summary.deltas.append({
                **_config_fields(cfg), "pair": name, "harmful_task": harm, "benign_task": ben,
                "value": est.value, "low": est.low, "high": est.high, "n": est.n,
                "n_harmful": len(a), "n_benign": len(b),
                "refusal_harmful": sum(a) / len(a), "refusal_benign": sum(b) / len(b),
            })
    return summary


# ---------------------------------------------------------------------- grid files

GRID_KEYS = {"model", "dtype", "data_dir", "batch_size", "chunk_size", "max_new_tokens", "judge", "unsteered", "gate",
             "methods", "tasks", "pairs", "note"}
METHOD_KEYS = {"name", "method", "spec", "strengths", "conditional", "gate", "description"}
TASK_KEYS = {"name", "dataset", "capability", "split", "expect", "limit", "seed", "max_new_tokens", "judge", "requests",
             "role", "options"}
_ANSWER = {"xstest/safe"}


@dataclass
class SweepPlan:
    """A grid file, read: what `refusalscope sweep` runs."""

    grid: Grid
    tasks: list[TaskSpec]
    model: str | None = None
    dtype: str = "auto"
    data_dir: Path | None = None
    batch_size: int = 16
    chunk_size: int | None = None
    pairs: list = field(default_factory=list)
    note: str | None = None


def _read_mapping(path: Path) -> dict:
    from ..paths import read_json_or_yaml

    data = read_json_or_yaml(path, "grid file")
    if not isinstance(data, dict):
        raise RefusalScopeError(f"{path}: a grid file is a mapping with 'methods' and 'tasks'",
                                "see `refusalscope sweep --help` and evaluation/sweep.py:load_grid_file for the layout")
    return data


def _unknown(where: str, keys: Iterable[str], allowed: set[str]) -> None:
    from ..checks import check_keys

    check_keys(dict.fromkeys(keys), allowed, where)


def _opt_number(data: dict, key: str, where: str, **limits):
    """data[key] checked (type, range, finiteness) where the grid is read, or None if absent."""
    from ..checks import number

    value = data.get(key)
    return None if value is None else number(value, f"{where}: {key}", **limits)


def _opt_text(data: dict, key: str, where: str):
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RefusalScopeError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _conditional_setting(value, where: str) -> tuple[bool, ...]:
    if value in (None, False, "off"):
        return (False,)
    if value in (True, "on"):
        return (True,)
    if value == "both":
        return (False, True)
    if isinstance(value, list) and all(isinstance(v, bool) for v in value) and value:
        return tuple(value)
    raise RefusalScopeError(f"{where}: conditional must be false, true, 'both' or a list like [false, true], got {value!r}")


def _judge(name: str | None, where: str):
    if name in (None, "substring"):
        from ..judges import SubstringJudge

        return SubstringJudge()
    raise RefusalScopeError(f"{where}: judge '{name}' cannot be named in a grid file", "use 'substring' (the default)")


def _default_expect(dataset: str, split: str | None) -> str:
    if dataset.startswith("harmless/") or dataset in _ANSWER or (dataset == "builtin/minimal-pairs" and split == "benign"):
        return "answer"
    return "refuse"


def _capability_task(name: str, entry: dict, defaults: dict, where: str):
    """A capability task by its short name (`evaluation.capability.capability_task`)."""
    from .capability import capability_task

    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise RefusalScopeError(f"{where}: options is a mapping of capability_task's keyword arguments")
    options = dict(options)
    _unknown(f"{where}.options", options, {"chat", "system", "gsm8k_max_new_tokens", "triviaqa_max_new_tokens", "window"})
    for key in ("gsm8k_max_new_tokens", "triviaqa_max_new_tokens", "window"):
        _opt_number(options, key, f"{where}.options", integer=True, minimum=1)
    if not isinstance(options.get("chat", True), bool):
        raise RefusalScopeError(f"{where}.options: chat must be true or false")
    _opt_text(options, "system", f"{where}.options")
    options.setdefault("data_dir", defaults.get("data_dir"))
    try:
        task = capability_task(name, **options)
    except TypeError as exc:
        raise RefusalScopeError(f"{where}: {exc}", "see refusalscope.evaluation.capability.capability_task") from None
    if entry.get("name") and entry["name"] != name:
        task.name = entry["name"]
    return task


def _task_from_entry(entry, index: int, defaults: dict) -> TaskSpec:
    from ..data import REGISTRY, load_dataset
    from .capability import CAPABILITY_TASKS
    from .tasks import RefusalTask

    where = f"tasks[{index}]"
    if isinstance(entry, str):
        entry = {"dataset": entry} if entry in REGISTRY else {"capability": entry}
    if not isinstance(entry, dict):
        raise RefusalScopeError(f"{where}: a task is a dataset name, a capability task name, or a mapping")
    _unknown(where, entry, TASK_KEYS)
    limit = _opt_number(entry, "limit", where, integer=True, minimum=1)
    seed = _opt_number(entry, "seed", where, integer=True, minimum=0) or 0
    max_new_tokens = _opt_number(entry, "max_new_tokens", where, integer=True, minimum=1)
    for key in ("name", "dataset", "capability", "split", "expect", "role"):
        _opt_text(entry, key, where)
    dataset = entry.get("dataset")
    capability = entry.get("capability")
    if capability is None and dataset is None and entry.get("name"):
        base = re.sub(r"-\d+shot$", "", str(entry["name"]))
        if base in CAPABILITY_TASKS:
            capability = entry["name"]
    if capability is not None:
        task = _capability_task(str(capability), entry, defaults, where)
    elif dataset is not None:
        spec = REGISTRY.get(dataset)
        if spec is None:
            from ..checks import did_you_mean

            raise RefusalScopeError(f"{where}: unknown dataset '{dataset}'{did_you_mean(dataset, REGISTRY)}",
                                    "`refusalscope datasets` lists them")
        if spec.kind != "prompts":
            raise RefusalScopeError(
                f"{where}: '{dataset}' is a {spec.kind} dataset, not prompts to judge for refusal",
                f"name capability benchmarks with `capability:` ({', '.join(CAPABILITY_TASKS)})",
            )
        split = entry.get("split")
        requests = ()
        if entry.get("requests"):
            req = entry["requests"]
            req = {"dataset": req} if isinstance(req, str) else req
            if not isinstance(req, dict) or not isinstance(req.get("dataset"), str):
                raise RefusalScopeError(f"{where}: requests is a dataset name or {{dataset: ..., split, limit, seed}}")
            _unknown(f"{where}.requests", req, {"dataset", "split", "limit", "seed"})
            requests = tuple(load_dataset(req["dataset"], _opt_text(req, "split", where), data_dir=defaults.get("data_dir"),
                                          limit=_opt_number(req, "limit", f"{where}.requests", integer=True, minimum=1) or 5,
                                          seed=_opt_number(req, "seed", f"{where}.requests", integer=True, minimum=0) or 0).prompts)
        name = entry.get("name") or (dataset + (f":{split}" if split else ""))
        task = RefusalTask(name, dataset, split, expect=entry.get("expect") or _default_expect(dataset, split),
                           max_new_tokens=max_new_tokens or defaults.get("max_new_tokens") or 32,
                           judge=_judge(entry.get("judge", defaults.get("judge")), where), template_requests=requests)
    else:
        raise RefusalScopeError(f"{where}: a task needs `dataset:` (refusal prompts) or `capability:` (a benchmark)",
                                f"capability benchmarks: {', '.join(CAPABILITY_TASKS)}")
    if entry.get("role"):
        try:
            task.role = entry["role"]
        except AttributeError:
            raise RefusalScopeError(f"{where}: this task's role cannot be set") from None
    return TaskSpec(task, limit, seed)


def load_grid_file(path: str | Path) -> SweepPlan:
    """Read a grid file (YAML or JSON); paths in it are relative to the file.

        model: default                 # optional (--model overrides)
        data_dir: ../shared/data       # optional
        batch_size: 8
        max_new_tokens: 32             # refusal tasks' default
        gate: gate.json                # steering spec with one conditional: its gate and threshold
        methods:
          - {name: features, method: "features:cossim+ig", spec: features.json,
             strengths: [0.5, 1, 2, 4], conditional: both}
          - {name: actadd, method: "dense:actadd", spec: actadd.json, strengths: [1, 2, 4], conditional: both}
        tasks:
          - {name: jbb-harmful, dataset: harmful/jailbreakbench, limit: 20}
          - {name: jbb-benign, dataset: harmless/jailbreakbench, limit: 20}
          - {capability: mmlu, limit: 40}        # evaluation.capability.capability_task('mmlu')
          - {capability: gsm8k, limit: 10, options: {gsm8k_max_new_tokens: 128}}
        pairs: [{name: jbb, harmful: jbb-harmful, benign: jbb-benign}]   # optional, beyond the registered ones

    A method's strengths multiply the magnitudes in its spec file (feature values, ActAdd
    coefficients, clamp values); the unsteered model is included unless `unsteered: false`.
    """
    from ..checks import choice, number

    path = Path(path)
    data = _read_mapping(path)
    _unknown(str(path), data, GRID_KEYS)
    where = str(path)
    batch_size = _opt_number(data, "batch_size", where, integer=True, minimum=1)
    chunk_size = _opt_number(data, "chunk_size", where, integer=True, minimum=1)
    max_new_tokens = _opt_number(data, "max_new_tokens", where, integer=True, minimum=1)
    for key in ("model", "data_dir", "gate", "note", "judge"):
        _opt_text(data, key, where)
    dtype = choice(data.get("dtype", "auto"), f"{where}: dtype", ("auto", "bf16", "bfloat16", "fp32", "float32", "fp16", "float16"))
    if not isinstance(data.get("unsteered", True), bool):
        raise RefusalScopeError(f"{where}: unsteered must be true or false")
    pairs = data.get("pairs") or []
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise RefusalScopeError(f"{where}: pairs is a list of {{name, harmful, benign}} mappings")
    for i, p in enumerate(pairs):
        _unknown(f"pairs[{i}]", p, {"name", "harmful", "benign"})
    base = path.parent

    def rel(p):
        q = Path(str(p)).expanduser()
        return q if q.is_absolute() else base / q

    gate = GateSpec.from_spec(rel(data["gate"])) if data.get("gate") else None
    methods = []
    raw_methods = data.get("methods") or []
    if not isinstance(raw_methods, list):
        raise RefusalScopeError(f"{path}: 'methods' is a list")
    for i, m in enumerate(raw_methods):
        where = f"methods[{i}]"
        if not isinstance(m, dict):
            raise RefusalScopeError(f"{where}: a method is a mapping with at least 'spec'")
        _unknown(where, m, METHOD_KEYS)
        if not m.get("spec") or not isinstance(m["spec"], str):
            raise RefusalScopeError(f"{where}: a method needs a steering 'spec' file")
        for key in ("name", "method", "description", "gate"):
            _opt_text(m, key, where)
        strengths = m.get("strengths", [1.0])
        strengths = strengths if isinstance(strengths, list) else [strengths]
        if not strengths:
            raise RefusalScopeError(f"{where}: strengths is empty", "list at least one strength, e.g. [1, 2]")
        strengths = [number(x, f"{where}: strength") for x in strengths]
        methods.append(Method.from_steering(
            rel(m["spec"]), strengths, name=m.get("name"), method=m.get("method"),
            conditional=_conditional_setting(m.get("conditional"), where),
            gate=GateSpec.from_spec(rel(m["gate"])) if m.get("gate") else None,
            **({"description": m["description"]} if m.get("description") else {}),
        ))
    data_dir = rel(data["data_dir"]) if data.get("data_dir") else None
    defaults = {"data_dir": data_dir, "max_new_tokens": max_new_tokens, "judge": data.get("judge")}
    raw_tasks = data.get("tasks") or []
    if not raw_tasks or not isinstance(raw_tasks, list):
        raise RefusalScopeError(f"{path}: no tasks", "list tasks, e.g. tasks: [{dataset: harmful/jailbreakbench, limit: 20}]")
    tasks = [_task_from_entry(t, i, defaults) for i, t in enumerate(raw_tasks)]
    return SweepPlan(Grid(methods, gate=gate, unsteered=data.get("unsteered", True)), tasks,
                     model=data.get("model"), dtype=dtype, data_dir=data_dir,
                     batch_size=batch_size or 16, chunk_size=chunk_size, pairs=list(pairs),
                     note=data.get("note"))
