"""Datasets: a registry of named prompt and capability datasets, read from the original
release files in a local folder or from the Hugging Face hub, plus built-in prompts.

    from refusalscope.data import load_dataset
    harmful = load_dataset("harmful/jailbreakbench", data_dir="../shared/data", limit=20, seed=0)
    harmful.prompts[:2], harmful[0].category
"""

from .records import (
    CompletionItem,
    Dataset,
    MultipleChoiceItem,
    PromptItem,
    QAItem,
    TextItem,
    apply_template,
)
from .registry import (
    REGISTRY,
    DatasetSpec,
    dataset_names,
    get_spec,
    load_dataset,
    locate,
    resolve_data_dir,
)

__all__ = [
    "REGISTRY",
    "CompletionItem",
    "Dataset",
    "DatasetSpec",
    "MultipleChoiceItem",
    "PromptItem",
    "QAItem",
    "TextItem",
    "apply_template",
    "dataset_names",
    "get_spec",
    "load_dataset",
    "locate",
    "resolve_data_dir",
]
# The modules that register datasets import the registry, never the other way round: importing
# any refusalscope.data module runs this file first, so the registry is always filled.
from . import loaders  # noqa: E402, F401, I001  (registers the release-file and hub datasets)
from . import jailbreak_sets  # noqa: E402, F401  (registers WildJailbreak)
from . import judge_sets  # noqa: E402, F401  (registers StrongREJECT, OR-Bench)
