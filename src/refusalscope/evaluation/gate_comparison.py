"""Which gate to steer behind: the gates of a sweep's conditional configurations compared.

Conditional steering (O'Brien et al.) is only as good as its gate: it should fire on
harmful requests, including jailbroken ones the gate never saw, stay quiet on harmless
ones, and so leave capability questions unsteered. A sweep records each gated
configuration's decision on every item (`gate_fired`), so from one results store this
module reads, per gated configuration:

- the fire rate on every task (bootstrap CI, n);
- gate accuracy in distribution (harmful-role tasks vs benign-role tasks) and out of
  distribution (jailbreak-role tasks vs the benign tasks named as look-alikes, by default
  all benign tasks): balanced accuracy of the gate's decisions, stratified bootstrap CI;
- what it saves in capability: the share of capability items it leaves unsteered, and
  per capability task the gated score beside the same steering ungated and the unsteered
  model (gated − ungated with a bootstrap CI: the capability the gate buys back).

A direction gate and a probe gate on the same steering (two grid methods, see
`grid_file.load_grid_file`) become two rows of one table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RefusalScopeError
from ..stats import Estimate, difference, rate
from .rows import ConfigRow, TaskRow, read_configs, read_tasks
from .store import ResultsStore


@dataclass
class CapabilityEffect:
    """One capability task under one gated configuration."""

    task: str
    metric: str
    gated: Estimate
    ungated: Estimate | None  # the same steering on every prompt
    unsteered: Estimate | None
    saved: Estimate | None  # gated − ungated (higher-is-better metrics; sign flipped otherwise)

    def to_dict(self) -> dict[str, Any]:
        def d(e: Estimate | None) -> dict | None:
            return None if e is None else e.to_dict()

        return {
            "task": self.task,
            "metric": self.metric,
            "gated": d(self.gated),
            "ungated": d(self.ungated),
            "unsteered": d(self.unsteered),
            "saved": d(self.saved),
        }


@dataclass
class GateRow:
    """A gated configuration: its gate, where it fires, how accurately, what it saves."""

    config: ConfigRow
    gate_kind: str  # probe | direction | feature | ...
    gate: dict[str, Any]  # the gate's spec block (threshold, reduce, positions, ...)
    fire: dict[str, Estimate] = field(default_factory=dict)  # per task
    id_balanced_accuracy: Estimate | None = None
    ood_balanced_accuracy: Estimate | None = None
    capability_fire: Estimate | None = None  # pooled over the capability tasks
    capability: list[CapabilityEffect] = field(default_factory=list)

    @property
    def capability_unsteered(self) -> Estimate | None:
        """Share of capability items the gate leaves alone (1 − capability fire rate)."""
        f = self.capability_fire
        return None if f is None else f.complement()

    def to_dict(self) -> dict[str, Any]:
        def d(e: Estimate | None) -> dict | None:
            return None if e is None else e.to_dict()

        return {
            **self.config.key(),
            "gate_kind": self.gate_kind,
            "gate": self.gate,
            "fire": {t: e.to_dict() for t, e in self.fire.items()},
            "id_balanced_accuracy": d(self.id_balanced_accuracy),
            "ood_balanced_accuracy": d(self.ood_balanced_accuracy),
            "capability_fire": d(self.capability_fire),
            "capability_left_unsteered": d(self.capability_unsteered),
            "capability": [c.to_dict() for c in self.capability],
        }


def gate_blocks(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every conditional's gate block in a stored steering spec (nested ones too)."""
    found: list[dict[str, Any]] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if isinstance(item, dict) and item.get("kind") == "conditional":
                found.append(dict(item.get("gate") or {}))
                walk(item.get("interventions"))

    walk(spec.get("interventions"))
    return found


def _decisions(db: ResultsStore, config_id: str, tasks: Sequence[str]) -> np.ndarray:
    """The gate's decision per item of `tasks`. Tasks whose prompts the sweep cannot give the
    gate verbatim (multiple-choice capability tasks) have only the gate's counters (fired,
    seen over the forwards it gated): those count as that many decisions."""
    values: list[float] = []
    for t in tasks:
        per_item = [v for v in db.values(config_id, t, "gate_fired").values() if not math.isnan(v)]
        if per_item:
            values += per_item
            continue
        counted = db.gate_rate(config_id, t)
        if counted is not None and counted.n:
            fired = int(round(counted.value * counted.n))
            values += [1.0] * fired + [0.0] * (counted.n - fired)
    return np.asarray(values, dtype=bool)


def _balanced(harmful: np.ndarray, harmless: np.ndarray, seed: int) -> Estimate | None:
    from ..probes.compare import balanced_accuracy, stratified_bootstrap

    if harmful.size == 0 or harmless.size == 0:
        return None
    y = np.concatenate([np.ones(harmful.size), np.zeros(harmless.size)])
    return stratified_bootstrap(y, np.concatenate([harmful, harmless]), balanced_accuracy, seed=seed)


def _names(tasks: list[TaskRow], role: str) -> list[str]:
    return [t.name for t in tasks if t.role == role]


def compare_gates(
    db: str | Path | ResultsStore,
    *,
    harmful: Sequence[str] | None = None,
    harmless: Sequence[str] | None = None,
    ood_harmful: Sequence[str] | None = None,
    ood_harmless: Sequence[str] | None = None,
    seed: int = 0,
) -> list[GateRow]:
    """One row per gated configuration of a results store.

    Task names default to the tasks' roles: ID = `harmful` vs `benign` tasks, OOD =
    `jailbreak` tasks vs the `benign` tasks (name the look-alikes, e.g. XSTest-safe, with
    `ood_harmless`). Unknown task names are an error."""
    if not isinstance(db, ResultsStore):
        with ResultsStore(db, create=False) as store:
            return compare_gates(
                store,
                harmful=harmful,
                harmless=harmless,
                ood_harmful=ood_harmful,
                ood_harmless=ood_harmless,
                seed=seed,
            )
    configs, tasks = read_configs(db), read_tasks(db)
    known = {t.name for t in tasks}
    for given in (harmful, harmless, ood_harmful, ood_harmless):
        unknown = sorted(set(given or ()) - known)
        if unknown:
            raise RefusalScopeError(
                f"no task named {', '.join(unknown)} in the results store",
                f"its tasks: {', '.join(sorted(known))}",
            )
    id_h = list(harmful) if harmful is not None else _names(tasks, "harmful")
    id_b = list(harmless) if harmless is not None else _names(tasks, "benign")
    ood_h = list(ood_harmful) if ood_harmful is not None else _names(tasks, "jailbreak")
    ood_b = list(ood_harmless) if ood_harmless is not None else id_b
    capability = [t for t in tasks if t.role == "capability"]
    unsteered = next((c for c in configs if c.unsteered), None)
    rows = []
    for cfg in configs:
        blocks = gate_blocks(cfg.spec)
        if not cfg.conditional or not blocks:
            continue
        gate = blocks[0]
        row = GateRow(cfg, str(gate.get("kind", "?")), gate)
        for t in tasks:
            fired = _decisions(db, cfg.config_id, [t.name])
            if fired.size:
                row.fire[t.name] = rate(fired, seed)
        row.id_balanced_accuracy = _balanced(
            _decisions(db, cfg.config_id, id_h), _decisions(db, cfg.config_id, id_b), seed
        )
        row.ood_balanced_accuracy = _balanced(
            _decisions(db, cfg.config_id, ood_h), _decisions(db, cfg.config_id, ood_b), seed
        )
        cap_fired = _decisions(db, cfg.config_id, [t.name for t in capability])
        row.capability_fire = rate(cap_fired, seed) if cap_fired.size else None
        twin = _ungated_twin(cfg, configs)
        for t in capability:
            gated = db.values(cfg.config_id, t.name, t.primary_metric)
            if not gated:
                continue
            plain = db.values(twin.config_id, t.name, t.primary_metric) if twin else {}

            def score(other: ConfigRow | None) -> Estimate | None:
                if other is None or not db.values(other.config_id, t.name, t.primary_metric):  # noqa: B023
                    return None
                return db.estimate(other.config_id, t.name, t.primary_metric, seed=seed)  # noqa: B023

            row.capability.append(
                CapabilityEffect(
                    t.name,
                    t.primary_metric,
                    db.estimate(cfg.config_id, t.name, t.primary_metric, seed=seed),
                    score(twin),
                    score(unsteered),
                    _saved(gated, plain, t.higher_is_better, seed) if plain else None,
                )
            )
        rows.append(row)
    return rows


def _ungated_twin(cfg: ConfigRow, configs: Sequence[ConfigRow]) -> ConfigRow | None:
    """The same steering without the gate: an ungated configuration whose spec holds exactly
    the gated one's inner interventions (else the same method and strength, ungated)."""
    inner = [i for item in cfg.spec.get("interventions", []) for i in (item.get("interventions") or [])]
    plain = [c for c in configs if not c.conditional and not c.unsteered]
    same = [c for c in plain if c.spec.get("interventions") == inner]
    if same:
        return same[0]
    return next((c for c in plain if c.method == cfg.method and c.strength == cfg.strength), None)


def _saved(gated: dict[str, float], ungated: dict[str, float], higher_is_better: bool, seed: int) -> Estimate:
    g = [v for v in gated.values() if not math.isnan(v)]
    u = [v for v in ungated.values() if not math.isnan(v)]
    est = difference(g, u, seed=seed)
    if higher_is_better:
        return est
    return est.negated()


def gate_table(rows: Sequence[GateRow]) -> list[list[str]]:
    """Header + one line per gated configuration, for printing."""

    def ci(e: Estimate | None) -> str:
        if e is None or e.n == 0 or e.value != e.value:
            return "n/a"
        return f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"

    out = [
        [
            "configuration",
            "gate",
            "ID bal. acc",
            "OOD bal. acc",
            "capability left unsteered",
            "capability: gated vs ungated (task, Δ)",
        ]
    ]
    for r in rows:
        saved = "; ".join(f"{c.task}: {ci(c.saved)}" for c in r.capability) or "n/a"
        out.append(
            [
                r.config.label,
                f"{r.gate_kind} > {r.gate.get('threshold', float('nan')):.3g}",
                ci(r.id_balanced_accuracy),
                ci(r.ood_balanced_accuracy),
                ci(r.capability_unsteered),
                saved,
            ]
        )
    return out
