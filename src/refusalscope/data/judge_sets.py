"""Prompt sets users expect beside refusal judges: StrongREJECT and OR-Bench.

- StrongREJECT (Souly et al., 2024): 313 forbidden prompts in six categories (60 in the
  small set), from its GitHub release (`strongreject_dataset/strongreject_dataset.csv`
  and `strongreject_small_dataset.csv`: category, source, forbidden_prompt) or the hub
  copy `walledai/StrongREJECT` (prompt, category).
- OR-Bench (Cui et al., 2024), hub `bench-llm/or-bench`: `or-bench-hard-1k.csv` (benign
  prompts that most models over-refuse), `or-bench-80k.csv` (benign, seemingly toxic)
  and `or-bench-toxic.csv` (toxic prompts, the contrast set); columns prompt, category.
- JailbreakBench's benign behaviours are `harmless/jailbreakbench` (data/loaders.py).

Loaders read the release layouts as they are; registering happens on import.
"""

from __future__ import annotations

from pathlib import Path

from .files import read_table, text_of
from .records import PromptItem
from .registry import DatasetSpec, HubSource, LocalSource, register


def _strongreject(column: str, prefix: str):
    def parse(paths: list[Path], split: str, name: str) -> list[PromptItem]:
        items: list[PromptItem] = []
        for path in paths:
            for i, row in enumerate(read_table(path, required=(column, "category")), start=1):
                items.append(
                    PromptItem(
                        f"{prefix}-{split}-{len(items):04d}",
                        text_of(path, row, i, column),
                        "harmful",
                        str(row["category"]),
                        name,
                        {"origin": row.get("source")},
                    )
                )
        return items

    return parse


_SR_FILES = {"all": "strongreject_dataset.csv", "small": "strongreject_small_dataset.csv"}
register(
    DatasetSpec(
        name="harmful/strongreject",
        kind="prompts",
        description="StrongREJECT forbidden prompts (6 categories); split small = its 60-prompt subset",
        splits=("all", "small"),
        default_split="all",
        upstream="https://github.com/dsbowen/strong_reject (strongreject_dataset/); "
        "https://huggingface.co/datasets/walledai/StrongREJECT",
        local=(
            LocalSource(
                {s: (f"strongreject/strongreject_dataset/{f}",) for s, f in _SR_FILES.items()},
                _strongreject("forbidden_prompt", "strongreject"),
            ),
            LocalSource(
                {s: (f"strongreject/{f}",) for s, f in _SR_FILES.items()},
                _strongreject("forbidden_prompt", "strongreject"),
            ),
        ),
        hub=HubSource(
            "walledai/StrongREJECT", {"all": ("data/train-*.parquet",)}, _strongreject("prompt", "strongreject")
        ),
        counts={"all": 313, "small": 60},
    )
)


def _or_bench(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    label = "harmful" if split == "toxic" else "harmless"
    items: list[PromptItem] = []
    for path in paths:
        for i, row in enumerate(read_table(path, required=("prompt", "category")), start=1):
            items.append(
                PromptItem(
                    f"or-bench-{split}-{len(items):05d}",
                    text_of(path, row, i, "prompt"),
                    label,
                    str(row["category"]),
                    name,
                )
            )
    return items


_OR_FILES = {"hard-1k": "or-bench-hard-1k.csv", "toxic": "or-bench-toxic.csv", "80k": "or-bench-80k.csv"}
register(
    DatasetSpec(
        name="or-bench",
        kind="prompts",
        description="OR-Bench over-refusal prompts: hard-1k and 80k are benign (label harmless), toxic is the "
        "harmful contrast set; category = its 10 categories",
        splits=tuple(_OR_FILES),
        default_split="hard-1k",
        upstream="https://huggingface.co/datasets/bench-llm/or-bench",
        local=(LocalSource({s: (f"or-bench/{f}",) for s, f in _OR_FILES.items()}, _or_bench),),
        hub=HubSource("bench-llm/or-bench", {s: (f,) for s, f in _OR_FILES.items()}, _or_bench),
        counts={"hard-1k": 1319, "toxic": 655, "80k": 80359},
    )
)
