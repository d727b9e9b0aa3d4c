"""Sweeps and the results store: resumable, idempotent, nothing computed twice, CIs and Δs."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from dataclasses import dataclass
from importlib import metadata

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.evaluation.grid import GateSpec, Grid, Method, TaskSpec, scale_interventions
from refusalscope.evaluation.grid_file import load_grid_file
from refusalscope.evaluation.store import ResultsStore
from refusalscope.evaluation.summary import summarise
from refusalscope.evaluation.sweep import run_sweep
from refusalscope.evaluation.tasks import ItemResult, RefusalTask
from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering, as_steering


@dataclass
class FakeItem:
    id: str
    prompt: str


def _strength(interventions) -> tuple[float, bool]:
    """(sum of ActAdd coefficients, gated?) of a steering, for the fake tasks' made-up effects."""
    if interventions is None:
        return 0.0, False
    total, gated = 0.0, False
    for item in as_steering(interventions).interventions:
        if isinstance(item, Conditional):
            gated = True
            total += sum(i.coefficient for i in item.interventions)
        else:
            total += getattr(item, "coefficient", 0.0)
    return total, gated


class FakeTask:
    """A deterministic task: each item's metric is a seeded coin whose bias depends on the
    steering strength; it runs a real forward (so conditional gates count prompts), counts
    the items it is asked to compute and can be made to die after N items."""

    def __init__(
        self,
        name,
        dataset="fake/capability",
        primary="correct",
        expect=None,
        n=10,
        fail_after=None,
        base=0.6,
        slope=-0.1,
        split=None,
    ):
        self.name, self.dataset, self.split, self.primary = name, dataset, split, primary
        self.expect = expect
        self.higher_is_better = expect != "answer"
        self.n, self.fail_after, self.base, self.slope = n, fail_after, base, slope
        self.calls: list[tuple[str, list[str]]] = []  # (steering id or 'none', item ids) per run() call
        self.computed = 0

    def items(self, data_dir=None, limit=None, seed=0):
        items = [
            FakeItem(f"{self.name}-{i:02d}", f"prompt {i}: <script>alert('{self.name}')</script>")
            for i in range(self.n)
        ]
        random.Random(seed).shuffle(items)
        return items[:limit] if limit else items

    def run(self, chat, items, interventions=None, batch_size=16):
        if self.fail_after is not None and self.computed + len(items) > self.fail_after:
            raise RuntimeError("simulated kill")
        key = "none" if interventions is None else as_steering(interventions).id
        self.calls.append((key, [it.id for it in items]))
        self.computed += len(items)
        chat.next_token_logits([it.prompt for it in items], batch_size=batch_size, interventions=interventions)
        strength, gated = _strength(interventions)
        p = min(max(self.base + self.slope * strength * (0.5 if gated else 1.0), 0.0), 1.0)
        out = []
        for it in items:
            u = int(hashlib.sha256(f"{key}|{it.id}".encode()).hexdigest()[:8], 16) / 16**8
            out.append(
                ItemResult(it.id, {self.primary: float(u < p)}, f"reply to {it.id} <script>x()</script>", it.prompt)
            )
        return out

    def describe(self):
        return {
            "kind": "fake",
            "dataset": self.dataset,
            "expect": self.expect,
            "judge": "fake-judge" if self.expect else None,
        }


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def direction(chat):
    return torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))


def make_grid(direction, gate=None, conditional=(False,)):
    return Grid([Method.actadd(direction, 2, [1.0, 3.0], conditional=conditional)], gate=gate)


def all_rows(path):
    with ResultsStore(path) as db:
        return sorted(
            (r["config_id"], r["task"], r["item_id"], r["metric"], r["value"], r["output"], r["prompt"])
            for r in db.rows()
        )


def test_killed_sweep_resumes_computing_only_missing_items_and_ends_identical(chat, direction, tmp_path):
    grid = make_grid(direction)
    clean = FakeTask("cap", n=7)
    run_sweep(chat, grid, [clean], tmp_path / "clean.db", batch_size=2, progress=False)

    # chunks run item chunk by item chunk, every configuration in turn (2 items x 3 configurations,
    # then the next 2 items): with fail_after=11 it dies in the second chunk's third configuration
    task = FakeTask("cap", n=7, fail_after=11)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_sweep(chat, grid, [task], tmp_path / "resumed.db", batch_size=2, progress=False)
    first = {i for _, ids in task.calls for i in ids}
    with ResultsStore(tmp_path / "resumed.db") as db:
        assert db.runs()[-1]["status"] == "failed"
        stored = db.count_items()
    assert stored == task.computed == 10  # every finished batch was kept, the one in flight was not

    task.fail_after = None
    calls_before = len(task.calls)
    result = run_sweep(chat, grid, [task], tmp_path / "resumed.db", batch_size=2, progress=False)
    assert result.skipped == 10 and result.computed == 3 * 7 - 10
    configs = grid.configurations(chat)
    rerun = task.calls[calls_before:]
    assert sum(len(ids) for _, ids in rerun) == 11
    # nothing computed twice: every (configuration, item) was computed exactly once over both runs
    computed = [(key, item_id) for key, ids in task.calls for item_id in ids]
    assert len(computed) == len(set(computed)) == len(configs) * 7
    assert first

    assert all_rows(tmp_path / "resumed.db") == all_rows(tmp_path / "clean.db")
    with ResultsStore(tmp_path / "resumed.db") as db:
        assert [r["status"] for r in db.runs()] == ["failed", "complete"]

    n_calls = len(task.calls)
    again = run_sweep(chat, grid, [task], tmp_path / "resumed.db", batch_size=2, progress=False)
    assert len(task.calls) == n_calls and again.computed == 0 and again.skipped == 21


def test_writes_are_idempotent_and_keep_the_first_value(tmp_path):
    with ResultsStore(tmp_path / "r.db") as db:
        rows = [
            ItemResult("a", {"refused": 1.0}, "out a", "p a"),
            ItemResult("b", {"refused": 0.0, "extra": float("nan")}),
        ]
        assert db.write_batch("cfg-x", "t", rows) == 2
        assert db.write_batch("cfg-x", "t", rows) == 0
        assert db.write_batch("cfg-x", "t", [ItemResult("a", {"refused": 0.0}, "changed")]) == 0
        assert db.count_items() == 2
        assert db.values("cfg-x", "t", "refused") == {"a": 1.0, "b": 0.0}
        assert db.outputs("cfg-x", "t")["a"] == {"prompt": "p a", "output": "out a"}
        assert db.done_items("cfg-x", "t") == {"a", "b"}
        assert db.estimate("cfg-x", "t", "extra").n == 0  # NaN is kept as 'no score', not averaged
    raw = sqlite3.connect(tmp_path / "r.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO items (config_id, task, item_id) VALUES ('cfg-x', 't', 'a')")


def test_configuration_ids_are_content_hashes(chat, direction):
    gate = GateSpec(DirectionGate(direction, 1), 0.0)
    a = make_grid(direction, gate, (False, True)).configurations(chat)
    b = make_grid(direction.clone(), gate, (False, True)).configurations(chat)
    assert [c.config_id for c in a] == [c.config_id for c in b]
    assert len({c.config_id for c in a}) == len(a) == 5  # none + 2 strengths × gated/ungated
    labels = [c.label for c in a]
    assert labels == ["none", "actadd ×1", "actadd ×1 (conditional)", "actadd ×3", "actadd ×3 (conditional)"]
    assert a[0].interventions is None and a[0].family == "none"
    assert a[2].conditionals and a[2].conditional and not a[1].conditionals
    other = make_grid(direction * 2).configurations(chat)
    assert other[1].config_id != a[1].config_id  # another direction, another configuration
    assert other[0].config_id == a[0].config_id  # the unsteered model is shared


def test_conditional_needs_a_gate(chat, direction):
    with pytest.raises(RefusalScopeError, match="no gate"):
        make_grid(direction, None, (True,)).configurations(chat)


def test_task_settings_cannot_change_under_the_same_name(chat, direction, tmp_path):
    run_sweep(chat, Grid([]), [FakeTask("cap", n=3)], tmp_path / "r.db", progress=False)
    changed = FakeTask("cap", n=3, expect="refuse")
    with pytest.raises(RefusalScopeError, match="different settings"):
        run_sweep(chat, Grid([]), [changed], tmp_path / "r.db", progress=False)


def test_summaries_carry_cis_and_n_and_selective_refusal(chat, direction, tmp_path):
    harm = FakeTask("jbb-harm", "harmful/jailbreakbench", "refused", "refuse", n=16, base=0.4, slope=0.2)
    ben = FakeTask("jbb-ben", "harmless/jailbreakbench", "refused", "answer", n=16, base=0.1, slope=0.15)
    cap = FakeTask("cap", n=12)
    run_sweep(
        chat,
        make_grid(direction),
        [TaskSpec(harm, limit=12), ben, cap],
        tmp_path / "r.db",
        batch_size=4,
        progress=False,
    )
    summary = summarise(tmp_path / "r.db")
    assert len(summary.cells) == 3 * 3
    for c in summary.cells:
        assert c.estimate.low <= c.estimate.value <= c.estimate.high
        assert c.estimate.n == (12 if c.task.name in ("jbb-harm", "cap") else 16)
    roles = {c.task.name: c.task.role for c in summary.cells}
    assert roles == {"jbb-harm": "harmful", "jbb-ben": "benign", "cap": "capability"}
    assert len(summary.deltas) == 3 and {d.pair.name for d in summary.deltas} == {"jailbreakbench"}
    with ResultsStore(tmp_path / "r.db") as db:
        for d in summary.deltas:
            h = list(db.values(d.config.config_id, "jbb-harm", "refused").values())
            b = list(db.values(d.config.config_id, "jbb-ben", "refused").values())
            assert d.estimate.value == pytest.approx(sum(h) / len(h) - sum(b) / len(b))
            assert d.estimate.low <= d.estimate.value <= d.estimate.high and d.n_harmful == 12 and d.n_benign == 16
        assert db.pairs() == [{"name": "jailbreakbench", "harmful_task": "jbb-harm", "benign_task": "jbb-ben"}]
    assert "jailbreakbench" in summary.table()


def test_conditional_fire_rate_is_recorded_per_item_and_per_batch(chat, direction, tmp_path):
    gate_dir = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1))
    task = RefusalTask("mp-benign", "builtin/minimal-pairs", "benign", expect="answer", max_new_tokens=2)
    prompts = [it.prompt for it in task.items(limit=8, seed=0)]
    probe = Conditional(ActAdd(direction, 2, 1.0), DirectionGate(gate_dir, 1), 0.0)
    threshold = float(probe.decisions(chat, prompts).scores.median())
    gate = GateSpec(DirectionGate(gate_dir, 1), threshold)
    grid = Grid([Method.actadd(direction, 2, [2.0], conditional=(True,))], gate=gate)
    run_sweep(chat, grid, [TaskSpec(task, limit=8)], tmp_path / "r.db", batch_size=3, progress=False)

    cond = grid.configurations(chat)[1]
    expected = Conditional(ActAdd(direction, 2, 2.0), DirectionGate(gate_dir, 1), threshold).decisions(chat, prompts)
    with ResultsStore(tmp_path / "r.db") as db:
        fired = db.values(cond.config_id, "mp-benign", "gate_fired")
        items = task.items(limit=8, seed=0)
        assert [fired[it.id] for it in items] == [float(f) for f in expected.fired.tolist()]
        counts = db.conn.execute(
            "SELECT SUM(fired), SUM(seen) FROM gates WHERE config_id=?", (cond.config_id,)
        ).fetchone()
        assert tuple(counts) == (int(expected.fired.sum()), 8)
        assert db.gate_rate(cond.config_id, "mp-benign").value == pytest.approx(expected.fire_rate)
        assert db.gate_rate(grid.configurations(chat)[0].config_id, "mp-benign") is None
    cells = {c.config.label: c for c in summarise(tmp_path / "r.db").cells}
    assert 0 < cells["actadd ×2 (conditional)"].fire.value < 1
    assert cells["none"].fire is None


def test_provenance_is_recorded(chat, direction, tmp_path):
    task = RefusalTask("mp-harm", "builtin/minimal-pairs", "harmful", max_new_tokens=2)
    run_sweep(chat, make_grid(direction), [TaskSpec(task, limit=2, seed=3)], tmp_path / "r.db", progress=False)
    with ResultsStore(tmp_path / "r.db") as db:
        run = db.runs()[0]
        assert run["model_id"] == chat.info.id and run["model"]["name"] == "tiny-llama"
        assert run["versions"]["torch"] == metadata.version("torch")
        assert {"refusalscope", "torch", "transformers", "python"} <= set(run["versions"])
        assert run["grid"]["tasks"] == [{"name": "mp-harm", "limit": 2, "seed": 3}]
        (t,) = db.tasks()
        assert (t["dataset"], t["split"], t["judge"], t["role"], t["item_limit"], t["seed"]) == (
            "builtin/minimal-pairs",
            "harmful",
            "substring",
            "harmful",
            2,
            3,
        )
        cfgs = {c["label"]: c for c in db.configs()}
        assert cfgs["actadd ×1"]["method"] == "dense:actadd" and cfgs["actadd ×1"]["family"] == "dense"
        assert cfgs["actadd ×1"]["steering_id"].startswith("steer-")
        assert cfgs["actadd ×1"]["spec"]["interventions"][0]["coefficient"] == 1.0
        assert cfgs["actadd ×1"]["model_id"] == chat.info.id
        assert cfgs["none"]["steering_id"] is None and cfgs["none"]["spec"]["interventions"] == []


def test_scaling_a_saved_steering(chat, direction):
    gate = DirectionGate(direction, 1)
    base = Steering([ActAdd(direction, 2, 2.0), Conditional(ActAdd(direction, 3, 1.0), gate, 0.5)])
    scaled = scale_interventions(base, 3.0)
    assert scaled[0].coefficient == 6.0 and scaled[1].interventions[0].coefficient == 3.0
    assert scaled[1].threshold == 0.5 and base.interventions[0].coefficient == 2.0  # the original is untouched
    method = Method.from_steering(base, [0.5, 1.0], name="mine", method="dense:mix")
    cfgs = Grid([method], unsteered=False).configurations(chat)
    assert [c.strength for c in cfgs] == [0.5, 1.0] and cfgs[0].steering.interventions[0].coefficient == 1.0


def test_feature_steering_method_records_the_sae(chat, tmp_path):
    from refusalscope.sae import SAE, SAEConfig

    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=32, architecture="standard", layer=2), seed=0)
    method = Method.features(sae, [3, 7], [2.0, 4.0], [0.5, 2.0], method="features:cossim+ig")
    cfgs = Grid([method], unsteered=False).configurations(chat)
    assert [c.steering.interventions[0].values for c in cfgs] == [[1.0, 2.0], [4.0, 8.0]]  # multiples of the peaks
    run_sweep(chat, Grid([method], unsteered=False), [FakeTask("cap", n=2)], tmp_path / "r.db", progress=False)
    with ResultsStore(tmp_path / "r.db") as db:
        (saes,) = {json.dumps(c["saes"]) for c in db.configs()}
        assert json.loads(saes)[0]["sha256"] == sae.content_hash() and json.loads(saes)[0]["layer"] == 2
        assert {c["family"] for c in db.configs()} == {"features"}


def test_grid_file_and_sweep_command(chat, direction, tmp_path):
    from typer.testing import CliRunner

    from refusalscope.cli import app
    from refusalscope.testing import save_tiny_model

    Steering([ActAdd(direction, 2, 1.0)], name="push").save(tmp_path / "actadd.json")
    Steering([Conditional(ActAdd(direction, 2, 1.0), DirectionGate(direction, 1), 0.0)]).save(tmp_path / "gate.json")
    (tmp_path / "grid.yaml").write_text(
        "batch_size: 4\nmax_new_tokens: 2\ngate: gate.json\n"
        "methods:\n  - {name: actadd, method: 'dense:actadd', spec: actadd.json, strengths: [1, 2], conditional: both}\n"
        "tasks:\n  - {name: mp-harm, dataset: builtin/minimal-pairs, split: harmful, limit: 3}\n"
        "  - {name: mp-ben, dataset: builtin/minimal-pairs, split: benign, limit: 3}\n"
    )
    plan = load_grid_file(tmp_path / "grid.yaml")
    assert [t.task.expect for t in plan.tasks] == ["refuse", "answer"]
    assert plan.grid.methods[0].conditional == (False, True) and plan.grid.gate.threshold == 0.0

    folder = save_tiny_model(chat, tmp_path / "model")
    runner = CliRunner()
    args = [
        "sweep",
        "--spec",
        str(tmp_path / "grid.yaml"),
        "-o",
        str(tmp_path / "r.db"),
        "--model",
        str(folder),
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "30 items computed, 0 reused" in result.output and "minimal-pairs" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 items computed, 30 reused" in again.output

    (tmp_path / "bad.yaml").write_text("methods: []\ntasks: [{dataset: harmful/no-such, limit: 2}]\n")
    bad = runner.invoke(app, ["sweep", "--spec", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "x.db")])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output


def test_grid_file_names_capability_benchmarks_and_checks_fields(tmp_path):
    from refusalscope.evaluation.grid import task_role

    (tmp_path / "grid.json").write_text(
        json.dumps(
            {
                "methods": [],
                "tasks": [
                    {"capability": "wikitext", "limit": 2, "options": {"window": 32}},
                    {"name": "mmlu-5shot", "limit": 3},
                    {"name": "jbb", "dataset": "harmful/jailbreakbench", "judge": "substring"},
                    "harmless/jailbreakbench",
                ],
            }
        )
    )
    plan = load_grid_file(tmp_path / "grid.json")
    names = [t.name for t in plan.tasks]
    assert names == ["wikitext", "mmlu-5shot", "jbb", "harmless/jailbreakbench"]
    assert [task_role(t.task) for t in plan.tasks] == ["capability", "capability", "harmful", "benign"]
    assert plan.tasks[0].task.window == 32 and plan.tasks[0].limit == 2
    assert plan.grid.unsteered and [m.name for m in plan.grid.all_methods()] == ["none"]
    for bad, message in [
        ({"tasks": [{"dataset": "mmlu"}]}, "not prompts"),
        ({"tasks": [{"dataset": "harmful/advbench", "limt": 3}]}, "unknown field"),
        ({"tasks": [{"dataset": "harmful/advbench"}], "methods": [{"name": "x"}]}, "needs a steering 'spec'"),
        ({"tasks": []}, "no tasks"),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(RefusalScopeError, match=message):
            load_grid_file(tmp_path / "bad.json")
