"""`run_pipeline` with attack tasks (what `run --profile paper` adds), at toy sizes on a
tiny random model: the suite, GCG and multi-turn run against the unsteered, steered and
gated model, and the report gains the robustness section with their rows."""

import dataclasses

import pytest
from test_pipeline_tiny import TINY_PROFILE, forward_passes, tiny_model_dir  # noqa: F401  (fixtures)

from refusalscope.attacks.report import collect
from refusalscope.attacks.tasks import AttackTasks
from refusalscope.evaluation.store import ResultsStore
from refusalscope.pipeline import PROFILES, run_pipeline

TINY_ATTACKS = AttackTasks(
    suite_limit=1,
    suite_families=("direct", "dan", "past-tense"),
    gcg_behaviours=2,
    gcg_steps=1,
    gcg_candidates=4,
    gcg_suffix_length=3,
    max_new_tokens=4,
)


def test_paper_profile_includes_attacks():
    assert PROFILES["paper"].attacks is not None and PROFILES["quick"].attacks is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pipeline_attacks_every_configuration_and_reports_it(tiny_model_dir, tmp_path, data_dir, forward_passes):  # noqa: F811
    profile = dataclasses.replace(TINY_PROFILE, attacks=TINY_ATTACKS)
    out = tmp_path / "run"
    summary = run_pipeline(str(tiny_model_dir), profile, out, data_dir=data_dir, progress=False)
    assert "attacks" in summary["timings"]
    db = out / "results.db"  # the attacks are kept in the sweep's database, beside its rows
    assert not (out / "attacks").exists()
    data = collect(db)
    assert {r["config"] for r in data["suite"]["rows"]} == {"unsteered", "steered", "gated"}
    assert [s["config"] for s in data["gcg"]] == ["unsteered", "steered", "gated"]
    assert all(s["n"] == 2 for s in data["gcg"])
    assert [s["config"] for s in data["multiturn"]] == ["unsteered", "steered", "gated"]
    steered, gated = (s["steering"] for s in data["gcg"][1:])
    assert steered and gated and steered != gated
    page = (out / "report.html").read_text()
    assert "Robustness under attack" in page and "GCG robustness" in page and "refusal by turn" in page
    with ResultsStore(db, create=False) as store:
        stored = {r["run_key"]: len(store.attack_results(r["run_key"])) for r in store.attack_runs()}
    assert len(stored) == 9 and all(stored.values())  # suite, GCG and multi-turn x 3 configurations
    forward_passes.clear()
    run_pipeline(str(tiny_model_dir), profile, out, data_dir=data_dir, progress=False)
    assert len(forward_passes) == 0  # the rerun attacked nothing again: every attack row was a lookup
    with ResultsStore(db, create=False) as store:
        assert {r["run_key"]: len(store.attack_results(r["run_key"])) for r in store.attack_runs()} == stored


def test_pipeline_attack_tasks_build_three_rows_and_a_report_section(tmp_path, data_dir):
    """The pipeline's hook alone (no SAE training): unsteered, steered, gated rows."""
    import torch

    from refusalscope.attacks.report import robustness_section
    from refusalscope.attacks.tasks import pipeline_configs, run_pipeline_attacks
    from refusalscope.evaluation.grid import GateSpec
    from refusalscope.steering import ActAdd, DirectionGate
    from refusalscope.testing import tiny_chat_model

    chat = tiny_chat_model("llama", seed=8, n_layers=2, d_model=32)
    steer = [ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(3)), 0, 8.0)]
    gate = GateSpec(DirectionGate(torch.ones(chat.d_model), 0), 0.0)
    configs = pipeline_configs(steer, gate)
    assert [c.name for c in configs] == ["unsteered", "steered", "gated"]
    assert configs[2].gated and not configs[1].gated
    out = run_pipeline_attacks(chat, steer, gate, tmp_path / "attacks", TINY_ATTACKS, data_dir=data_dir, progress=False)
    assert set(out["gcg"]) == set(out["multiturn"]) == {"unsteered", "steered", "gated"}
    assert all(s["n"] == 2 for s in out["gcg"].values())
    html = robustness_section(tmp_path / "attacks")
    assert html.count(">gated<") == 3 and html.count(">steered<") == 3
