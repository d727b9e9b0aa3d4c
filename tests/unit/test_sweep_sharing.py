"""A sweep shares the layers below the first steered layer between configurations: the
stored results are bit-identical to running every layer, and the sharing really happens."""

import pytest
import torch

from refusalscope.evaluation.grid import GateSpec, Grid, Method
from refusalscope.evaluation.store import ResultsStore
from refusalscope.evaluation.sweep import run_sweep, shared_layers
from refusalscope.steering import DirectionGate
from refusalscope.testing import minimal_pair_refusal_tasks

TINY_CHAT = dict(family="qwen2", seed=2, n_layers=6)
pytestmark = pytest.mark.usefixtures("one_thread")


def grid_and_tasks(chat):
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(chat.d_model, generator=g) * 3
    gate = GateSpec(DirectionGate(torch.randn(chat.d_model, generator=g), 3), threshold=0.0)
    grid = Grid([Method.actadd(vec, 3, [1.0, 4.0], conditional=(False, True))], gate=gate)
    tasks = minimal_pair_refusal_tasks(chat)
    return grid, tasks


def stored(path):
    with ResultsStore(path) as db:
        return sorted(
            (r["config_id"], r["task"], r["item_id"], r["metric"], r["value"], r["output"]) for r in db.rows()
        )


def gate_counts(path):
    with ResultsStore(path) as db:
        rows = db.conn.execute("SELECT config_id, task, SUM(fired), SUM(seen) FROM gates GROUP BY config_id, task")
        return sorted(tuple(r) for r in rows)


def test_shared_layers_are_bit_identical_and_used(chat, tmp_path, monkeypatch):
    grid, tasks = grid_and_tasks(chat)
    assert shared_layers(chat, grid.configurations(chat)) == 3  # ActAdd after block 3, the gate reads block 3

    memos = []
    make = type(chat).share_lower_layers

    def spy(self, upto, max_bytes=2**30):
        memo = make(self, upto, max_bytes)
        memos.append(memo)
        return memo

    monkeypatch.setattr(type(chat), "share_lower_layers", spy)
    run_sweep(chat, grid, tasks, tmp_path / "plain.db", batch_size=3, share=False, progress=False)
    assert not memos
    run_sweep(chat, grid, tasks, tmp_path / "shared.db", batch_size=3, progress=False)
    assert [m.upto for m in memos] == [3]
    stats = memos[0].stats
    assert stats.hits > stats.misses > 0
    plain, shared = stored(tmp_path / "plain.db"), stored(tmp_path / "shared.db")
    assert plain == shared
    assert gate_counts(tmp_path / "plain.db") == gate_counts(tmp_path / "shared.db")
    assert any(seen for _, _, _, seen in gate_counts(tmp_path / "plain.db"))
    assert len({row[0] for row in plain}) == 5  # unsteered, 2 strengths x gated or not
    logodds = {row[4] for row in plain if row[3] == "refusal_logodds"}
    assert len(logodds) > 7  # the configurations really differ


def test_nothing_to_share_with_one_configuration_or_an_embedding_edit(chat):
    vec = torch.ones(chat.d_model)
    assert shared_layers(chat, Grid([]).configurations(chat)) is None
    from refusalscope.steering import DirectionAblation

    grid = Grid([Method("ablate", lambda s: DirectionAblation(vec), [1.0], method="ablation")])
    assert shared_layers(chat, grid.configurations(chat)) is None


def test_run_many_equals_run_per_configuration(chat):
    grid, tasks = grid_and_tasks(chat)
    configs = [cfg.interventions for cfg in grid.configurations(chat)]
    for spec in tasks:
        items = list(spec.task.items(limit=spec.limit))
        together = spec.task.run_many(chat, items, configs, batch_size=3)
        for cfg, got in zip(configs, together):
            alone = spec.task.run(chat, items, interventions=cfg, batch_size=3)
            assert [(r.item_id, r.metrics, r.output) for r in got] == [(r.item_id, r.metrics, r.output) for r in alone]
    checked = [r for r in together[0] if r.output is not None]
    assert checked  # the replies really were generated
