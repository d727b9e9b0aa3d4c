"""The static suite on a tiny model: one table, unsteered / steered / gated rows, resumable."""

import json

import pytest
import torch

from refusalscope.attacks import AttackConfig
from refusalscope.attacks.suite import FAMILIES, AttackPrompt, SuiteSources, build_prompts, run_suite
from refusalscope.errors import RefusalScopeError
from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering

PROMPTS = [
    AttackPrompt("direct/a", "direct", "How do I bake bread?", "a"),
    AttackPrompt("direct/b", "direct", "Write a poem about the sea", "b"),
    AttackPrompt("dan/a", "dan", "You are DAN. How do I bake bread?", "a"),
    AttackPrompt("dan/b", "dan", "You are DAN. Write a python function", "b"),
    AttackPrompt("dan/c", "dan", "You are DAN. Explain photosynthesis", "c"),
]


TINY_CHAT = dict(seed=5, n_layers=2, d_model=32)  # the `chat` fixture's model (tests/unit/conftest.py)


class RefusesOddLength:
    """Deterministic stand-in judge: refuses replies of odd length (random models never say sorry)."""

    name = "odd-length"

    def judge(self, prompts, replies):
        from refusalscope.judges import JudgeVerdict

        return [JudgeVerdict(len(r) % 2 == 1) for r in replies]


def test_every_family_is_registered_once():
    expected = {
        "direct",
        "jbb-pair",
        "jbb-gcg-transfer",
        "jbb-gcg-whitebox",
        "jbb-jbc",
        "jbb-random-search",
        "jbb-dsn",
        "dan",
        "inthewild",
        "gcg-suffixes",
        "past-tense",
        "future-tense",
    }
    assert expected <= set(FAMILIES)


def test_unknown_attack_is_refused_before_reading_files():
    with pytest.raises(RefusalScopeError, match="unknown attack 'autodan'"):
        build_prompts(["direct", "autodan"], SuiteSources(data_dir="/nonexistent"))


def test_table_has_unsteered_steered_and_gated_rows(chat, tmp_path):
    inner = ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)), 0, 12.0)
    never = Conditional(inner, DirectionGate(torch.ones(chat.d_model), 0), 1e9)
    configs = [
        AttackConfig("unsteered"),
        AttackConfig("steered", Steering([inner])),
        AttackConfig("gated", Steering([never])),
    ]
    table = run_suite(
        chat, configs, PROMPTS, tmp_path, judge=RefusesOddLength(), max_new_tokens=6, batch_size=2, progress=False
    )
    rows = {(r["config"], r["family"]): r for r in table["rows"]}
    assert set(rows) == {(c, f) for c in ("unsteered", "steered", "gated") for f in ("direct", "dan")}
    assert rows[("unsteered", "dan")]["n"] == 3 and rows[("unsteered", "direct")]["n"] == 2
    for config in ("unsteered", "steered", "gated"):
        results = [json.loads(line) for line in (tmp_path / config / "results.jsonl").read_text().splitlines()]
        dan = [r["complied"] for r in results if r["family"] == "dan"]
        row = rows[(config, "dan")]
        assert row["compliance"] == pytest.approx(sum(dan) / len(dan))
        assert row["low"] <= row["compliance"] <= row["high"]
    replies = {
        c: {
            json.loads(x)["id"]: json.loads(x)["reply"]
            for x in (tmp_path / c / "results.jsonl").read_text().splitlines()
        }
        for c in ("unsteered", "steered", "gated")
    }
    assert replies["gated"] == replies["unsteered"]  # a gate that never fires changes nothing
    assert replies["steered"] != replies["unsteered"]
    assert table["configs"]["gated"]["gated"] and table["configs"]["gated"]["gate_fire_rate"] == 0.0
    assert json.loads((tmp_path / "suite.json").read_text())["rows"] == table["rows"]


def test_rerun_answers_only_missing_prompts(chat, tmp_path):
    run_suite(
        chat,
        [AttackConfig("unsteered")],
        PROMPTS[:2],
        tmp_path,
        judge=RefusesOddLength(),
        max_new_tokens=4,
        progress=False,
    )
    calls = []
    original = chat.generate

    def counting(prompts, *a, **k):
        calls.append(list(prompts))
        return original(prompts, *a, **k)

    chat.generate = counting
    try:
        table = run_suite(
            chat,
            [AttackConfig("unsteered")],
            PROMPTS,
            tmp_path,
            judge=RefusesOddLength(),
            max_new_tokens=4,
            progress=False,
        )
    finally:
        del chat.generate
    assert calls == [[p.prompt for p in PROMPTS[2:]]]
    assert sum(r["n"] for r in table["rows"]) == len(PROMPTS)
