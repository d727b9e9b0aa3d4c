"""Pretrained releases, resolved through the real Hugging Face hub code path
(`hf_hub_download`) against a local cache built here in the hub's own layout
(models--org--name/{refs/main, snapshots/<commit>/...}), offline."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from refusalscope import RefusalScopeError
from refusalscope.sae import load_sae
from refusalscope.sae.pretrained import known_releases, load_pretrained, registry, release_ids

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
X = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A function that puts files into an offline hub cache: hub(repo_id, {path: writer})."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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


def test_registry_has_the_promised_releases():
    assert {"gemma-scope-2b-pt-res-canonical", "llama_scope_lxr_8x", "gemma-2b-it-res-jb"} <= set(known_releases())
    for release in registry().values():
        assert release.format in (
            "saelens",
            "gemmascope",
            "llama_scope",
            "sparsify",
            "dictionary_learning",
        )
        assert "/" in release.repo_id and release.files and release.saes
    assert len(release_ids("gemma-scope-2b-pt-res-canonical")) == 52  # 26 layers x {16k, 65k}
    gemma = registry()["gemma-scope-2b-pt-res-canonical"].saes["layer_12/width_16k/canonical"]
    assert gemma == {"path": "layer_12/width_16k/average_l0_82", "layer": 12}
    llama = registry()["llama_scope_lxr_8x"].saes["l15r_8x"]
    assert llama == {"path": "Llama3_1-8B-Base-L15R-8x", "layer": 15}


def test_gemmascope_release_through_the_hub_cache(hub):
    gen = torch.Generator().manual_seed(1)
    params = {
        "W_enc": torch.randn(8, 16, generator=gen),
        "W_dec": torch.randn(16, 8, generator=gen),
        "b_enc": torch.randn(16, generator=gen),
        "b_dec": torch.randn(8, generator=gen),
        "threshold": torch.rand(16, generator=gen),
    }
    hub(
        "google/gemma-scope-2b-pt-res",
        {
            "layer_12/width_16k/average_l0_82/params.npz": lambda p: np.savez(
                p, **{k: v.numpy() for k, v in params.items()}
            )
        },
    )
    sae = load_sae("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")
    assert (sae.cfg.model_name, sae.cfg.layer, sae.cfg.site, sae.cfg.architecture) == (
        "google/gemma-2-2b",
        12,
        "resid_post",
        "jumprelu",
    )
    prov = sae.cfg.provenance
    assert (prov["release"], prov["repo_id"], prov["revision"]) == (
        "gemma-scope-2b-pt-res-canonical",
        "google/gemma-scope-2b-pt-res",
        COMMIT,
    )
    pre = X @ params["W_enc"] + params["b_enc"]
    torch.testing.assert_close(sae.encode(X), torch.relu(pre) * (pre > params["threshold"]))
    again = load_pretrained("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical", dtype="bfloat16")
    assert again.W_enc.dtype == torch.bfloat16


def test_llama_scope_release_through_the_hub_cache(hub):
    gen = torch.Generator().manual_seed(2)
    hyper = {
        "d_model": 8,
        "d_sae": 16,
        "hook_point_in": "blocks.15.hook_resid_post",
        "hook_point_out": "blocks.15.hook_resid_post",
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.2,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": 3.0, "out": 3.0},
        "apply_decoder_bias_to_pre_encoder": False,
        "top_k": 4,
    }
    weights = {
        "encoder.weight": torch.randn(16, 8, generator=gen),
        "encoder.bias": torch.randn(16, generator=gen),
        "decoder.weight": torch.randn(8, 16, generator=gen),
        "decoder.bias": torch.randn(8, generator=gen),
    }
    folder = "Llama3_1-8B-Base-L15R-8x"
    hub(
        "fnlp/Llama3_1-8B-Base-LXR-8x",
        {
            f"{folder}/hyperparams.json": lambda p: p.write_text(json.dumps(hyper)),
            f"{folder}/checkpoints/final.safetensors": lambda p: save_file(weights, str(p)),
        },
    )
    sae = load_pretrained("llama_scope_lxr_8x", "l15r_8x")
    assert (sae.cfg.model_name, sae.cfg.layer, sae.cfg.d_sae) == ("meta-llama/Llama-3.1-8B", 15, 16)
    assert sae.cfg.provenance["revision"] == COMMIT and sae.cfg.provenance["path"] == folder
    assert torch.equal(load_sae("llama_scope_lxr_8x/l15r_8x").W_dec, sae.W_dec)


def test_saelens_release_through_the_hub_cache(hub):
    gen = torch.Generator().manual_seed(3)
    tensors = {
        "W_enc": torch.randn(8, 16, generator=gen),
        "b_enc": torch.randn(16, generator=gen),
        "W_dec": torch.randn(16, 8, generator=gen),
        "b_dec": torch.randn(8, generator=gen),
    }
    cfg = {
        "architecture": "standard",
        "d_in": 8,
        "d_sae": 16,
        "dtype": "float32",
        "model_name": "gemma-2b-it",
        "hook_name": "blocks.12.hook_resid_post",
        "hook_layer": 12,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "context_size": 1024,
    }
    path = "gemma_2b_it_blocks.12.hook_resid_post_16384"
    hub(
        "jbloom/Gemma-2b-IT-Residual-Stream-SAEs",
        {
            f"{path}/cfg.json": lambda p: p.write_text(json.dumps(cfg)),
            f"{path}/sae_weights.safetensors": lambda p: save_file(tensors, str(p)),
        },
    )
    sae = load_sae("gemma-2b-it-res-jb/blocks.12.hook_resid_post")
    assert (sae.cfg.model_name, sae.cfg.layer) == ("google/gemma-2b-it", 12)
    torch.testing.assert_close(sae.encode(X), torch.relu((X - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]))


def test_dictionary_learning_release_through_the_hub_cache(hub):
    gen = torch.Generator().manual_seed(4)
    state = {
        "encoder.weight": torch.randn(16, 8, generator=gen),
        "encoder.bias": torch.randn(16, generator=gen),
        "decoder.weight": torch.randn(8, 16, generator=gen),
        "b_dec": torch.randn(8, generator=gen),
        "k": torch.tensor(3, dtype=torch.int),
        "threshold": torch.tensor(0.5),
    }
    config = {
        "trainer": {
            "dict_class": "BatchTopKSAE",
            "activation_dim": 8,
            "dict_size": 16,
            "k": 3,
            "layer": 15,
            "lm_name": "Qwen/Qwen2.5-7B-Instruct",
        }
    }
    path = "resid_post_layer_15/trainer_1"
    hub(
        "andyrdt/saes-qwen2.5-7b-instruct",
        {
            f"{path}/config.json": lambda p: p.write_text(json.dumps(config)),
            f"{path}/ae.pt": lambda p: torch.save(state, p),
        },
    )
    sae = load_sae("qwen2.5-7b-instruct-andyrdt/resid_post_layer_15_trainer_1")
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.layer) == ("batchtopk", 3, 15)


def test_release_not_in_the_cache_offline(hub):
    with pytest.raises(RefusalScopeError) as err:
        load_sae("llama_scope_lxr_8x/l3r_8x")
    assert "Llama3_1-8B-Base-L3R-8x/hyperparams.json is not in the local Hugging Face cache" in err.value.problem
    assert "connect to the internet once" in err.value.fix


def test_unknown_release_or_id_lists_the_known_ones():
    with pytest.raises(RefusalScopeError) as err:
        load_pretrained("gemma-scope-2b-pt-res-canonicl", "layer_12/width_16k/canonical")
    assert "unknown pretrained SAE release 'gemma-scope-2b-pt-res-canonicl'" in err.value.problem
    assert "did you mean 'gemma-scope-2b-pt-res-canonical'" in err.value.fix and "llama_scope_lxr_8x" in err.value.fix
    with pytest.raises(RefusalScopeError) as err:
        load_sae("llama_scope_lxr_8x/l15r_32x")
    assert "release 'llama_scope_lxr_8x' has no SAE 'l15r_32x'" in err.value.problem
    assert "l15r_8x" in err.value.fix and "l0r_8x" in err.value.fix
    with pytest.raises(RefusalScopeError, match="names a release but not an SAE in it"):
        load_sae("llama_scope_lxr_8x")
    with pytest.raises(
        RefusalScopeError,
        match="neither an existing SAE file or folder nor a known pretrained release",
    ):
        load_sae("no-such-release/layer_1")


def test_pretrained_sae_is_checked_against_the_model(hub, tiny_llama):
    params = {
        "W_enc": np.zeros((8, 16), np.float32),
        "W_dec": np.zeros((16, 8), np.float32),
        "b_enc": np.zeros(16, np.float32),
        "b_dec": np.zeros(8, np.float32),
        "threshold": np.zeros(16, np.float32),
    }
    hub(
        "google/gemma-scope-2b-pt-res",
        {"layer_3/width_16k/average_l0_59/params.npz": lambda p: np.savez(p, **params)},
    )
    with pytest.raises(
        RefusalScopeError,
        match=f"SAE d_in=8 does not match the model's d_model={tiny_llama.d_model}",
    ):
        load_sae("gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonical", model=tiny_llama)
