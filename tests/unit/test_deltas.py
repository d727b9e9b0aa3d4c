"""Δs pairs: which harmful and benign tasks of a store pair up, and the Δs each pair gets."""

from __future__ import annotations

import pytest

from refusalscope.evaluation.deltas import compute_deltas, find_pairs
from refusalscope.evaluation.rows import ConfigRow, TaskRow
from refusalscope.evaluation.store import Config, ResultsStore
from refusalscope.evaluation.tasks import ItemResult


def task(name, dataset, role, split=None, judge="substring"):
    return TaskRow(name, dataset, split, "refused", role == "harmful", role, judge)


def test_one_task_per_side_pairs_under_the_dataset_pairs_name():
    tasks = [
        task("h", "harmful/jailbreakbench", "harmful"),
        task("b", "harmless/jailbreakbench", "benign", judge="other"),
        task("cap", "mmlu", "capability"),
        task("mp-h", "builtin/minimal-pairs", "harmful", "harmful"),
        task("mp-x", "builtin/minimal-pairs", "benign", "harmful"),
    ]  # wrong split: no minimal pair
    pairs = find_pairs(tasks)
    assert [(p.name, p.harmful_task, p.benign_task) for p in pairs] == [("jailbreakbench", "h", "b")]


def test_several_tasks_per_side_pair_only_by_judge_and_are_named_after_their_tasks():
    tasks = [
        task("u1", "xstest/unsafe", "harmful"),
        task("u2", "xstest/unsafe", "harmful", judge="learned"),
        task("s1", "xstest/safe", "benign"),
        task("s2", "xstest/safe", "benign", judge="learned"),
    ]
    pairs = find_pairs(tasks)
    assert [(p.name, p.harmful_task, p.benign_task) for p in pairs] == [
        ("xstest (u1 − s1)", "u1", "s1"),
        ("xstest (u2 − s2)", "u2", "s2"),
    ]


def test_tasks_reading_the_same_dataset_twice_pair_by_name_stem():
    """The quick profile reads the minimal pairs as scored pairs and as example replies:
    each harmful task pairs with the benign task of its own stem, not across."""
    tasks = [
        task("pairs-harmful", "builtin/minimal-pairs", "harmful", "harmful"),
        task("pairs-benign", "builtin/minimal-pairs", "benign", "benign"),
        task("examples-harmful", "builtin/minimal-pairs", "harmful", "harmful"),
        task("examples-benign", "builtin/minimal-pairs", "benign", "benign"),
        task("odd-harmful", "builtin/minimal-pairs", "harmful", "harmful", judge="other"),
        task("lone-benign", "builtin/minimal-pairs", "benign", "benign", judge="other"),
    ]
    pairs = find_pairs(tasks)
    assert [(p.harmful_task, p.benign_task) for p in pairs] == [
        ("pairs-harmful", "pairs-benign"),
        ("examples-harmful", "examples-benign"),
        ("odd-harmful", "lone-benign"),  # no same-stem partner: paired by judge as before
    ]


def test_deltas_are_the_difference_of_refusal_rates_with_nan_items_left_out(tmp_path):
    with ResultsStore(tmp_path / "r.db") as db:
        db.add_config(Config("cfg-a", "none", "none", "none", "none", None, False, None, None, {}))
        for name, dataset, role in (
            ("h", "harmful/jailbreakbench", "harmful"),
            ("b", "harmless/jailbreakbench", "benign"),
        ):
            db.add_task(
                name,
                dataset=dataset,
                split=None,
                primary="refused",
                higher_is_better=role == "harmful",
                role=role,
                judge="substring",
                describe={},
                limit=None,
                seed=0,
            )
        db.write_batch(
            "cfg-a", "h", [ItemResult(f"h{i}", {"refused": v}) for i, v in enumerate([1, 1, 0, float("nan")])]
        )
        db.write_batch("cfg-a", "b", [ItemResult(f"b{i}", {"refused": v}) for i, v in enumerate([0, 1, 0, 0, 0])])
        configs = [ConfigRow.from_store(c) for c in db.configs()]
        tasks = [TaskRow.from_store(t) for t in db.tasks()]
        (delta,) = compute_deltas(db, configs, tasks)
    assert delta.pair.name == "jailbreakbench" and delta.config.config_id == "cfg-a"
    assert (delta.n_harmful, delta.n_benign) == (3, 5)
    assert delta.refusal_harmful == pytest.approx(2 / 3) and delta.refusal_benign == pytest.approx(1 / 5)
    assert delta.estimate.value == pytest.approx(2 / 3 - 1 / 5)
    assert delta.estimate.low <= delta.estimate.value <= delta.estimate.high
    row = delta.row()
    assert list(row)[:7] == ["config_id", "name", "label", "method", "family", "strength", "conditional"]
    assert row["value"] == delta.estimate.value and row["pair"] == "jailbreakbench"
