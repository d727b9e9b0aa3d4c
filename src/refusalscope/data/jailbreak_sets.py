"""WildJailbreak (Jiang et al. 2024): adversarial requests paired with the plain request.

Its training file pairs each adversarial prompt with the vanilla request it hides
(`vanilla` / `adversarial` columns), which is exactly what a study of how jailbreaks
suppress refusal needs: the same request, asked plainly and dressed up. The release is a
gated Hugging Face dataset, `allenai/wildjailbreak`, with two tab-separated files:

- `train/train.tsv`: vanilla, adversarial, [tactics,] completion, data_type
  (`vanilla_harmful`, `vanilla_benign`, `adversarial_harmful`, `adversarial_benign`);
  vanilla rows leave `adversarial` empty.
- `eval/eval.tsv`: adversarial, label, data_type (`adversarial_harmful` /
  `adversarial_benign`); no vanilla request.

Splits here: `train` (adversarial harmful, with `meta["vanilla"]`), `eval` (adversarial
harmful) and `eval-benign` (adversarial benign: harmless requests in jailbreak form).
A local copy of the repository in `<data dir>/wildjailbreak/` is read the same way.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from .files import malformed, need_file
from .records import PromptItem
from .registry import DatasetSpec, HubSource, register

WILDJAILBREAK_REPO = "allenai/wildjailbreak"
_WANT = {"train": "adversarial_harmful", "eval": "adversarial_harmful", "eval-benign": "adversarial_benign"}


def read_tsv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header (fields may hold quoted newlines)."""
    need_file(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # adversarial prompts run to tens of kB
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise malformed(
                    path, f"missing column(s) {', '.join(missing)}; found {', '.join(reader.fieldnames or [])}"
                )
            return list(reader)
    except UnicodeDecodeError as exc:
        raise malformed(path, f"not UTF-8 text ({exc})") from exc


def parse_wildjailbreak(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    """Adversarial rows of one WildJailbreak file, as prompts (label from data_type)."""
    want = _WANT[split]
    label = "harmful" if want.endswith("_harmful") else "harmless"
    items = []
    for path in paths:
        paired = split == "train"
        rows = read_tsv(path, ("adversarial", "data_type") + (("vanilla",) if paired else ()))
        for i, row in enumerate(rows, start=1):
            if (row.get("data_type") or "").strip() != want:
                continue
            text = (row.get("adversarial") or "").strip()
            if not text:
                raise malformed(path, f"row {i}: an {want} row with an empty 'adversarial' field")
            meta = {"data_type": want}
            if paired:
                vanilla = (row.get("vanilla") or "").strip()
                if not vanilla:
                    raise malformed(path, f"row {i}: an {want} row with an empty 'vanilla' field")
                meta["vanilla"] = vanilla
            if row.get("tactics"):
                meta["tactics"] = row["tactics"]
            items.append(PromptItem(f"wjb-{split}-{i - 1:06d}", text, label, None, name, meta))
    return items


register(
    DatasetSpec(
        name="jailbreak/wildjailbreak",
        kind="prompts",
        description="WildJailbreak adversarial prompts (train: adversarial harmful with the vanilla request in "
        "meta['vanilla']; eval: adversarial harmful; eval-benign: adversarial benign)",
        splits=("train", "eval", "eval-benign"),
        default_split="eval",
        upstream="https://huggingface.co/datasets/allenai/wildjailbreak (gated; accept its terms, then "
        "`huggingface-cli login`)",
        hub=HubSource(
            WILDJAILBREAK_REPO,
            {"train": ("train/train.tsv",), "eval": ("eval/eval.tsv",), "eval-benign": ("eval/eval.tsv",)},
            parse_wildjailbreak,
        ),
        counts={"train": 82728, "eval": 2000, "eval-benign": 210},
    )
)
