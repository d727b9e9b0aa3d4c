"""`refusalscope optimize` end to end on a tiny random model (saved as a model folder), a
random SAE in the SAELens layout, a hand-written features.json and refusal direction, and
the shared data at toy sizes: every method family runs, the outputs are written, a rerun
resumes without new trials, a changed setting is refused, and the chosen specs load.
The trade-off search's science is in tests/unit/test_optimize.py (a planted latent)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from refusalscope.cli import app
from refusalscope.direction import RefusalDirection
from refusalscope.discovery.features import FeatureSet, RankedFeature
from refusalscope.sae.io import save_sae
from refusalscope.sae.model import SAE, SAEConfig
from refusalscope.testing import save_tiny_model, tiny_chat_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("optimize")
    chat = tiny_chat_model("llama", n_layers=4)
    model_dir = save_tiny_model(chat, root / "tiny-llama")
    sae = SAE.random(SAEConfig(d_in=64, d_sae=64, architecture="topk", k=8, layer=2), seed=4)
    sae_dir = save_sae(sae, root / "sae-2")
    fs = FeatureSet(
        "cossim+ig",
        4,
        [RankedFeature(2, j, r, 1.0 - r / 10) for r, j in enumerate([3, 9, 17, 30])],
        saes={"2": {"source": str(sae_dir), "sha256": sae.content_hash(), "layer": 2}},
    )
    features = fs.save(root / "discover" / "features.json")
    raw = torch.randn(64, generator=torch.Generator().manual_seed(0))
    RefusalDirection(2, -1, raw, raw.expand(4, 1, 64).clone(), [5, 6], {}).save(root / "direction")
    return model_dir, features, root / "direction"


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))


def argv(model_dir, features, direction, data_dir, out, **changes):
    opts = {
        "--n-trials": "2",
        "--n-val": "4",
        "--n-test": "4",
        "--n-texts": "2",
        "--n-mc": "4",
        "--n-fit": "4",
        "--n-fit-texts": "2",
        "--judge": "substring",
        "--max-new-tokens": "4",
    } | changes
    return [
        "optimize",
        "--model",
        str(model_dir),
        "--dtype",
        "fp32",
        "--features",
        str(features),
        "--direction",
        str(direction),
        "--data-dir",
        str(data_dir),
        "-o",
        str(out),
        "--no-progress",
    ] + [x for kv in opts.items() for x in kv]


def test_optimize_cli_end_to_end_and_resume(tiny_run, tmp_path, data_dir):
    model_dir, features, direction = tiny_run
    out = tmp_path / "opt"
    result = runner.invoke(app, argv(model_dir, features, direction, data_dir, out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "optimize.json").read_text())
    families = ["features", "gated", "features-nullspace", "actadd", "actadd-nullspace", "learned"]
    assert list(saved["families"]) == families
    for name in families:
        fam = saved["families"][name]
        assert fam["n_trials"] == 2 and len(fam["trials"]) == 2
        if fam["chosen"] is not None:
            assert fam["chosen_test"]["harmful_refusal"]["n"] == 4 and fam["chosen_test"]["mc_accuracy"]["n"] == 4
            assert (out / "specs" / f"{name}.json").is_file()
    assert saved["baseline_test"]["text_loss"]["n"] == 2
    assert saved["refusal_decision"]["test"] == "substring on 4-token greedy replies"
    assert saved["fitted"]["benign_subspace"]["2"]["rank"] > 0 and saved["model"]["n_layers"] == 4
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    head = (out / "headline.md").read_text()
    assert head.startswith("| method |") and "| unsteered |" in head and "| learned |" in head
    # the chosen specs are ordinary spec files that load (null-space tensors beside them)
    from refusalscope.steering import Steering

    chosen = [n for n in families if saved["families"][n]["chosen"] is not None]
    assert chosen
    for name in chosen:
        assert Steering.load(out / "specs" / f"{name}.json").interventions
    # a rerun resumes: no new trial, the same numbers
    again = runner.invoke(app, argv(model_dir, features, direction, data_dir, out), catch_exceptions=False)
    assert again.exit_code == 0, again.output
    resaved = json.loads((out / "optimize.json").read_text())
    assert resaved["families"] == saved["families"]
    # a changed split size is refused before the model loads, and the study is left as it was
    before = (out / "optimize.db").read_bytes()
    changed = runner.invoke(app, argv(model_dir, features, direction, data_dir, out, **{"--n-val": "5"}))
    assert changed.exit_code == 2 and "other settings (n_val)" in changed.output and "fix:" in changed.output
    assert (out / "optimize.db").read_bytes() == before


def test_optimize_cli_dense_methods_need_no_features(tiny_run, tmp_path, data_dir):
    model_dir, features, direction = tiny_run
    out = tmp_path / "dense"
    args = argv(model_dir, features, direction, data_dir, out, **{"--methods": "actadd,learned", "--n-mc": "0"})
    i = args.index("--features")
    del args[i : i + 2]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "optimize.json").read_text())
    assert list(saved["families"]) == ["actadd", "learned"] and saved["baseline_test"]["mc_accuracy"] is None


def test_optimize_cli_selective_rank_and_held_out_calibration(tiny_run, tmp_path, data_dir):
    """--rank selective reorders the candidates by rank_selective (recorded with its comparison
    to the prior order); the first-token threshold is calibrated on prompts outside both splits
    and checked on half of them (a random model never refuses: unusable, and said so)."""
    model_dir, features, direction = tiny_run
    out = tmp_path / "selective"
    opts = {"--methods": "features", "--rank": "selective", "--n-calibration": "6", "--n-mc": "0"}
    result = runner.invoke(app, argv(model_dir, features, direction, data_dir, out, **opts), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "optimize.json").read_text())
    ranking = saved["sources"]["ranking"]
    assert sorted((r["layer"], r["feature"]) for r in ranking["latents"]) == [(2, 3), (2, 9), (2, 17), (2, 30)]
    assert [r["rank"] for r in ranking["latents"]] == [0, 1, 2, 3]
    assert ranking["compared_with_prior"]["k"] == 4 and ranking["compared_with_prior"]["overlap"] == 4
    first = saved["sources"]["first_token"]
    assert first["n_fit"] == 6 and first["held_out"]["agreement"]["n"] == 6 and first["usable"] is False
    assert "first-token threshold" in result.output
    # --search auto: a proxy below its floor is not used in the search either; replies are judged
    assert saved["refusal_decision"]["search"] == "substring on 4-token greedy replies (validation)"
    assert "the search judges generated replies instead" in " ".join(result.output.split())
    bad = runner.invoke(app, argv(model_dir, features, direction, data_dir, tmp_path / "bad", **{"--rank": "best"}))
    assert bad.exit_code == 2 and "--rank" in bad.output


def test_optimize_cli_search_modes(tiny_run, tmp_path, data_dir):
    """--search first-token keeps the proxy in the search even below its floor (said so);
    --search replies judges replies without calibrating a proxy at all."""
    model_dir, features, direction = tiny_run
    opts = {"--methods": "actadd", "--n-mc": "0", "--n-calibration": "6"}
    proxy = runner.invoke(
        app,
        argv(model_dir, features, direction, data_dir, tmp_path / "p", **opts, **{"--search": "first-token"}),
        catch_exceptions=False,
    )
    assert proxy.exit_code == 0, proxy.output
    saved = json.loads((tmp_path / "p" / "optimize.json").read_text())
    assert saved["refusal_decision"]["search"].startswith("first-token log-odds >")
    assert "its validation numbers are rough" in " ".join(proxy.output.split())
    replies = runner.invoke(
        app,
        argv(model_dir, features, direction, data_dir, tmp_path / "r", **opts, **{"--search": "replies"}),
        catch_exceptions=False,
    )
    assert replies.exit_code == 0, replies.output
    saved = json.loads((tmp_path / "r" / "optimize.json").read_text())
    assert saved["refusal_decision"]["search"] == "substring on 4-token greedy replies (validation)"
    assert "first_token" not in saved["sources"] and "first-token threshold" not in replies.output
