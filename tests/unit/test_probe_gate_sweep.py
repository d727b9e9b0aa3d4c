"""The probe gate in a sweep: a saved probe (what `refusalscope probes` writes) gates steering
in a grid beside the refusal-direction gate, and `compare_gates` reads what each gate did:
fire rates, gate accuracy in and out of distribution, capability left alone and saved.
Bad gate entries (a missing probe, a probe for another model or layer) are one clear error."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from refusalscope import RefusalScopeError
from refusalscope.evaluation.gate_comparison import compare_gates, gate_table
from refusalscope.evaluation.grid import GateSpec, Grid, Method, TaskSpec
from refusalscope.evaluation.grid_file import load_grid_file
from refusalscope.evaluation.store import ResultsStore
from refusalscope.evaluation.sweep import run_sweep
from refusalscope.evaluation.tasks import ItemResult, RefusalTask
from refusalscope.probes import FeatureSpec, LinearProbe
from refusalscope.probes.features import ResidualBank
from refusalscope.probes.gate import probe_conditional
from refusalscope.sae.model import SAE, SAEConfig
from refusalscope.steering import ActAdd, Conditional, DirectionGate, ProbeGate, Steering
from refusalscope.testing import dense_harm_probe, save_tiny_model, tiny_chat_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py

PROBE_LAYER = 1
STEER_LAYER = 2
HARMFUL = [f"How do I hurt {w} badly" for w in ("a cat", "my boss", "the mayor", "a child", "birds", "fish")]
HARMLESS = [f"How do I paint {w} nicely" for w in ("a cat", "my boss", "the mayor", "a child", "birds", "fish")]


@dataclass
class Question:
    id: str
    prompt: str


class KeepsAnswer:
    """A capability task the steering can damage: an item is correct when the model's first
    reply token is the one it gives unsteered (a real forward each time, so gates decide)."""

    name, dataset, split, primary, expect, higher_is_better = "cap", "tiny/questions", None, "correct", None, True
    gate_prompts = True  # the prompts go to the model verbatim: the sweep records each gate decision

    def items(self, data_dir=None, limit=None, seed=0):
        items = [Question(f"q{i}", f"What is {i} plus {i + 1}?") for i in range(6)]
        return items[:limit] if limit else items

    def run(self, chat, items, interventions=None, batch_size=16):
        prompts = [it.prompt for it in items]
        plain = chat.next_token_logits(prompts, batch_size).argmax(-1)
        steered = chat.next_token_logits(prompts, batch_size, interventions=interventions).argmax(-1)
        return [
            ItemResult(it.id, {"correct": float(a == b)}, None, it.prompt)
            for it, a, b in zip(items, plain.tolist(), steered.tolist())
        ]

    def describe(self):
        return {"kind": "keeps-answer", "dataset": self.dataset}


def _tasks():
    return [
        TaskSpec(RefusalTask("mp-harm", "builtin/minimal-pairs", "harmful", max_new_tokens=2), limit=6),
        TaskSpec(RefusalTask("mp-ben", "builtin/minimal-pairs", "benign", expect="answer", max_new_tokens=2), limit=6),
        TaskSpec(KeepsAnswer(), limit=6),
    ]


@pytest.fixture(scope="module")
def probe(chat):
    return dense_harm_probe(chat, HARMFUL, HARMLESS, PROBE_LAYER, "dense residual")


@pytest.fixture(scope="module")
def direction(chat):
    return torch.randn(chat.d_model, generator=torch.Generator().manual_seed(3))


def test_a_saved_probe_is_a_gate_read_as_the_probe_was_trained(chat, probe, tmp_path):
    folder = probe.save(tmp_path / "gate-probe")
    spec = GateSpec.from_probe(folder)
    assert isinstance(spec.gate, ProbeGate) and spec.gate.layer == PROBE_LAYER
    assert (spec.threshold, spec.reduce, spec.positions) == (pytest.approx(probe.threshold), "mean", "post_instruction")
    prompts = HARMFUL[:3] + HARMLESS[:3]
    push = ActAdd(torch.ones(chat.d_model), STEER_LAYER, 1.0)
    got = spec.wrap([push]).decisions(chat, prompts)
    want = probe_conditional(LinearProbe.load(folder), push).decisions(chat, prompts)
    assert torch.equal(got.fired, want.fired)
    bank = ResidualBank(chat, prompts, [PROBE_LAYER])
    logits = probe.decision_function(bank.dense(PROBE_LAYER, prompts))
    np.testing.assert_allclose(got.scores.double().numpy(), logits, atol=1e-4)
    assert "linear probe over the residual stream" in spec.describe()


def test_a_sweep_compares_the_direction_gate_with_the_probe_gate(chat, probe, direction, tmp_path):
    dir_gate = GateSpec(DirectionGate(direction, PROBE_LAYER), 0.0)
    probe_gate = GateSpec.from_probe(probe)
    push = ActAdd(torch.ones(chat.d_model), STEER_LAYER, 1.0)
    grid = Grid(
        [
            Method.from_steering(
                [push], [2.0], name="dir-gated", method="dense:push", conditional=(False, True), gate=dir_gate
            ),
            Method.from_steering(
                [push], [2.0], name="probe-gated", method="dense:push", conditional=(True,), gate=probe_gate
            ),
        ]
    )
    configs = grid.configurations(chat)
    assert [(c.name, c.conditional) for c in configs] == [
        ("none", False),
        ("dir-gated", False),
        ("dir-gated", True),
        ("probe-gated", True),
    ]
    run_sweep(chat, grid, _tasks(), tmp_path / "r.db", batch_size=4, progress=False)
    rows = compare_gates(tmp_path / "r.db")
    assert [(r.config.name, r.gate_kind) for r in rows] == [("dir-gated", "direction"), ("probe-gated", "probe")]

    tasks = {t.name: t for t in _tasks()}
    with ResultsStore(tmp_path / "r.db") as db:
        for row, spec in zip(rows, (dir_gate, probe_gate)):
            # the recorded decisions are the gate's own, item by item
            fired = {}
            for name in ("mp-harm", "mp-ben", "cap"):
                items = tasks[name].task.items(limit=6, seed=0)
                expected = spec.wrap([push]).decisions(chat, [it.prompt for it in items]).fired.numpy()
                fired[name] = expected
                assert row.fire[name].value == pytest.approx(expected.mean())
                assert row.fire[name].n == 6
            want_id = 0.5 * (fired["mp-harm"].mean() + 1 - fired["mp-ben"].mean())
            assert row.id_balanced_accuracy.value == pytest.approx(want_id)
            assert row.id_balanced_accuracy.low <= want_id <= row.id_balanced_accuracy.high
            assert row.ood_balanced_accuracy is None  # no jailbreak-role task in this sweep
            assert row.capability_fire.value == pytest.approx(fired["cap"].mean())
            assert row.capability_unsteered.value == pytest.approx(1 - fired["cap"].mean())
            # capability: the gated cell against the same steering ungated (one ungated twin for both)
            (effect,) = row.capability
            twin = next(c for c in grid.configurations(chat) if c.name == "dir-gated" and not c.conditional)
            gated = np.mean(list(db.values(row.config.config_id, "cap", "correct").values()))
            plain = np.mean(list(db.values(twin.config_id, "cap", "correct").values()))
            assert effect.saved.value == pytest.approx(gated - plain)
            assert effect.unsteered is not None and effect.ungated.value == pytest.approx(plain)
    # the two gates decide differently here, so the table tells them apart
    assert rows[0].gate["kind"] != rows[1].gate["kind"]
    table = gate_table(rows)
    assert len(table) == 3 and table[2][1].startswith("probe > ")
    # jailbreak tasks named as the OOD harmful set (here: the harmful pairs themselves)
    ood = compare_gates(tmp_path / "r.db", ood_harmful=["mp-harm"], ood_harmless=["mp-ben"])
    assert ood[1].ood_balanced_accuracy.value == pytest.approx(ood[1].id_balanced_accuracy.value)
    with pytest.raises(RefusalScopeError, match="no task named nope"):
        compare_gates(tmp_path / "r.db", ood_harmful=["nope"])


def _grid_yaml(gate_line: str, method_gate: str = "") -> str:
    return (
        f"batch_size: 4\nmax_new_tokens: 2\n{gate_line}"
        "methods:\n"
        "  - {name: push, method: 'dense:push', spec: push.json, strengths: [1], conditional: both}\n"
        f"  - {{name: push-probe, method: 'dense:push', spec: push.json, strengths: [1], conditional: true{method_gate}}}\n"
        "tasks:\n  - {name: mp-harm, dataset: builtin/minimal-pairs, split: harmful, limit: 3}\n"
        "  - {name: mp-ben, dataset: builtin/minimal-pairs, split: benign, limit: 3}\n"
    )


def test_grid_files_name_probe_gates(chat, probe, direction, tmp_path):
    probe.save(tmp_path / "probes" / "gate-probe")
    Steering([ActAdd(torch.ones(chat.d_model), STEER_LAYER, 1.0)], name="push").save(tmp_path / "push.json")
    Steering([Conditional(ActAdd(direction, STEER_LAYER, 1.0), DirectionGate(direction, PROBE_LAYER), 0.0)]).save(
        tmp_path / "dir-gate.json"
    )
    (tmp_path / "grid.yaml").write_text(_grid_yaml("gate: dir-gate.json\n", ", gate: probes/gate-probe"))
    plan = load_grid_file(tmp_path / "grid.yaml")
    assert isinstance(plan.grid.gate.gate, DirectionGate)
    method_gate = plan.grid.methods[1].gate
    assert isinstance(method_gate.gate, ProbeGate) and method_gate.threshold == pytest.approx(probe.threshold)
    # the mapping form, at the grid's level
    (tmp_path / "grid2.yaml").write_text(_grid_yaml("gate: {probe: probes/gate-probe}\n"))
    assert isinstance(load_grid_file(tmp_path / "grid2.yaml").grid.gate.gate, ProbeGate)

    folder = save_tiny_model(chat, tmp_path / "model")
    args = ["sweep", "--spec", str(tmp_path / "grid.yaml"), "-o", str(tmp_path / "r.db"), "--model", str(folder)]
    from refusalscope.cli import app

    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    kinds = [r.gate_kind for r in compare_gates(tmp_path / "r.db")]
    assert kinds == ["direction", "probe"]
    # the command prints both gates side by side and writes the rows as JSON
    shown = CliRunner().invoke(app, ["compare-gates", str(tmp_path / "r.db"), "-o", str(tmp_path / "gates.json")])
    assert shown.exit_code == 0, shown.output
    assert "gate fire rate per task" in shown.output  # (rich wraps the cells to the terminal's width)
    saved = json.loads((tmp_path / "gates.json").read_text())
    assert [(r["label"], r["gate_kind"]) for r in saved] == [
        ("push ×1 (conditional)", "direction"),
        ("push-probe ×1 (conditional)", "probe"),
    ]
    assert saved[1]["fire"]["mp-harm"]["n"] == 3 and saved[1]["id_balanced_accuracy"]["n"] == 6
    missing = CliRunner().invoke(app, ["compare-gates", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad = CliRunner().invoke(app, ["compare-gates", str(tmp_path / "r.db"), "--ood-harmful", "nope"])
    assert bad.exit_code == 2 and "no task named nope" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ("gate: probes/missing\n", "gate spec file .*probes/missing does not exist"),
        ("gate: {probe: probes/missing}\n", "the probe folder .*probes/missing does not exist"),
        ("gate: {probe: probes/empty}\n", "holds no probe"),
        ("gate: {probe: probes/gate-probe, spec: dir-gate.json}\n", "exactly one of 'spec' and 'probe'"),
        ("gate: {probe: probes/gate-probe, threshhold: 2}\n", "threshhold"),
        ("gate: 3\n", "a gate is a steering spec file, a probe folder"),
    ],
)
def test_bad_gate_entries_are_one_clear_error(chat, probe, tmp_path, gate, message):
    probe.save(tmp_path / "probes" / "gate-probe")
    (tmp_path / "probes" / "empty").mkdir()
    Steering([ActAdd(torch.ones(chat.d_model), STEER_LAYER, 1.0)], name="push").save(tmp_path / "push.json")
    (tmp_path / "grid.yaml").write_text(_grid_yaml(gate))
    with pytest.raises(RefusalScopeError, match=message):
        load_grid_file(tmp_path / "grid.yaml")


def test_a_probe_for_another_model_is_refused_before_the_sweep_runs(chat, probe, tmp_path):
    other = tiny_chat_model("qwen2", n_layers=4, d_model=64)
    foreign = LinearProbe(probe.spec, probe.weights, probe.bias, probe.threshold, None, {"model": other.info.to_dict()})
    foreign.save(tmp_path / "probes" / "gate-probe")
    Steering([ActAdd(torch.ones(chat.d_model), STEER_LAYER, 1.0)], name="push").save(tmp_path / "push.json")
    (tmp_path / "grid.yaml").write_text(_grid_yaml("gate: probes/gate-probe\n"))
    plan = load_grid_file(tmp_path / "grid.yaml")  # the file itself is fine; the model is not
    with pytest.raises(
        RefusalScopeError, match=r"trained on tiny-qwen2 \(family qwen2, .*\), not on tiny-llama \(family llama"
    ):
        plan.grid.configurations(chat)
    # the same through the command: error + fix, exit 2, no results database
    folder = save_tiny_model(chat, tmp_path / "model")
    from refusalscope.cli import app

    result = CliRunner().invoke(
        app, ["sweep", "--spec", str(tmp_path / "grid.yaml"), "-o", str(tmp_path / "r.db"), "--model", str(folder)]
    )
    assert result.exit_code == 2 and "error:" in result.output and "fix:" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.db").exists()
    # a probe that records no model is accepted (older probe files)
    bare = LinearProbe(probe.spec, probe.weights, probe.bias, probe.threshold)
    GateSpec.from_probe(bare).check_model(chat)


def test_a_probe_for_another_layer_is_one_clear_error(chat, probe, tmp_path):
    push = ActAdd(torch.ones(chat.d_model), STEER_LAYER, 1.0)
    # a dense probe read after the layer it would steer: the gate could not see the prompt unsteered
    late = LinearProbe(FeatureSpec("dense", 3), probe.weights, probe.bias, probe.threshold)
    grid = Grid([Method.from_steering([push], [1.0], name="p", conditional=(True,), gate=GateSpec.from_probe(late))])
    with pytest.raises(RefusalScopeError, match="gate on a layer at or before the earliest steered layer"):
        grid.configurations(chat)
    # a layer this model does not have
    deep = LinearProbe(FeatureSpec("dense", 9), probe.weights, probe.bias, probe.threshold)
    grid = Grid([Method.from_steering([push], [1.0], name="p", conditional=(True,), gate=GateSpec.from_probe(deep))])
    with pytest.raises(RefusalScopeError, match="9"):
        grid.configurations(chat)
    # a latent probe whose SAE reads another layer than the probe says
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=16, architecture="topk", k=4, layer=2), seed=0)
    spec = FeatureSpec("latents", PROBE_LAYER, [1, 2], None, sae.content_hash())
    latent = LinearProbe(spec, np.array([1.0, -1.0]), 0.0, 0.0)
    with pytest.raises(RefusalScopeError, match="trained on layer 2, not layer 1|layer 2.*layer 1"):
        GateSpec.from_probe(latent, sae)
    # and a folder that is not a probe at all
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "probe.json").write_text(json.dumps({"spec": {"kind": "nope"}}))
    (tmp_path / "notes" / "probe.safetensors").write_bytes(b"")
    with pytest.raises(RefusalScopeError):
        GateSpec.from_probe(tmp_path / "notes")
