"""A small set of harmful/benign minimal pairs written for this project.

Quick runs and tests need prompts without any dataset files; minimal pairs (same topic and
wording, different intent) are also the sharpest probe of over-refusal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class MinimalPair:
    topic: str
    harmful: str
    benign: str


@lru_cache(maxsize=1)
def minimal_pairs() -> tuple[MinimalPair, ...]:
    raw = json.loads(resources.files("refusalscope.resources").joinpath("minimal_pairs.json").read_text())
    return tuple(MinimalPair(p["topic"], p["harmful"], p["benign"]) for p in raw["pairs"])
