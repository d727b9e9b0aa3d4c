"""`refusalscope jailbreak-analysis` and `refusalscope probes` end to end on a tiny random
model (saved as a model folder), random SAEs saved in the SAELens layout, a hand-written
features.json, and the shared data at toy sizes. Checks the plumbing and the outputs;
the science is in tests/unit/test_mechanism.py (planted latent) and the README note."""

import json

import pytest
from typer.testing import CliRunner

from refusalscope.cli import app
from refusalscope.discovery.features import FeatureSet, RankedFeature
from refusalscope.sae.io import save_sae
from refusalscope.sae.model import SAE, SAEConfig
from refusalscope.testing import save_tiny_model, tiny_chat_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mech")
    chat = tiny_chat_model("llama", n_layers=4)
    model_dir = save_tiny_model(chat, root / "tiny-llama")
    saes = {}
    for layer, seed in ((1, 3), (2, 4)):
        sae = SAE.random(SAEConfig(d_in=64, d_sae=64, architecture="topk", k=8, layer=layer), seed=seed)
        saes[layer] = save_sae(sae, root / f"sae-{layer}")
    down = SAE.random(SAEConfig(d_in=64, d_sae=64, architecture="topk", k=8, layer=2), seed=4)
    fs = FeatureSet(
        "cossim+ig",
        4,
        [RankedFeature(2, j, r, 1.0 - r / 10) for r, j in enumerate([3, 9, 17, 30])],
        saes={"2": {"source": str(saes[2]), "sha256": down.content_hash(), "layer": 2}},
    )
    features = fs.save(root / "discover" / "features.json")
    import torch

    from refusalscope.direction import RefusalDirection

    raw = torch.randn(64, generator=torch.Generator().manual_seed(0))
    RefusalDirection(2, -1, raw, raw.expand(4, 1, 64).clone(), [5, 6], {}).save(root / "direction")
    return model_dir, saes, features


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    """Cached replies of the tiny model stay out of the user's cache."""
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))


def test_jailbreak_analysis_cli(tiny_setup, tmp_path, data_dir):
    model_dir, saes, features = tiny_setup
    out = tmp_path / "ja"
    result = runner.invoke(
        app,
        [
            "jailbreak-analysis",
            "--model",
            str(model_dir),
            "--dtype",
            "fp32",
            "--features",
            str(features),
            "--harm-sae",
            str(saes[1]),
            "--n-harm",
            "5",
            "--attacks",
            "jbc,past-tense",
            "--per-attack",
            "3",
            "--max-new-tokens",
            "4",
            "--judge",
            "substring",
            "--n-loo",
            "1",
            "--min-prompts",
            "2",
            "--data-dir",
            str(data_dir),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "analysis.json").read_text())
    assert [g["name"] for g in saved["groups"]] == ["refusal", "harm"]
    assert len(saved["harm_latents"]) == 5 and len(saved["pairs"]) == 6
    # each harm latent was clamped to zero to measure its effect on the refusal latents
    assert all(isinstance(r["effect"], float) for r in saved["harm_latents"])
    # a request shared by several pairs is measured once: same vanilla activation and reply
    by_request: dict = {}
    for pair in saved["pairs"]:
        by_request.setdefault(pair["vanilla"], []).append((pair["vanilla_refusal"], pair["vanilla_reply"]))
    assert saved["settings"]["n_distinct_requests"] == len(by_request)
    assert all(len(set(v)) == 1 for v in by_request.values())
    rows = {(r["attack"], r["group"], r["outcome"]) for r in saved["suppression"]}
    assert ("all attacks", "refusal", "all") in rows and ("jbc", "harm", "all") in rows
    assert saved["loo_check"]["n_prompts"] == 1
    assert saved["judge"]["name"]
    html = (out / "report.html").read_text()
    assert "Suppression by attack" in html and 'class="heat-body"' in html and "<script" not in html


def test_probes_cli(tiny_setup, tmp_path, data_dir):
    model_dir, saes, features = tiny_setup
    out = tmp_path / "pr"
    result = runner.invoke(
        app,
        [
            "probes",
            "--model",
            str(model_dir),
            "--dtype",
            "fp32",
            "--features",
            str(features),
            "--harm-sae",
            str(saes[1]),
            "--n-harm",
            "4",
            "--n-train",
            "12",
            "--n-val",
            "8",
            "--n-test",
            "8",
            "--n-ood",
            "8",
            "--attacks",
            "jbc,past-tense",
            "--n-capability",
            "4",
            "--direction",
            str(features.parent.parent / "direction"),
            "--data-dir",
            str(data_dir),
            "-o",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "probes.json").read_text())
    names = [r["name"] for r in saved["comparison"]["rows"]]
    assert names[0] == "4 selected refusal latents" and names[1] == "4 random live latents"
    assert names[2].startswith("dense residual, layer") and names[-1] == "4 harm latents alone"
    assert len(saved["comparison"]["rows"][1]["draws"]) == 5
    assert saved["data"]["test_ood"]["harmful"] == 8 and saved["data"]["test_ood"]["harmless"] == 8
    assert {g["gate"].split(" ")[0] for g in saved["gates"]} >= {"probe"}
    assert sorted(p.name for p in (out / "gate-probe").iterdir()) == ["probe.json", "probe.safetensors"]
    assert "Probe table" in (out / "report.html").read_text()
    gate = json.loads((out / "gate.json").read_text())
    assert gate["kind"] == "probe" and gate["reduce"] == "mean" and gate["positions"] == "post_instruction"


def test_bad_input_exits_2_before_loading(tiny_setup, tmp_path):
    model_dir, _, features = tiny_setup
    out = tmp_path / "never"
    for args in (
        ["jailbreak-analysis", "--features", str(tmp_path / "none.json")],
        ["jailbreak-analysis", "--features", str(features), "--attacks", "bogus"],
        ["probes", "--features", str(features), "--n-random", "2"],
        ["jailbreak-analysis", "--features", str(features), "--harm-sae", "x", "--harm-layer", "1"],
        ["probes", "--features", str(features), "--harm-layer", "2"],  # the refusal latents' own layer
    ):
        result = runner.invoke(app, [*args, "--model", "no-such-model", "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and "fix:" in result.output
        assert not out.exists()
