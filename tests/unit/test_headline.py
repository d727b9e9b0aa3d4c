"""The report's headline table and Pareto points: best Δs per method line, paired capability
changes, the issue's target, and example-only tasks kept out of every figure."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from test_store_sweep import FakeTask  # tests/unit is on sys.path (pytest rootdir-less import)

from refusalscope.evaluation.grid import GateSpec, Grid, Method, TaskSpec
from refusalscope.evaluation.headline import (
    build_headline,
    cost_of,
    headline_pair,
    is_example_task,
    measured,
    paired_change,
    pareto_points,
)
from refusalscope.evaluation.store import ResultsStore
from refusalscope.evaluation.summary import summarise
from refusalscope.evaluation.sweep import run_sweep
from refusalscope.report import build_report
from refusalscope.stats import Estimate
from refusalscope.steering import ActAdd, DirectionGate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def sweep(chat, tmp_path_factory):
    d = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    gate = GateSpec(DirectionGate(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)), 1), 0.0)
    grid = Grid(
        [
            Method(
                "features", lambda s: ActAdd(-d, 2, s), [0.5, 1.0, 2.0], method="features:x", conditional=(False, True)
            ),
            Method.actadd(d, 2, [1.0]),
        ],
        gate=gate,
    )
    tasks = [
        TaskSpec(FakeTask("jbb-harmful", "harmful/jailbreakbench", "refused", "refuse", n=24, base=0.4, slope=0.2)),
        TaskSpec(FakeTask("xstest-safe", "xstest/safe", "refused", "answer", n=24, base=0.1, slope=0.05)),
        TaskSpec(FakeTask("xstest-unsafe", "xstest/unsafe", "refused", "refuse", n=8, base=0.5, slope=0.1)),
        TaskSpec(FakeTask("examples-harmful", "builtin/minimal-pairs", "refused", "refuse", n=2, split="harmful")),
        TaskSpec(FakeTask("examples-benign", "builtin/minimal-pairs", "refused", "answer", n=2, split="benign")),
        TaskSpec(FakeTask("arc-easy", "arc-easy", "correct", n=30, base=0.6, slope=-0.1)),
    ]
    folder = tmp_path_factory.mktemp("headline")
    run_sweep(
        chat,
        grid,
        tasks,
        folder / "results.db",
        batch_size=12,
        progress=False,
        pairs=[{"name": "headline: jbb / xstest-safe", "harmful": "jbb-harmful", "benign": "xstest-safe"}],
    )
    return folder / "results.db"


def test_example_tasks_are_not_measurements(sweep):
    summary = summarise(sweep)
    assert any(is_example_task(t) for t in summary.tasks)
    assert any("examples-" in d.pair.harmful_task for d in summary.deltas)  # the store pairs them ...
    kept = measured(summary)
    assert not any(is_example_task(t) for t in kept.tasks) and not any(is_example_task(c.task) for c in kept.cells)
    assert not any("examples-" in d.pair.harmful_task for d in kept.deltas)  # ... the report does not
    assert len(kept.cells) == len(summary.cells) - 2 * len(summary.configs)


def test_headline_rows_are_each_lines_best_delta_point(sweep):
    with ResultsStore(sweep, create=False) as db:
        summary = summarise(db)
        headline = build_headline(db, summary)
    assert headline.pair == headline_pair(summary) == "headline: jbb / xstest-safe"
    assert headline.capability_tasks == ["arc-easy"]
    methods = [r.method for r in headline.rows]
    assert methods == ["unsteered", "features", "features (gated)", "actadd"]
    for row in headline.rows[1:]:
        line = [
            d
            for d in summary.deltas
            if d.pair.name == headline.pair
            and d.config.name == row.config.name
            and d.config.conditional == row.config.conditional
        ]
        assert row.delta.estimate.value == max(d.estimate.value for d in line)
        assert row.harmful.task.name == "jbb-harmful" and row.benign.task.name == "xstest-safe"
        assert row.target is not None
    assert headline.rows[0].target is None and headline.rows[0].capability[0].change.value == 0.0


def test_paired_change_and_costs(sweep):
    with ResultsStore(sweep, create=False) as db:
        summary = summarise(db)
        base = next(c for c in summary.configs if c.unsteered)
        task = next(t for t in summary.tasks if t.name == "arc-easy")
        for cfg in summary.configs:
            change, relative = paired_change(db, base, cfg, task)
            a = db.values(base.config_id, "arc-easy", "correct")
            b = db.values(cfg.config_id, "arc-easy", "correct")
            assert not relative and change.n == 30
            assert change.value == pytest.approx(sum(b[i] - a[i] for i in a) / 30)
            assert change.low <= change.value <= change.high
    drop = cost_of(Estimate(-0.1, -0.2, 0.05, 10), higher_is_better=True)
    assert (drop.value, drop.low, drop.high) == (0.1, -0.05, 0.2)
    assert cost_of(Estimate(0.3, 0.1, 0.5, 8), higher_is_better=False).value == 0.3


def test_a_relative_loss_change(tmp_path, chat):
    """A loss task's change is relative to the unsteered mean: +10% when every item's loss
    rises by a tenth of the mean."""
    from refusalscope.evaluation.rows import ConfigRow, TaskRow

    with ResultsStore(tmp_path / "r.db") as db:
        values = {"u": [3.0, 4.0, 5.0], "s": [3.4, 4.4, 5.4]}
        for cid, vals in values.items():
            for i, v in enumerate(vals):
                db.conn.execute(
                    "INSERT INTO metrics (config_id, task, item_id, metric, value) VALUES (?,?,?,?,?)",
                    (cid, "wikitext", f"d{i}", "ce", v),
                )
        base = ConfigRow("u", "none", "none", "none", "none", None, False)
        steered = ConfigRow("s", "f", "f ×1", "features", "features", 1.0, False)
        task = TaskRow("wikitext", "text/wikitext2", "test", "ce", False, "capability")
        change, relative = paired_change(db, base, steered, task)
    assert relative and change.value == pytest.approx(0.1) and change.n == 3
    assert change.low == pytest.approx(0.1) and change.high == pytest.approx(0.1)


def test_pareto_points_and_the_report_sections(sweep, tmp_path):
    with ResultsStore(sweep, create=False) as db:
        summary = summarise(db)
        pair, points = pareto_points(db, summary)
    assert pair == "headline: jbb / xstest-safe" and len(points) == len(summary.configs)
    assert all(set(p.costs) == {"arc-easy"} for p in points)
    unsteered = next(p for p in points if p.config.unsteered)
    assert unsteered.costs["arc-easy"].value == 0.0

    page = build_report(sweep, tmp_path / "report.html", tmp_path / "data")
    text = page.read_text()
    head = re.search(r'<section id="headline">(.*?)</section>', text, re.S).group(1)
    assert "headline: jbb / xstest-safe" in head and "arc-easy change (paired)" in head
    assert head.count("<tr>") == 1 + 4  # header + unsteered and three method lines
    assert re.search(r'<section id="pareto">.*?<img ', text, re.S)
    assert text.index('id="headline"') < text.index('id="pareto"') < text.index('id="tradeoff"')
    for name in ("tradeoff", "selective_refusal", "summary", "headline", "pareto"):
        rows = json.loads((tmp_path / "data" / f"{name}.json").read_text())
        assert rows and not any("examples-" in json.dumps(r) for r in rows if name != "summary"), name
    numbers = re.search(r'<section id="numbers">(.*?)</section>', text, re.S).group(1)
    assert "examples-harmful" not in numbers
    examples = re.search(r'<section id="examples">(.*?)</section>', text, re.S).group(1)
    assert "examples-harmful" in examples
    headline = json.loads((tmp_path / "data" / "headline.json").read_text())
    assert [r["line"] for r in headline] == ["unsteered", "features", "features (gated)", "actadd"]
    assert all(not math.isnan(r["delta_s"]) for r in headline)
