"""Harmful behaviours with the target string an optimisation attack aims the reply at.

GCG needs, for every behaviour, the opening of a compliant reply ("Sure, here is how to
...") to maximise the likelihood of. HarmBench publishes one per behaviour
(`harmbench/harmbench_targets_text.json`, keyed by BehaviorID); JailbreakBench's
JBB-Behaviors carries a `Target` column. A behaviour without one is an error, not a
silently skipped row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import RefusalScopeError

TARGETS_FILE = "harmbench/harmbench_targets_text.json"


@dataclass(frozen=True)
class Behaviour:
    """A harmful request, its id, and the compliant opening an attack optimises for."""

    id: str
    request: str
    target: str | None = None
    source: str = ""

    def require_target(self) -> str:
        if not self.target:
            raise RefusalScopeError(
                f"behaviour '{self.id}' has no target string, which GCG optimises the reply towards",
                f"use behaviours from harmful/harmbench or harmful/jailbreakbench, or give a target (e.g. via "
                f"{TARGETS_FILE})",
            )
        return self.target


def harmbench_targets(data_dir: str | Path | None = None) -> dict[str, str]:
    """BehaviorID -> target string, from HarmBench's release file."""
    from ..data.registry import resolve_data_dir

    root = resolve_data_dir(data_dir)
    path = None if root is None else root / TARGETS_FILE
    if path is None or not path.is_file():
        raise RefusalScopeError(
            f"HarmBench target strings not found ({TARGETS_FILE} under {root})",
            "set REFUSALSCOPE_DATA (or --data-dir) to the folder holding the HarmBench release files",
        )
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise RefusalScopeError(f"{path} is not a JSON object of BehaviorID -> target string")
    return {str(k): str(v) for k, v in data.items()}


def load_behaviours(
    dataset: str = "harmful/harmbench",
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    standard_only: bool = True,
) -> list[Behaviour]:
    """Behaviours of a registered harmful dataset, each with its target (or None).

    For HarmBench, `standard_only` keeps the 'standard' functional category (contextual
    behaviours carry a long context and copyright ones are not refusal tests).
    """
    from ..data import load_dataset

    if limit is not None and limit < 1:
        raise RefusalScopeError(f"limit must be at least 1, got {limit}")
    full = load_dataset(dataset, split, data_dir=data_dir)
    items = list(full.items)
    targets: dict[str, str] = {}
    if dataset == "harmful/harmbench":
        targets = harmbench_targets(data_dir)
        if standard_only:
            items = [i for i in items if i.meta.get("functional_category") == "standard"]
    if limit is not None and limit < len(items):
        import random

        keep = sorted(random.Random(seed).sample(range(len(items)), limit))
        items = [items[i] for i in keep]
    out = []
    for item in items:
        target = item.meta.get("target")
        if dataset == "harmful/harmbench":
            target = targets.get(item.id.removeprefix("harmbench-"))
        out.append(Behaviour(item.id, item.prompt, target or None, dataset))
    return out
