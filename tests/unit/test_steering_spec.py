"""Steering specs (JSON/YAML, stable ids), lm-eval steer files, and the steer/chat commands."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from refusalscope import RefusalScopeError
from refusalscope.cli import app
from refusalscope.sae import SAE, SAEConfig, load_sae, save_sae
from refusalscope.steering import (
    ActAdd,
    Conditional,
    DirectionAblation,
    DirectionClamp,
    DirectionGate,
    FeatureGate,
    FeatureSteer,
    ProbeGate,
    Steering,
    export_lm_eval,
    import_lm_eval,
    steer,
)
from refusalscope.testing import save_tiny_model

PROMPTS = ["Hello there", "Write a poem about the sea and the sky, please", "How do I bake bread?"]
runner = CliRunner()


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    sae = SAE.random(SAEConfig(d_in=64, d_sae=128, architecture="jumprelu", layer=1, model_name="tiny-llama"), seed=5)
    with torch.no_grad():
        sae.threshold.fill_(0.2)
        sae.b_dec.normal_(0, 0.1)
    return save_sae(sae, tmp_path_factory.mktemp("saes") / "l1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, chat):
    return save_tiny_model(chat, tmp_path_factory.mktemp("models") / "tiny-llama")


def full_steering(chat, sae_dir):
    gen = torch.Generator().manual_seed(0)
    d = lambda: torch.randn(chat.d_model, generator=gen)
    return Steering(
        [
            FeatureSteer(str(sae_dir), [3, 9], "set", [4.0, 2.0], positions="prompt"),
            DirectionAblation(d(), positions="generated"),
            ActAdd(d(), 2, 3.0, positions=[-1]),
            DirectionClamp(d(), 3, 0.5, bias=d()),
            DirectionClamp.from_sae_feature(str(sae_dir), 7, 1.5),
            Conditional(
                [ActAdd(d(), 2, 10.0), FeatureSteer(str(sae_dir), [1], "scale", -3.0)],
                FeatureGate(str(sae_dir), 4),
                0.1,
                reduce="mean",
            ),
            Conditional(ActAdd(d(), 3, 1.0), ProbeGate(d(), 0.3, 2), -0.5, positions="post_instruction"),
            Conditional(ActAdd(d(), 3, 1.0), ProbeGate(torch.ones(2), 0.0, sae=str(sae_dir), features=[2, 5]), 0.0),
        ],
        name="everything",
        description="one of each kind",
    ).for_model(chat)


# ---------------------------------------------------------------------- spec files
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_spec_round_trip_reproduces_the_steering(chat, sae_dir, tmp_path, suffix):
    steering = full_steering(chat, sae_dir)
    path = steering.save(tmp_path / f"spec{suffix}")
    loaded = Steering.load(path)
    assert loaded.id == steering.id and loaded.id.startswith("steer-") and len(loaded.id) == 18
    assert loaded.to_dict()["interventions"] == steering.to_dict()["interventions"]
    assert loaded.name == "everything" and loaded.model["name"] == "tiny-llama"
    with steer(chat, steering):
        a = chat.generate(PROMPTS, max_new_tokens=6, progress=False).token_ids
    with steer(chat, loaded):
        b = chat.generate(PROMPTS, max_new_tokens=6, progress=False).token_ids
    assert a == b
    data = json.loads(path.read_text()) if suffix == ".json" else __import__("yaml").safe_load(path.read_text())
    assert data["format"] == "refusalscope-steering" and data["id"] == steering.id
    feature = data["interventions"][0]
    assert feature["sae"]["source"] == str(sae_dir) and len(feature["sae"]["sha256"]) == 64
    assert feature["sae"]["layer"] == 1 and feature["features"] == [3, 9] and feature["mode"] == "set"


def test_the_id_is_content_addressed(chat, sae_dir, tmp_path):
    d = torch.ones(chat.d_model)
    a = Steering([ActAdd(d, 1, 2.0)], name="a", description="x").for_model(chat)
    b = Steering([ActAdd(d, 1, 2.0)], name="b").for_model(chat)
    c = Steering([ActAdd(d, 1, 2.5)]).for_model(chat)
    assert a.id == b.id != c.id
    # an SAE is identified by its content, not by where it lives
    moved = save_sae(load_sae(sae_dir), tmp_path / "moved")
    assert (
        Steering([FeatureSteer(str(sae_dir), [1], "add", 1.0)]).id
        == Steering([FeatureSteer(str(moved), [1], "add", 1.0)]).id
    )


def test_loading_verifies_the_sae_hash(chat, sae_dir, tmp_path):
    folder = save_sae(load_sae(sae_dir), tmp_path / "sae")
    path = Steering([FeatureSteer(str(folder), [1], "set", 2.0)]).save(tmp_path / "s.json")
    changed = load_sae(folder)
    with torch.no_grad():
        changed.W_dec[1] *= 2
    save_sae(changed, folder)
    with pytest.raises(RefusalScopeError, match="is not the one this spec was written with") as err:
        Steering.load(path)
    assert "restore the SAE" in err.value.fix


def test_relative_sae_sources_and_direction_files(chat, sae_dir, tmp_path):
    save_sae(load_sae(sae_dir), tmp_path / "saes" / "l1")
    torch.save({"refusal": torch.arange(64.0)}, tmp_path / "dir.pt")
    (tmp_path / "spec.yaml").write_text(
        "format: refusalscope-steering\nversion: 1\ninterventions:\n"
        "  - {kind: feature, sae: {source: saes/l1}, features: [2], mode: add, value: 1.0}\n"
        "  - {kind: actadd, layer: 2, coefficient: 0.5, direction: {file: dir.pt, key: refusal}}\n"
    )
    loaded = Steering.load(tmp_path / "spec.yaml")
    assert torch.equal(loaded.interventions[1].direction, torch.arange(64.0))
    assert loaded.interventions[0].sae.cfg.layer == 1


def test_in_memory_sae_cannot_be_saved_without_a_source(tmp_path):
    sae = SAE.random(SAEConfig(d_in=64, d_sae=32, architecture="standard", layer=1))
    steering = Steering([FeatureSteer(sae, [1], "set", 1.0)])
    assert steering.id.startswith("steer-")  # the id needs no source
    with pytest.raises(RefusalScopeError, match="has no source on disk") as err:
        steering.save(tmp_path / "x.json")
    assert "save_sae" in err.value.fix


def test_bad_spec_files(tmp_path):
    (tmp_path / "a.json").write_text('{"format": "refusalscope-steering", "interventions": [{"kind": "teleport"}]}')
    with pytest.raises(RefusalScopeError, match=r"interventions\[0\]: unknown intervention kind 'teleport'"):
        Steering.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(
        '{"format": "refusalscope-steering", "interventions": [{"kind": "actadd", "layer": 1}]}'
    )
    with pytest.raises(RefusalScopeError, match="needs the field 'direction'"):
        Steering.load(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(RefusalScopeError, match="cannot parse"):
        Steering.load(tmp_path / "c.json")
    with pytest.raises(RefusalScopeError, match="does not exist"):
        Steering.load(tmp_path / "absent.json")


def test_edited_spec_gets_a_new_id_with_a_warning(chat, tmp_path):
    steering = Steering([ActAdd(torch.ones(64), 1, 2.0)]).for_model(chat)
    path = steering.save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    data["interventions"][0]["coefficient"] = 3.0
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="edited by hand"):
        loaded = Steering.load(path)
    assert loaded.id != steering.id


# ---------------------------------------------------------------------- lm-eval files
def lm_eval_clamp(acts, direction, value, bias):
    """lm-eval's documented clamp, re-derived: set the projection of (acts - bias) on d̂ to value."""
    unit = direction / direction.norm()
    centred = acts - bias
    return centred + unit * (value - centred @ unit)[..., None] + bias


def test_lm_eval_csv_import_has_lm_evals_effect(chat, sae_dir, tmp_path):
    sae = load_sae(sae_dir)
    path = tmp_path / "steer.csv"
    path.write_text(
        "loader,hook_action,sparse_model,hookpoint,feature_index,steering_coefficient,sae_id,description,\n"
        f"sparsify,add,{sae_dir},layers.1,30, 10.0,,more of 30,\n"
        f"sae_lens,clamp,my-release,layers.2,7,2.5,l2,,\n"
    )
    sae2 = SAE.random(SAEConfig(d_in=64, d_sae=128, architecture="standard", layer=2), seed=9)
    steering = import_lm_eval(path, saes={"my-release/l2": sae2})
    add, clamp = steering.interventions
    assert isinstance(add, FeatureSteer) and add.mode == "add" and add.values == [10.0] and add.layer == 1
    assert isinstance(clamp, DirectionClamp) and clamp.layer == 2
    plain = chat.residual(PROMPTS, [1, 2], positions="all", progress=False)
    got1 = chat.residual(PROMPTS, [1], positions="all", interventions=[add], progress=False)[1]
    got2 = chat.residual(PROMPTS, [2], positions="all", interventions=[clamp], progress=False)[2]
    for i in range(len(PROMPTS)):
        torch.testing.assert_close(got1[i], plain[1][i] + 10.0 * sae.W_dec[30], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            got2[i], lm_eval_clamp(plain[2][i], sae2.W_dec[7], 2.5, sae2.b_dec), atol=1e-4, rtol=1e-4
        )
    assert steering.description == "more of 30"


def test_lm_eval_csv_export_round_trip(chat, tmp_path):
    release_sae = SAE.random(SAEConfig(d_in=64, d_sae=128, architecture="standard", layer=2), seed=9)
    release_sae.cfg.provenance = {"release": "tiny-release", "sae_id": "layer_2"}
    steering = Steering(
        [
            FeatureSteer(release_sae, [5, 6], "add", [3.0, -1.0]),
            DirectionClamp.from_sae_feature(release_sae, 8, 0.0, layer=2),
        ]
    )
    with pytest.raises(RefusalScopeError, match="one row per hookpoint"):
        export_lm_eval(steering, tmp_path / "x.csv")
    steering = Steering([FeatureSteer(release_sae, [5], "add", 3.0)])
    path = export_lm_eval(steering, tmp_path / "out.csv")
    rows = list(csv.DictReader(path.open()))
    assert rows == [
        {
            "loader": "sae_lens",
            "action": "add",
            "sparse_model": "tiny-release",
            "hookpoint": "layers.2",
            "feature_index": "5",
            "steering_coefficient": "3.0",
            "sae_id": "layer_2",
            "description": f"refusalscope {steering.id}",
        }
    ]
    back = import_lm_eval(path, saes={"tiny-release/layer_2": release_sae})
    assert back.id == steering.id


def test_lm_eval_pt_export_and_import_preserve_the_logits(chat, sae_dir, tmp_path):
    gen = torch.Generator().manual_seed(2)
    steering = Steering(
        [
            FeatureSteer(str(sae_dir), [3, 4], "add", [2.0, -1.0]),
            ActAdd(torch.randn(64, generator=gen), 1, 2.0),  # summed with the feature addition at layers.1
            DirectionAblation(torch.randn(64, generator=gen)),
            DirectionClamp(torch.randn(64, generator=gen), 2, 0.7, bias=torch.randn(64, generator=gen)),
        ]
    )
    with pytest.raises(RefusalScopeError, match="two interventions at layers.1"):
        export_lm_eval(steering, tmp_path / "x.pt", model=chat)
    steering.interventions[3] = DirectionClamp(
        steering.interventions[3].direction, 3, 0.7, bias=steering.interventions[3].bias
    )
    steering.interventions[2] = DirectionAblation(steering.interventions[2].direction, layers=["embed", 0, 2])
    path = export_lm_eval(steering, tmp_path / "out.pt", model=chat)
    data = torch.load(path, weights_only=True)
    assert set(data) == {"embed_tokens", "layers.0", "layers.1", "layers.2", "layers.3"}
    assert data["layers.1"]["action"] == "add" and data["layers.1"]["bias"] is None
    assert data["layers.0"]["action"] == "clamp" and data["layers.0"]["steering_coefficient"] == 0.0
    back = import_lm_eval(path)
    torch.testing.assert_close(
        chat.next_token_logits(PROMPTS, interventions=back),
        chat.next_token_logits(PROMPTS, interventions=steering),
        atol=1e-4,
        rtol=1e-4,
    )


def test_lm_eval_export_refuses_what_it_cannot_express(chat, sae_dir, tmp_path):
    set_ = Steering([FeatureSteer(str(sae_dir), [3], "set", 4.0)])
    with pytest.raises(RefusalScopeError, match="not set or scale an SAE latent"):
        export_lm_eval(set_, tmp_path / "x.csv")
    gated = Steering([Conditional(ActAdd(torch.ones(64), 1), DirectionGate(torch.ones(64), 0), 0.0)])
    with pytest.raises(RefusalScopeError, match="lm-eval steers every input the same way"):
        export_lm_eval(gated, tmp_path / "x.pt")
    prompt_only = Steering([ActAdd(torch.ones(64), 1, positions="prompt")])
    with pytest.raises(RefusalScopeError, match="lm-eval steers all token positions"):
        export_lm_eval(prompt_only, tmp_path / "x.pt")
    local = Steering([FeatureSteer(str(sae_dir), [3], "add", 4.0)])
    with pytest.raises(RefusalScopeError, match="cannot load by name") as err:
        export_lm_eval(local, tmp_path / "x.csv")
    assert ".pt" in err.value.fix


# ---------------------------------------------------------------------- commands
def test_steer_command_side_by_side(chat, model_dir, tmp_path):
    spec = Steering([ActAdd(torch.randn(64, generator=torch.Generator().manual_seed(0)) * 40, 2, 1.0)]).for_model(chat)
    spec_path = spec.save(tmp_path / "push.json")
    out = tmp_path / "replies.json"
    result = runner.invoke(
        app,
        [
            "steer",
            "Hello there",
            "How do I bake bread?",
            "--spec",
            str(spec_path),
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "5",
            "--dtype",
            "fp32",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "unsteered" in result.output and "steered" in result.output and spec.id in result.output
    data = json.loads(out.read_text())
    assert data["steering_id"] == spec.id and len(data["replies"]) == 2
    assert all(r["steered"] != r["unsteered"] for r in data["replies"])


def test_steer_command_inline_options_and_spec_saving(model_dir, sae_dir, tmp_path):
    torch.save(torch.ones(64), tmp_path / "d.pt")
    result = runner.invoke(
        app,
        [
            "steer",
            "Hello there",
            "--model",
            str(model_dir),
            "--sae",
            str(sae_dir),
            "-F",
            "3",
            "-F",
            "5",
            "--mode",
            "scale",
            "--value",
            "-3",
            "--ablate",
            str(tmp_path / "d.pt"),
            "--positions",
            "prompt",
            "--max-new-tokens",
            "3",
            "--save-spec",
            str(tmp_path / "s.yaml"),
            "--no-baseline",
        ],
    )
    assert result.exit_code == 0, result.output
    loaded = Steering.load(tmp_path / "s.yaml")
    assert [i.kind for i in loaded.interventions] == ["feature", "ablation"]
    assert loaded.interventions[0].positions == "prompt" and loaded.interventions[0].values == [-3.0, -3.0]


def test_steer_command_errors_exit_2(model_dir, sae_dir, tmp_path):
    torch.save(torch.ones(64), tmp_path / "d.pt")
    bad = runner.invoke(
        app,
        [
            "steer",
            "hi",
            "--model",
            str(model_dir),
            "--actadd",
            str(tmp_path / "d.pt"),
            "--layer",
            "1",
            "--positions",
            "middle",
        ],
    )
    assert bad.exit_code == 2 and "error: unknown position keyword 'middle'" in bad.output and "fix:" in bad.output
    wide = runner.invoke(app, ["steer", "hi", "--model", str(model_dir), "--sae", str(sae_dir), "-F", "999"])
    assert wide.exit_code == 2 and "feature index 999 is out of range" in wide.output
    none = runner.invoke(app, ["steer", "hi", "--model", str(model_dir)])
    assert none.exit_code == 2 and "no steering was given" in none.output


def test_chat_command_streams_and_toggles(chat, model_dir, tmp_path):
    cond = Conditional(ActAdd(torch.ones(64) * 30, 2, 1.0), DirectionGate(torch.ones(64), 0), -1e9)
    spec_path = Steering([cond]).for_model(chat).save(tmp_path / "gated.json")
    result = runner.invoke(
        app,
        ["chat", "--spec", str(spec_path), "--model", str(model_dir), "--max-new-tokens", "4"],
        input="Hello there\n/off\nHow do I bake bread?\n/spec\n/reset\n/exit\n",
    )
    assert result.exit_code == 0, result.output
    # replies say the steering state they were generated under (the gate decides per prompt)
    assert result.output.count("model (gated steering)> ") == 1 and result.output.count("model (unsteered)> ") == 1
    assert "gate fired: steered" in result.output and "steering off" in result.output
    assert "conversation cleared" in result.output


def test_steer_convert_between_formats(chat, sae_dir, tmp_path):
    spec = Steering([FeatureSteer(str(sae_dir), [3], "add", 2.0), ActAdd(torch.ones(64), 2, 1.0)]).for_model(chat)
    spec.save(tmp_path / "s.json")
    result = runner.invoke(app, ["steer-convert", str(tmp_path / "s.json"), str(tmp_path / "s.pt")])
    assert result.exit_code == 0, result.output
    assert set(torch.load(tmp_path / "s.pt", weights_only=True)) == {"layers.1", "layers.2"}
    result = runner.invoke(app, ["steer-convert", str(tmp_path / "s.json"), str(tmp_path / "s.yaml")])
    assert result.exit_code == 0 and Steering.load(tmp_path / "s.yaml").id == spec.id
