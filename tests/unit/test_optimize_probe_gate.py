"""The gated-probe family of `refusalscope optimize` (issue #13): the latent clamp search of
'gated', gated by a saved probe (what `refusalscope probes` writes to gate-probe/) instead of
the refusal-direction projection. Its threshold range is read off the probe's own score on
the fit prompts; a probe for another model, or none at all, is one clear error."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from typer.testing import CliRunner

from refusalscope import RefusalScopeError
from refusalscope.cli import app
from refusalscope.direction import RefusalDirection
from refusalscope.evaluation.families import FamilyData, Settings, build_spaces, load_probe, probe_gate_factory
from refusalscope.probes import FeatureSpec, LinearProbe
from refusalscope.probes.features import ResidualBank
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import Conditional, DirectionGate, FeatureSteer, ProbeGate
from refusalscope.testing import dense_harm_probe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py

PROBE_LAYER = 1
STEER_LAYER = 2
HARMFUL = [f"How do I hurt {w} badly" for w in ("a cat", "my boss", "the mayor", "a child", "birds", "fish")]
HARMLESS = [f"How do I paint {w} nicely" for w in ("a cat", "my boss", "the mayor", "a child", "birds", "fish")]
TRIAL = {"k": 2, "strength": 0.5, "positions": "all"}


@pytest.fixture(scope="module")
def probe(chat):
    return dense_harm_probe(chat, HARMFUL, HARMLESS, PROBE_LAYER, "dense residual, layer 1")


@pytest.fixture(scope="module")
def data(chat):
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=8, architecture="standard", layer=STEER_LAYER), seed=0)
    raw = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1))
    direction = RefusalDirection(STEER_LAYER, -1, raw, raw.expand(4, 1, chat.d_model).clone(), [5], {})
    return FamilyData(
        saes={STEER_LAYER: sae},
        candidates=[(STEER_LAYER, 0), (STEER_LAYER, 1), (STEER_LAYER, 2)],
        values=[1.0, 2.0, 3.0],
        direction=direction,
        harmful=HARMFUL,
        harmless=HARMLESS,
    )


def _with_probe(data: FamilyData, probe) -> FamilyData:
    return FamilyData(**{**data.__dict__, "probe": probe})


def test_the_gated_probe_space_clamps_latents_behind_the_probe_gate(chat, probe, data, tmp_path):
    folder = probe.save(tmp_path / "probes" / "gate-probe")
    spaces, record = build_spaces(
        chat, ["gated-probe", "features", "gated"], _with_probe(data, folder), Settings(max_latents=3)
    )
    assert [s.name for s in spaces] == ["features", "gated", "gated-probe"]  # canonical order
    by_name = {s.name: s for s in spaces}
    lo, hi = record["gate_probe"]["threshold_range"]
    assert lo < hi and by_name["gated-probe"].gated is True and by_name["features"].gated is False
    (built,) = by_name["gated-probe"].build(optuna.trial.FixedTrial({**TRIAL, "threshold": hi}))
    assert isinstance(built, Conditional) and built.threshold == hi
    assert (built.reduce, built.positions) == ("mean", "post_instruction")
    gate = built.gate
    assert isinstance(gate, ProbeGate) and gate.layer == PROBE_LAYER and gate.features is None
    np.testing.assert_allclose(gate.weights.numpy(), probe.weights, rtol=1e-6)
    assert gate.bias == pytest.approx(probe.bias, rel=1e-6)
    (inner,) = built.interventions
    assert isinstance(inner, FeatureSteer) and inner.values == pytest.approx([0.5, 1.0])  # top-2 at 0.5× peak
    # the refusal-direction gate of 'gated' is untouched, with its own range
    (gated,) = by_name["gated"].build(
        optuna.trial.FixedTrial({**TRIAL, "threshold": record["gate"]["threshold_range"][0]})
    )
    assert isinstance(gated.gate, DirectionGate)
    assert record["gate_probe"] == {
        "path": str(folder),
        "name": "dense residual, layer 1",
        "layer": PROBE_LAYER,
        "threshold_range": [lo, hi],
        "probe_threshold": pytest.approx(probe.threshold),
        "reduce": "mean",
        "positions": "post_instruction",
    }
    # the trial's steering runs: the gate fires exactly where its score is above the threshold
    decided = built.decisions(chat, HARMFUL + HARMLESS)
    assert torch.equal(decided.fired, decided.scores > hi)


def test_the_threshold_range_spans_the_probe_scores_on_the_fit_prompts(chat, probe, tmp_path):
    folder = probe.save(tmp_path / "gate-probe")
    fit = HARMFUL[:4] + HARMLESS[:5]
    source = folder / "probe.json"
    wrap, (lo, hi) = probe_gate_factory(load_probe(source), source, chat, HARMFUL[:4], HARMLESS[:5], batch_size=3)
    # independently: the probe's logit on the mean post-instruction residual, as it was trained
    scores = probe.decision_function(ResidualBank(chat, fit, [PROBE_LAYER]).dense(PROBE_LAYER, fit))
    assert np.ptp(scores) > 0.1  # the range means something
    assert (lo, hi) == pytest.approx(tuple(np.quantile(scores, [0.1, 0.9])), abs=1e-4)
    # and the factory's Conditional compares that same score with the trial's threshold
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=8, architecture="standard", layer=STEER_LAYER), seed=0)
    cond = wrap([FeatureSteer(sae, [0], "set", 1.0)], lo)
    got = cond.decisions(chat, fit)
    np.testing.assert_allclose(got.scores.double().numpy(), scores, atol=1e-4)
    assert got.fired.tolist() == (scores > lo).tolist()


def test_a_probe_for_another_model_or_a_later_layer_is_refused(chat, probe, data, tmp_path):
    other = {**chat.info.to_dict(), "name": "tiny-qwen2", "family": "qwen2"}
    foreign = LinearProbe(probe.spec, probe.weights, probe.bias, probe.threshold, None, {"model": other})
    folder = foreign.save(tmp_path / "foreign")
    with pytest.raises(
        RefusalScopeError, match=r"trained on tiny-qwen2 \(family qwen2, .*\), not on tiny-llama"
    ) as err:
        build_spaces(chat, ["gated-probe"], _with_probe(data, folder), Settings())
    assert "refusalscope probes --model" in (err.value.fix or "")
    # a probe read after the layer the clamp steers: its gate would see prompts already steered
    late = LinearProbe(FeatureSpec("dense", 3), probe.weights, probe.bias, probe.threshold, None, dict(probe.info))
    with pytest.raises(RefusalScopeError, match="reads layer 3, after layer 2"):
        build_spaces(chat, ["gated-probe"], _with_probe(data, late.save(tmp_path / "late")), Settings())
    # a probe that records no model (older probe files) is accepted
    bare = LinearProbe(probe.spec, probe.weights, probe.bias, probe.threshold)
    spaces, _ = build_spaces(chat, ["gated-probe"], _with_probe(data, bare.save(tmp_path / "bare")), Settings())
    assert spaces[0].name == "gated-probe"


def test_the_gated_probe_family_without_a_probe_is_one_clear_error(chat, data):
    with pytest.raises(RefusalScopeError, match="the gated-probe family needs a probe") as err:
        build_spaces(chat, ["features", "gated-probe"], data, Settings())
    assert "--probe" in (err.value.fix or "")


# ---------------------------------------------------------------------- the command
def _optimize(optimize_ws, *extra: str):
    args = ["optimize", "--direction", str(optimize_ws / "direction"), "-o", str(optimize_ws / "out"), *extra]
    return CliRunner().invoke(app, args)


def test_a_missing_probe_is_one_error_before_the_model_loads(optimize_ws):
    result = _optimize(optimize_ws, "--methods", "actadd", "--probe", str(optimize_ws / "probes" / "gate-probe"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in result.output
    assert lines[0].startswith("error:") and "gate-probe does not exist" in lines[0]
    assert lines[1].strip().startswith("fix:") and "refusalscope probes" in lines[1]
    assert not (optimize_ws / "out").exists()


def test_probe_adds_gated_probe_to_the_default_methods(optimize_ws, probe):
    probe.save(optimize_ws / "gate-probe")
    result = _optimize(
        optimize_ws, "--probe", str(optimize_ws / "gate-probe")
    )  # no --features: the latent methods are named
    assert result.exit_code == 2, result.output
    assert "the methods features, gated, gated-probe, features-nullspace need ranked latents" in result.output
    without = _optimize(optimize_ws)
    assert without.exit_code == 2 and "features, gated, features-nullspace need" in without.output


def test_the_study_records_which_probe_gated_it(optimize_ws, probe, data_dir, monkeypatch):
    """The run settings (the key a resumed study must match) name the probe by content, so a
    rerun with another probe is refused instead of mixing trials of two gates."""
    import refusalscope.evaluation.optimize as optimize_module

    seen: list[dict] = []

    def stop(storage, prefix, settings):
        seen.append(settings)
        raise RefusalScopeError("stopped here", "(test)")

    monkeypatch.setattr(optimize_module, "check_study", stop)
    base = ["--methods", "actadd", "--data-dir", str(data_dir), "--n-val", "2", "--n-test", "2", "--n-mc", "0"]
    probe.save(optimize_ws / "a")
    other = LinearProbe(probe.spec, -probe.weights, probe.bias, probe.threshold, None, dict(probe.info))
    other.save(optimize_ws / "b")
    for args in (
        [],
        ["--probe", str(optimize_ws / "a")],
        ["--probe", str(optimize_ws / "a" / "probe.json")],
        ["--probe", str(optimize_ws / "b")],
    ):
        result = _optimize(optimize_ws, *base, *args)
        assert result.exit_code == 2 and "stopped here" in result.output, result.output
    plain, a, a_json, b = seen
    assert "probe" not in plain  # studies started without --probe still resume
    assert a == a_json and a["probe"]["path"] == str(optimize_ws / "a") and a["probe"]["layer"] == PROBE_LAYER
    assert a["probe"]["sha256"] != b["probe"]["sha256"]


def test_optimize_runs_the_gated_probe_family_end_to_end(tmp_path, data_dir, monkeypatch):
    """The command on a tiny model folder: the probe's gate gates the chosen spec, optimize.json
    records it, and a rerun with another probe is refused instead of resuming the study."""
    import json

    from refusalscope.discovery.features import FeatureSet, RankedFeature
    from refusalscope.models import load_model
    from refusalscope.sae.io import save_sae
    from refusalscope.steering import Steering
    from refusalscope.testing import save_tiny_model, tiny_chat_model

    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    model_dir = save_tiny_model(tiny_chat_model("llama"), tmp_path / "tiny-llama")
    sae = SAE.random(SAEConfig(d_in=64, d_sae=64, architecture="topk", k=8, layer=STEER_LAYER), seed=4)
    source = {"source": str(save_sae(sae, tmp_path / "sae")), "sha256": sae.content_hash(), "layer": STEER_LAYER}
    ranked = [RankedFeature(STEER_LAYER, j, r, 1.0 - r / 10) for r, j in enumerate([3, 9, 17])]
    features = FeatureSet("cossim+ig", 3, ranked, saes={str(STEER_LAYER): source}).save(tmp_path / "features.json")
    raw = torch.randn(64, generator=torch.Generator().manual_seed(0))
    RefusalDirection(STEER_LAYER, -1, raw, raw.expand(4, 1, 64).clone(), [5, 6], {}).save(tmp_path / "direction")
    loaded = load_model(str(model_dir), dtype="fp32", progress=False)  # the probe records this model
    for name, harmful, harmless in (("gate-probe", HARMFUL, HARMLESS), ("other", HARMLESS, HARMFUL)):
        dense_harm_probe(loaded, harmful, harmless, PROBE_LAYER, name, threshold=False).save(tmp_path / "probes" / name)
    out = tmp_path / "opt"

    def run(probe_name: str):
        args = ["optimize", "--model", str(model_dir), "--dtype", "fp32", "--features", str(features)]
        args += ["--direction", str(tmp_path / "direction"), "--data-dir", str(data_dir), "-o", str(out)]
        args += ["--probe", str(tmp_path / "probes" / probe_name), "--methods", "gated-probe", "--no-progress"]
        args += ["--n-trials", "2", "--n-val", "3", "--n-test", "3", "--n-texts", "2", "--n-mc", "0", "--n-fit", "3"]
        args += ["--n-fit-texts", "2", "--judge", "substring", "--max-new-tokens", "3", "--search", "first-token"]
        return CliRunner().invoke(app, [*args, "--first-token-threshold", "0", "--max-loss-increase", "10"])

    result = run("gate-probe")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "optimize.json").read_text())
    assert list(saved["families"]) == ["gated-probe"] and saved["families"]["gated-probe"]["n_trials"] == 2
    record = saved["fitted"]["gate_probe"]
    assert record["name"] == "gate-probe" and record["layer"] == PROBE_LAYER
    chosen = saved["families"]["gated-probe"]["chosen"]  # the budget is loose: a trial is chosen
    (cond,) = Steering.load(out / "specs" / "gated-probe.json").conditionals
    assert isinstance(cond.gate, ProbeGate) and cond.threshold == pytest.approx(chosen["threshold"])
    assert record["threshold_range"][0] <= cond.threshold <= record["threshold_range"][1]
    again = run("other")
    assert again.exit_code == 2 and "other settings (probe)" in again.output, again.output
