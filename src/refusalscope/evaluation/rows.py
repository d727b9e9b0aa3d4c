"""Typed rows of the results store: configurations, tasks, dataset pairs and runs.

`ResultsStore` hands out plain dicts (one per SQLite row, JSON columns decoded), which is
what its other readers need. Summaries and the report read these dataclasses instead, so
a misspelt column is an AttributeError where it is written, a type checker sees every
field, and the export columns are declared in one place (`row()`), not spread over string
keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..types import TaskRole
from .store import config_key

if TYPE_CHECKING:
    from .store import ResultsStore


@dataclass(frozen=True)
class ConfigRow:
    """One configuration (grid point) as the store keeps it."""

    config_id: str
    name: str  # the grid method's name: one line in the plots
    label: str  # the grid point, e.g. "features ×2 (conditional)"
    method: str  # family:detail, e.g. "features:cossim+ig", "dense:actadd", "none"
    family: str
    strength: float | None
    conditional: bool
    steering_id: str | None = None
    model_id: str | None = None
    description: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)  # the steering spec (content + id + name)
    saes: list[dict[str, Any]] = field(default_factory=list)  # SAE references in the spec (source, sha256, ...)

    @classmethod
    def from_store(cls, row: Mapping[str, Any]) -> ConfigRow:
        return cls(
            row["config_id"],
            row["name"],
            row["label"],
            row["method"],
            row["family"],
            row["strength"],
            bool(row["conditional"]),
            row.get("steering_id"),
            row.get("model_id"),
            row.get("description"),
            row.get("spec") or {},
            row.get("saes") or [],
        )

    @property
    def unsteered(self) -> bool:
        return self.family == "none"

    def key(self) -> dict[str, Any]:
        """The columns every exported row of this configuration starts with
        (`store.CONFIG_KEY_COLUMNS`, shared with `store.Config.row()`)."""
        return config_key(self)


@dataclass(frozen=True)
class TaskRow:
    """One task as the store keeps it (`name` is the store's `task` column)."""

    name: str
    dataset: str | None
    split: str | None
    primary_metric: str
    higher_is_better: bool
    role: TaskRole  # harmful | benign | jailbreak | capability (the store checks it on write)
    judge: str | None = None
    describe: dict[str, Any] = field(default_factory=dict)
    item_limit: int | None = None
    seed: int | None = None

    @classmethod
    def from_store(cls, row: Mapping[str, Any]) -> TaskRow:
        return cls(
            row["task"],
            row.get("dataset"),
            row.get("split"),
            row["primary_metric"],
            bool(row["higher_is_better"]),
            row["role"],
            row.get("judge"),
            row.get("describe") or {},
            row.get("item_limit"),
            row.get("seed"),
        )


@dataclass(frozen=True)
class TaskPair:
    """A harmful task and a benign task of one store whose refusal rates give Δs."""

    name: str
    harmful_task: str
    benign_task: str

    @classmethod
    def from_store(cls, row: Mapping[str, Any]) -> TaskPair:
        return cls(row["name"], row["harmful_task"], row["benign_task"])

    def row(self) -> dict[str, str]:
        return {"name": self.name, "harmful_task": self.harmful_task, "benign_task": self.benign_task}


@dataclass(frozen=True)
class RunRow:
    """One `sweep` run recorded in the store."""

    run_id: int
    started: float
    finished: float | None
    status: str
    model_id: str | None
    computed: int
    skipped: int
    note: str | None = None
    model: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None

    @classmethod
    def from_store(cls, row: Mapping[str, Any]) -> RunRow:
        return cls(
            row["run_id"],
            row["started"],
            row.get("finished"),
            row["status"],
            row.get("model_id"),
            row.get("computed", 0),
            row.get("skipped", 0),
            row.get("note"),
            row.get("model"),
            row.get("environment"),
            row.get("versions"),
        )

    @property
    def platform(self) -> Any:
        return (self.environment or {}).get("platform")


def read_configs(db: ResultsStore) -> list[ConfigRow]:
    return [ConfigRow.from_store(r) for r in db.configs()]


def read_tasks(db: ResultsStore) -> list[TaskRow]:
    return [TaskRow.from_store(r) for r in db.tasks()]


def read_pairs(db: ResultsStore) -> list[TaskPair]:
    return [TaskPair.from_store(r) for r in db.pairs()]


def read_runs(db: ResultsStore) -> list[RunRow]:
    return [RunRow.from_store(r) for r in db.runs()]
