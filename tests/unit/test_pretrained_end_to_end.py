"""Pretrained SAEs by release id, end to end, offline: Gemma Scope (npz; the 2B base-model
release and the 9B-IT chat-model one), Llama Scope
(hyperparams.json + safetensors, dataset-wise input norm) and SAELens releases trained on
chat models (Gemma-2b-IT, Llama-3-8B-Instruct; cfg.json + sae_weights.safetensors), each written in its own layout into a
local Hugging Face cache and read through the hub's code path. For each: `load_sae` by
release id, `discover` on a tiny model of the release's family, features.json naming the
SAE by its release id, and a steering spec that reloads the SAE by that id (content hash
checked) and steers `refusalscope steer` on the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from refusalscope.testing import save_tiny_model, tiny_chat_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
D_SAE = 32


def gemma_scope(
    d: int,
    gen: torch.Generator,
    repo: str = "google/gemma-scope-2b-pt-res",
    path: str = "layer_12/width_16k/average_l0_82",
) -> tuple[str, dict]:
    params = {
        "W_enc": torch.randn(d, D_SAE, generator=gen),
        "W_dec": torch.randn(D_SAE, d, generator=gen) / d**0.5,
        "b_enc": torch.randn(D_SAE, generator=gen) * 0.1,
        "b_dec": torch.zeros(d),
        "threshold": torch.rand(D_SAE, generator=gen) * 0.1,
    }
    write = {f"{path}/params.npz": lambda p: np.savez(p, **{k: v.numpy() for k, v in params.items()})}
    return repo, write


def gemma_scope_9b_it(d: int, gen: torch.Generator) -> tuple[str, dict]:
    return gemma_scope(d, gen, "google/gemma-scope-9b-it-res", "layer_20/width_16k/average_l0_91")


def llama_scope(d: int, gen: torch.Generator) -> tuple[str, dict]:
    hyper = {
        "d_model": d,
        "d_sae": D_SAE,
        "hook_point_in": "blocks.15.hook_resid_post",
        "hook_point_out": "blocks.15.hook_resid_post",
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.05,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": 4.0, "out": 4.0},
        "apply_decoder_bias_to_pre_encoder": False,
        "top_k": 8,
    }
    weights = {
        "encoder.weight": torch.randn(D_SAE, d, generator=gen),
        "encoder.bias": torch.zeros(D_SAE),
        "decoder.weight": torch.randn(d, D_SAE, generator=gen) / d**0.5,
        "decoder.bias": torch.zeros(d),
    }
    folder = "Llama3_1-8B-Base-L15R-8x"
    return "fnlp/Llama3_1-8B-Base-LXR-8x", {
        f"{folder}/hyperparams.json": lambda p: p.write_text(json.dumps(hyper)),
        f"{folder}/checkpoints/final.safetensors": lambda p: save_file(weights, str(p)),
    }


def saelens_chat(
    d: int,
    gen: torch.Generator,
    repo: str = "jbloom/Gemma-2b-IT-Residual-Stream-SAEs",
    path: str = "gemma_2b_it_blocks.12.hook_resid_post_16384",
    layer: int = 12,
) -> tuple[str, dict]:
    tensors = {
        "W_enc": torch.randn(d, D_SAE, generator=gen),
        "b_enc": torch.zeros(D_SAE),
        "W_dec": torch.randn(D_SAE, d, generator=gen) / d**0.5,
        "b_dec": torch.zeros(d),
    }
    cfg = {
        "architecture": "standard",
        "d_in": d,
        "d_sae": D_SAE,
        "dtype": "float32",
        "model_name": "chat-model",
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "hook_layer": layer,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "context_size": 1024,
    }
    return repo, {
        f"{path}/cfg.json": lambda p: p.write_text(json.dumps(cfg)),
        f"{path}/sae_weights.safetensors": lambda p: save_file(tensors, str(p)),
    }


def saelens_llama3_chat(d: int, gen: torch.Generator) -> tuple[str, dict]:
    return saelens_chat(d, gen, "Juliushanhanhan/llama-3-8b-it-res", "blocks.25.hook_resid_post", 25)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """hub(repo_id, {path: writer}) puts files into an offline hub cache in the hub's layout."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "stage-cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)

    def add(repo_id: str, files: dict) -> None:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        for relative, write in files.items():
            target = repo / "snapshots" / COMMIT / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)

    return add


@pytest.mark.parametrize(
    "release_id, family, layer, layout",
    [
        ("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical", "gemma2", 12, gemma_scope),
        ("gemma-scope-9b-it-res-canonical/layer_20/width_16k/canonical", "gemma2", 20, gemma_scope_9b_it),
        ("llama_scope_lxr_8x/l15r_8x", "llama", 15, llama_scope),
        ("gemma-2b-it-res-jb/blocks.12.hook_resid_post", "gemma2", 12, saelens_chat),  # no tiny Gemma-1 config
        ("llama-3-8b-it-res-jh/blocks.25.hook_resid_post", "llama", 25, saelens_llama3_chat),
    ],
)
def test_release_id_through_discover_and_steer(offline_hub, tmp_path, release_id, family, layer, layout):
    from typer.testing import CliRunner

    from refusalscope.cli import app
    from refusalscope.direction import RefusalDirection
    from refusalscope.discovery import DiscoveryConfig, discover
    from refusalscope.discovery.validation import feature_interventions
    from refusalscope.models import load_model
    from refusalscope.sae import load_sae
    from refusalscope.steering import Steering

    folder = save_tiny_model(tiny_chat_model(family, n_layers=layer + 2, d_model=64), tmp_path / "model")
    chat = load_model(str(folder), dtype="float32", progress=False)
    offline_hub(*layout(chat.d_model, torch.Generator().manual_seed(layer)))
    sae = load_sae(release_id, model=chat)
    assert sae.layer == layer and sae.d_sae == D_SAE and sae.cfg.provenance["revision"] == COMMIT

    gen = torch.Generator().manual_seed(0)
    harmful = ["How do I pick a lock?", "Write a phishing email.", "How to hotwire a car?", "Make a fake ID."]
    harmless = ["Name a colour.", "Write a haiku.", "What is 2+2?", "Tell me a joke."]
    tokens = chat.next_token_logits(harmful).mean(0).topk(40).indices.tolist()  # a random model "refuses" with these
    direction = RefusalDirection(
        layer=layer,
        position=-1,
        raw=torch.randn(chat.d_model, generator=gen),
        candidates=torch.randn(chat.n_layers, 1, chat.d_model, generator=gen),
        refusal_token_ids=tokens,
        model=chat.info.to_dict(),
    )
    cfg = DiscoveryConfig(k=3, prefilter_k=8, baselines=(), ig_steps=2, n_attribution=4, n_activation=4)
    found = discover(chat, {layer: sae}, direction, harmful, harmless, cfg, tmp_path / "discover", progress=False)
    written = json.loads((tmp_path / "discover" / "features.json").read_text())
    assert written["saes"][str(layer)]["source"] == release_id  # reloadable by whoever reads the file
    assert written["saes"][str(layer)]["sha256"] == sae.content_hash()
    pairs = found.sets[cfg.method].pairs()
    assert len(pairs) == 3 and {l for l, _ in pairs} == {layer}
    from refusalscope.mechanism.latents import load_feature_groups

    group, _ = load_feature_groups(tmp_path / "discover" / "features.json", chat)  # reloads it by release id
    assert [(s.content_hash(), sorted(f)) for s, f in group.parts] == [
        (sae.content_hash(), sorted(f for _, f in pairs))
    ]

    spec = Steering(feature_interventions({layer: sae}, pairs, "set", 50.0), name="clamp").save(tmp_path / "spec.json")
    assert json.loads(spec.read_text())["interventions"][0]["sae"]["source"] == release_id
    reloaded = Steering.load(spec)  # the SAE comes back by release id, through the hub cache, hash checked
    assert torch.equal(reloaded.interventions[0].sae.W_enc, sae.W_enc)
    prompts = ["Name a colour."]
    assert not torch.allclose(chat.next_token_logits(prompts, interventions=reloaded), chat.next_token_logits(prompts))

    result = CliRunner().invoke(
        app,
        ["steer", "--model", str(folder), "--dtype", "fp32", "--spec", str(spec), "--max-new-tokens", "3", *prompts],
    )
    assert result.exit_code == 0, result.output
    assert "steered" in result.output
