"""`run_pipeline` end to end on a tiny random model and the shared data, at toy sizes.

The real profiles take a quarter of an hour (quick) or hours (paper) on the embedded
model, so CI cannot run them; this runs every stage (model from a local folder, SAE
training, refusal direction, discovery, harm gate, sweep, report) with the same code and
the benchmark files, and checks the plumbing: every configuration is evaluated on every
task, the outputs are written, and a second run is a pure lookup: no forward pass (counted
with a hook on the first decoder layer), no direction or discovery file rewritten, and a
run into a new folder takes everything but the sweep from the cache. A random model never
refuses, so it has no refusal first tokens to discover: the test names them (the 64 first
tokens it finds likeliest after harmful requests, so that discovery has prompts that "lean
towards refusing" to attribute), and judges refusal by generation + substring judge rather
than the first-token judge that needs refusals to calibrate.
"""

import json
import sqlite3

import pytest

from refusalscope.pipeline import Profile, run_pipeline
from refusalscope.testing import save_tiny_model, tiny_chat_model, tiny_sae_preset

TINY_PRESET = tiny_sae_preset()

TINY_PROFILE = Profile(
    name="tiny",
    description="toy sizes for the pipeline test",
    sae_preset=TINY_PRESET,
    direction={"n_train": 12, "n_val": 6, "layer_stride": 1, "n_screen": 2, "n_finalists": 2},
    discovery={"ig_steps": 2, "n_attribution": 4, "n_activation": 8, "baselines": ()},
    k=4,
    clamp_strengths=(1.0,),
    actadd_strengths=(1.0,),
    first_token=False,
    judge="substring",  # a tiny random model's replies: no need to load the learned judge's feature model
    example_prompts=1,
    max_new_tokens=6,
    refusal_limits={"jailbreakbench": 3, "xstest": 3, "pairs": 3, "jailbreak": 0, "gcg": 2},
    capability={"mmlu": 2, "wikitext": 2},
    batch_size=8,
    nullspace_strengths=(1.0,),  # the #13 comparison: features / dense null-space and the learned map
    n_benign_texts=2,
)


@pytest.fixture
def tiny_model_dir(tmp_path, monkeypatch, data_dir):
    from refusalscope import direction
    from refusalscope.data import load_dataset
    from refusalscope.judges.first_token import RefusalTokens

    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    chat = tiny_chat_model("llama", n_layers=4)
    harmful = load_dataset("harmful/refusal-direction", "train", data_dir=data_dir, limit=16).prompts
    ids = chat.next_token_logits(harmful).float().mean(0).topk(64).indices.tolist()
    tokens = RefusalTokens(ids, [chat.tokenizer.decode([i]) for i in ids])
    monkeypatch.setattr(direction, "find_refusal_tokens", lambda *args, **kwargs: tokens)
    return save_tiny_model(chat, tmp_path / "tiny-llama")


@pytest.fixture
def forward_passes(monkeypatch):
    """Counts decoder-layer-0 calls (every forward pass, full or partial, goes through it)
    of every model `run_pipeline` loads."""
    import refusalscope.models as models

    calls = []
    real = models.load_model

    def load_and_count(*args, **kwargs):
        chat = real(*args, **kwargs)
        chat.hooks.module(0).register_forward_pre_hook(lambda *_: calls.append(1))
        return chat

    monkeypatch.setattr(models, "load_model", load_and_count)
    return calls


def output_files(folder):
    return {
        p.relative_to(folder): p.stat().st_mtime_ns
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.parts[-2] in ("direction", "discovery")
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # a random model's direction fails the filters
def test_every_stage_runs_and_a_second_run_recomputes_nothing(
    tiny_model_dir, tmp_path, data_dir, forward_passes, monkeypatch
):
    out = tmp_path / "run"
    ended = []  # on_stage hears every stage end, in order, with the loaded model
    first = run_pipeline(
        str(tiny_model_dir),
        TINY_PROFILE,
        out,
        data_dir=data_dir,
        progress=False,
        on_stage=lambda name, chat: ended.append((name, chat.n_layers)),
    )
    assert len(forward_passes) > 100  # the counter sees the model's work

    # features x1 (plain and gated), the refusal direction ActAdd x1 and the three null-space
    # methods x1, plus the unsteered row
    with sqlite3.connect(out / "results.db") as db:
        configs = [row[0] for row in db.execute("SELECT label FROM configs")]
        pairs = [row[0] for row in db.execute("SELECT name FROM pairs")]
        tasks = {row[0] for row in db.execute("SELECT task FROM tasks")}
        per_cell = db.execute("SELECT config_id, task, COUNT(*) FROM items GROUP BY config_id, task").fetchall()
    assert len(configs) == 7, configs
    assert {"features null-space ×1", "refusal direction null-space ×1", "learned null-space ×1"} <= set(configs)
    assert "headline: jailbreakbench / xstest-safe" in pairs
    assert tasks == {
        "jbb-harmful",
        "xstest-unsafe",
        "xstest-safe",
        "pairs-harmful",
        "pairs-benign",
        "jailbreak-gcg",
        "examples-harmful",
        "examples-benign",
        "mmlu",
        "wikitext",
    }
    assert len(per_cell) == len(configs) * len(tasks)  # every configuration evaluated on every task
    assert first["sweep"]["skipped"] == 0 and first["sweep"]["computed"] == sum(n for *_, n in per_cell)

    saved = json.loads((out / "run.json").read_text())
    assert saved["profile"]["sae_preset"]["name"] == "tiny"
    assert saved["direction"]["layer"] in range(4)
    assert len(saved["selected"]) == TINY_PROFILE.k
    assert set(saved["timings"]) == {"model", "saes", "direction", "discovery", "tasks", "sweep", "report"}
    assert ended == [(name, 4) for name in saved["timings"]]
    page = (out / "report.html").read_text()
    assert 'id="headline"' in page and "learned null-space" in page and 'id="pareto"' in page
    assert "jbb-harmful" in first["table"]

    written = output_files(out)
    assert len(written) >= 5  # direction.json/.safetensors, features*.json, attribution_prompts.json
    forward_passes.clear()
    second = run_pipeline(str(tiny_model_dir), TINY_PROFILE, out, data_dir=data_dir, progress=False)
    assert second["sweep"] == {"computed": 0, "skipped": first["sweep"]["computed"]}
    assert second["selected"] == first["selected"]
    assert len(forward_passes) == 0  # every stage was a lookup
    assert output_files(out) == written  # and no direction/discovery file was rewritten

    # a new output folder: discovery scores, gate and calibration come from $REFUSALSCOPE_CACHE;
    # only the sweep (its database lives in the output folder) runs again
    import refusalscope.evaluation.sweep as sweep

    before_sweep = []
    real_sweep = sweep.run_sweep

    def note_and_sweep(*args, **kwargs):
        before_sweep.append(len(forward_passes))
        return real_sweep(*args, **kwargs)

    monkeypatch.setattr(sweep, "run_sweep", note_and_sweep)
    elsewhere = tmp_path / "elsewhere"
    third = run_pipeline(str(tiny_model_dir), TINY_PROFILE, elsewhere, data_dir=data_dir, progress=False)
    assert third["selected"] == first["selected"]
    assert third["gate"] == first["gate"]
    assert before_sweep == [0]  # SAEs, direction, discovery, gate: all from the cache
    assert len(forward_passes) > 0 and third["sweep"]["computed"] == first["sweep"]["computed"]
    assert (elsewhere / "discovery" / "features.json").read_text() == (out / "discovery" / "features.json").read_text()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_quick_style_profile_falls_back_to_replies_and_reports_the_headline(tiny_model_dir, tmp_path, data_dir):
    """The quick profile's path: the first-token judge is calibrated on held-out prompts; a
    random model never refuses, so the calibration is unusable and the refusal tasks judge
    generated replies. Strengths below 1x, ARC-Easy from its Dev split, the headline pair,
    and a report that opens with the headline table and the Pareto figure."""
    import dataclasses
    import warnings

    profile = dataclasses.replace(
        TINY_PROFILE,
        name="tiny-quick",
        first_token=True,
        calibration_per_source=4,
        clamp_strengths=(0.25, 0.5),
        nullspace_strengths=(),
        capability={"arc-easy:validation": 3, "wikitext": 2},
    )
    out = tmp_path / "quick"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pipeline(str(tiny_model_dir), profile, out, data_dir=data_dir, progress=False)
    assert any("judging generated replies" in str(w.message) for w in caught)
    judged = result["tasks"]["first_token_judge"]
    assert judged["used"] is False and judged["held_out"]["agreement"]["n"] == 10 and judged["n_calibration"] == 20
    with sqlite3.connect(out / "results.db") as db:
        labels = {row[0] for row in db.execute("SELECT label FROM configs")}
        judges = {row[0]: row[1] for row in db.execute("SELECT task, judge FROM tasks")}
        arc = db.execute("SELECT split FROM tasks WHERE task='arc-easy'").fetchone()
    assert {"features ×0.25", "features ×0.5 (conditional)", "refusal direction ×1"} <= labels and len(labels) == 6
    assert judges["jbb-harmful"] == judges["xstest-safe"] == "substring"  # replies, not the first-token proxy
    assert arc == ("validation",)
    page = (out / "report.html").read_text()
    assert page.index('id="headline"') < page.index('id="pareto"') < page.index('id="tradeoff"')
    assert "headline: jailbreakbench / xstest-safe" in page
    tradeoff = json.loads((out / "report_data" / "tradeoff.json").read_text())
    assert tradeoff and not any("examples-" in r["harmful_task"] for r in tradeoff)
