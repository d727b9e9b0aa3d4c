"""What a results store says, per cell: each (configuration, task)'s primary metric with its
bootstrap CI and n, the conditional gate's fire rate, and Δs per dataset pair.

`summarise` is the one reader that turns item-level rows into estimates; the sweep prints
its table and the report draws every figure from it, so the two can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..stats import Estimate
from .deltas import Delta, compute_deltas
from .rows import ConfigRow, TaskRow, read_configs, read_tasks
from .store import ResultsStore


@dataclass(frozen=True)
class Cell:
    """One (configuration, task): the task's primary metric over its items (NaN items left
    out) and, for a conditional configuration, how often its gate fired."""

    config: ConfigRow
    task: TaskRow
    estimate: Estimate
    fire: Estimate | None = None

    @property
    def metric(self) -> str:
        return self.task.primary_metric

    def row(self) -> dict[str, Any]:
        """The flat record the report exports (summary.csv/.json and the per-figure files)."""
        e, f, t = self.estimate, self.fire, self.task
        return {
            **self.config.key(),
            "task": t.name,
            "role": t.role,
            "dataset": t.dataset,
            "metric": t.primary_metric,
            "higher_is_better": t.higher_is_better,
            "value": e.value,
            "low": e.low,
            "high": e.high,
            "n": e.n,
            "fire_rate": None if f is None else f.value,
            "fire_low": None if f is None else f.low,
            "fire_high": None if f is None else f.high,
            "fire_n": None if f is None else f.n,
        }


@dataclass
class Summary:
    """Per (configuration, task): the primary metric with its bootstrap CI and n (and the
    gate's fire rate); per (configuration, dataset pair): Δs with a bootstrap CI."""

    configs: list[ConfigRow]
    tasks: list[TaskRow]
    cells: list[Cell] = field(default_factory=list)
    deltas: list[Delta] = field(default_factory=list)

    def cell(self, config_id: str, task: str) -> Cell | None:
        """The cell of one configuration on one task, if it has results."""
        return next((c for c in self.cells if c.config.config_id == config_id and c.task.name == task), None)

    def table(self) -> str:
        lines = [f"{'configuration':34} {'task':22} {'metric':10} {'value':>7} {'95% CI':>17} {'n':>5}  gate"]
        for c in self.cells:
            e = c.estimate
            fire = "" if c.fire is None else f"{c.fire.value:.0%}"
            lines.append(
                f"{c.config.label[:34]:34} {c.task.name[:22]:22} {c.metric[:10]:10} {number(e.value):>7} "
                f"{'[' + number(e.low) + ', ' + number(e.high) + ']':>17} {e.n:>5}  {fire}"
            )
        if self.deltas:
            lines.append("")
            lines.append(f"{'configuration':34} {'Δs pair':22} {'':10} {'Δs':>7} {'95% CI':>17} {'n':>5}")
            for d in self.deltas:
                e = d.estimate
                lines.append(
                    f"{d.config.label[:34]:34} {d.pair.name[:22]:22} {'':10} {number(e.value):>7} "
                    f"{'[' + number(e.low) + ', ' + number(e.high) + ']':>17} {e.n:>5}"
                )
        return "\n".join(lines)


def number(v: float | None) -> str:
    """Three decimals, or n/a for a missing (None or NaN) value."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def summarise(db: str | Path | ResultsStore, seed: int = 0) -> Summary:
    """Summaries from a results store (a path, opened read-only, or an open ResultsStore)."""
    if not isinstance(db, ResultsStore):
        with ResultsStore(db, create=False) as store:
            return summarise(store, seed)
    configs, tasks = read_configs(db), read_tasks(db)
    summary = Summary(configs, tasks)
    for cfg in configs:
        for t in tasks:
            est = db.estimate(cfg.config_id, t.name, t.primary_metric, seed=seed)
            if est.n == 0:
                continue
            fire = db.gate_rate(cfg.config_id, t.name) if cfg.conditional else None
            summary.cells.append(Cell(cfg, t, est, fire))
    summary.deltas.extend(compute_deltas(db, configs, tasks, seed))
    return summary
