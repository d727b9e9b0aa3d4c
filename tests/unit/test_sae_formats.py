"""GemmaScope, EleutherAI sparsify, dictionary_learning and Llama Scope files, written here in
each project's own layout and tensor names, loaded, and compared with that project's own
forward pass (transcribed from its source in each `*_forward` below)."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from refusalscope import RefusalScopeError
from refusalscope.sae import load_sae

D_IN, D_SAE = 6, 20
GEN = torch.Generator().manual_seed(11)
X = torch.randn(9, D_IN, generator=GEN) * 3


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, generator=GEN) * scale


def topk_scatter(pre, k):
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def assert_some_latents_fire(acts):
    assert 0 < (acts != 0).float().mean() < 1


# ----------------------------------------------------------------------------- GemmaScope
def gemmascope_params():
    return {
        "W_enc": rnd(D_IN, D_SAE),
        "W_dec": rnd(D_SAE, D_IN),
        "b_enc": rnd(D_SAE, scale=0.5),
        "b_dec": rnd(D_IN, scale=0.5),
        "threshold": rnd(D_SAE).abs(),
    }


def gemmascope_forward(p, x):
    """Gemma Scope's reference JumpReLU: no b_dec on the input."""
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * torch.relu(pre)
    return acts, acts @ p["W_dec"] + p["b_dec"]


def test_gemmascope_npz_file_and_folder(tmp_path):
    params = gemmascope_params()
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in params.items()})
    for source in (folder / "params.npz", folder):
        sae = load_sae(source)
        assert (sae.cfg.architecture, sae.cfg.apply_b_dec_to_input) == ("jumprelu", False)
        assert (sae.cfg.layer, sae.cfg.site, sae.cfg.model_name) == (
            12,
            "resid_post",
            "google/gemma-2-2b",
        )
        assert sae.cfg.provenance["format"] == "gemmascope"
        acts, recon = gemmascope_forward(params, X)
        assert_some_latents_fire(acts)
        torch.testing.assert_close(sae.encode(X), acts)
        torch.testing.assert_close(sae(X)[0], recon)


@pytest.mark.parametrize("damage", ["truncate", "not_a_zip"])
def test_gemmascope_corrupt_npz_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "params.npz"
    np.savez(path, **{k: v.numpy() for k, v in gemmascope_params().items()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"PK\x03\x04 nonsense")
    with pytest.raises(RefusalScopeError, match="is not a complete .npz file"):
        load_sae(path)


def test_gemmascope_npz_missing_a_tensor(tmp_path):
    params = gemmascope_params()
    del params["threshold"]
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in params.items()})
    with pytest.raises(RefusalScopeError, match="has no tensor 'threshold'"):
        load_sae(tmp_path / "params.npz")


# ----------------------------------------------------------------------------- EleutherAI sparsify
def write_sparsify(folder, k=4, **cfg):
    folder.mkdir(parents=True)
    config = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
        **cfg,
    }
    (folder / "cfg.json").write_text(json.dumps(config))
    tensors = {
        "encoder.weight": rnd(D_SAE, D_IN),
        "encoder.bias": rnd(D_SAE, scale=0.5),
        "W_dec": rnd(D_SAE, D_IN),
        "b_dec": rnd(D_IN, scale=0.5),
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    return tensors


def sparsify_forward(t, x, k):
    """sparsify: ReLU(nn.Linear(x - b_dec)), top-k, then the selected W_dec rows + b_dec."""
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    values, indices = pre.topk(k, dim=-1)
    recon = (values[..., None] * t["W_dec"][indices]).sum(-2) + t["b_dec"]
    return torch.zeros_like(pre).scatter(-1, indices, values), recon


def test_sparsify_hookpoint_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    tensors = write_sparsify(tmp_path / "run" / "layers.12")
    write_sparsify(tmp_path / "run" / "layers.3")
    sae = load_sae(tmp_path / "run" / "layers.12")
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.layer, sae.cfg.site) == (
        "topk",
        4,
        12,
        "resid_post",
    )
    assert sae.cfg.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    acts, recon = sparsify_forward(tensors, X, 4)
    torch.testing.assert_close(sae.encode(X), acts)
    torch.testing.assert_close(sae(X)[0], recon)
    with pytest.raises(RefusalScopeError, match=r"holds several SAEs \(layers.12, layers.3\)") as err:
        load_sae(tmp_path / "run")
    assert "layers.12" in err.value.fix


@pytest.mark.parametrize(
    "change,message",
    [
        ({"transcode": True}, "transcoder"),
        ({"activation": "groupmax"}, "groupmax"),
        ({"skip_connection": True}, "skip connection"),
    ],
)
def test_sparsify_variants_refusalscope_cannot_run(tmp_path, change, message):
    write_sparsify(tmp_path / "layers.1", **change)
    with pytest.raises(RefusalScopeError, match=message):
        load_sae(tmp_path / "layers.1")


# ----------------------------------------------------------------------------- dictionary_learning
def write_dictionary_learning(folder, dict_class, state, **trainer):
    folder.mkdir(parents=True)
    config = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "layer": 9,
            "lm_name": "Qwen/Qwen2.5-7B-Instruct",
            "submodule_name": "resid_post_layer_9",
            **trainer,
        },
        "buffer": {"ctx_len": 1024},
    }
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(state, folder / "ae.pt")
    return folder


def linear_state(**extra):
    return {
        "encoder.weight": rnd(D_SAE, D_IN),
        "encoder.bias": rnd(D_SAE, scale=0.5),
        "decoder.weight": rnd(D_IN, D_SAE),
        **extra,
    }


def test_dictionary_learning_autoencoder(tmp_path):
    state = linear_state(bias=rnd(D_IN, scale=0.5))
    sae = load_sae(write_dictionary_learning(tmp_path / "ae", "AutoEncoder", state))
    f = torch.relu((X - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    assert (sae.cfg.architecture, sae.cfg.layer, sae.cfg.model_name) == (
        "standard",
        9,
        "Qwen/Qwen2.5-7B-Instruct",
    )
    torch.testing.assert_close(sae.encode(X), f)
    torch.testing.assert_close(sae(X)[0], f @ state["decoder.weight"].T + state["bias"])


@pytest.mark.parametrize("dict_class", ["AutoEncoderTopK", "BatchTopKSAE"])
def test_dictionary_learning_topk_and_batchtopk(tmp_path, dict_class):
    state = linear_state(b_dec=rnd(D_IN, scale=0.5), k=torch.tensor(5, dtype=torch.int), threshold=torch.tensor(0.8))
    sae = load_sae(write_dictionary_learning(tmp_path / "ae", dict_class, state))
    post = torch.relu((X - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    # AutoEncoderTopK.encode keeps the top k; BatchTopKSAE.encode (use_threshold=True) the ones above threshold
    f = topk_scatter(post, 5) if dict_class == "AutoEncoderTopK" else post * (post > 0.8)
    assert_some_latents_fire(f)
    assert (sae.cfg.architecture, sae.cfg.k) == (
        {"AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk"}[dict_class],
        5,
    )
    torch.testing.assert_close(sae.encode(X), f)
    torch.testing.assert_close(sae(X)[0], f @ state["decoder.weight"].T + state["b_dec"])


def test_dictionary_learning_jumprelu(tmp_path):
    state = {
        "W_enc": rnd(D_IN, D_SAE),
        "b_enc": rnd(D_SAE, scale=0.5),
        "W_dec": rnd(D_SAE, D_IN),
        "b_dec": rnd(D_IN),
        "threshold": rnd(D_SAE).abs(),
    }
    sae = load_sae(write_dictionary_learning(tmp_path / "ae", "JumpReluAutoEncoder", state))
    pre = X @ state["W_enc"] + state["b_enc"]  # apply_b_dec_to_input is False in this class
    f = torch.relu(pre * (pre > state["threshold"]))
    torch.testing.assert_close(sae.encode(X), f)
    torch.testing.assert_close(sae(X)[0], f @ state["W_dec"] + state["b_dec"])


class _Exploit:
    """Unpickling this would create a file: the proof that a full unpickle happened."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_dictionary_learning_pt_is_never_fully_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    folder = write_dictionary_learning(tmp_path / "ae", "AutoEncoder", {"encoder.weight": _Exploit(marker)})
    with pytest.raises(RefusalScopeError, match=r"weights_only=True") as err:
        load_sae(folder)
    assert not marker.exists()
    assert "never fully unpickles" in err.value.fix


def test_dictionary_learning_unsupported_class(tmp_path):
    folder = write_dictionary_learning(tmp_path / "ae", "GatedAutoEncoder", linear_state())
    with pytest.raises(RefusalScopeError, match="class 'GatedAutoEncoder' is not supported"):
        load_sae(folder)


# ----------------------------------------------------------------------------- Llama Scope (lm_saes)
def write_llama_scope(folder, **hp):
    (folder / "checkpoints").mkdir(parents=True)
    hyper = {
        "d_model": D_IN,
        "d_sae": D_SAE,
        "hook_point_in": "blocks.15.hook_resid_post",
        "hook_point_out": "blocks.15.hook_resid_post",
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.4,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": 7.5, "out": 7.5},
        "sparsity_include_decoder_norm": True,
        "top_k": 5,
        **hp,
    }
    (folder / "hyperparams.json").write_text(json.dumps(hyper))
    tensors = {
        "encoder.weight": rnd(D_SAE, D_IN),
        "encoder.bias": rnd(D_SAE, scale=0.5),
        "decoder.weight": rnd(D_IN, D_SAE) * torch.linspace(0.3, 2.0, D_SAE),  # non-unit columns
        "decoder.bias": rnd(D_IN, scale=0.5),
    }
    save_file(tensors, str(folder / "checkpoints" / "final.safetensors"))
    return hyper, tensors


def lm_saes_forward(hp, t, x):
    """lm_saes in its training space: inputs scaled to norm √d_model, sparsity judged on the
    activation times its decoder column norm, reconstructions compared with scaled labels.
    The JumpReLU threshold applies to activation × norm / s_out (the space lm_saes serves in)."""
    s_in = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["in"]
    s_out = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["out"]
    pre = (x * s_in) @ t["encoder.weight"].T + t["encoder.bias"]
    norms = t["decoder.weight"].norm(dim=0) if hp["sparsity_include_decoder_norm"] else torch.ones(D_SAE)
    served = pre * norms / s_out
    on = served > hp["jump_relu_threshold"]
    return served * on, ((pre * on) @ t["decoder.weight"].T + t["decoder.bias"]) / s_out


@pytest.mark.parametrize("include_norm", [True, False])
def test_llama_scope_folder_matches_lm_saes(tmp_path, include_norm):
    hp, tensors = write_llama_scope(tmp_path / "Llama3_1-8B-Base-L15R-8x", sparsity_include_decoder_norm=include_norm)
    sae = load_sae(tmp_path / "Llama3_1-8B-Base-L15R-8x")
    assert (sae.cfg.architecture, sae.cfg.layer, sae.cfg.site, sae.cfg.apply_b_dec_to_input) == (
        "jumprelu",
        15,
        "resid_post",
        False,
    )
    acts, recon = lm_saes_forward(hp, tensors, X)
    assert_some_latents_fire(acts)
    torch.testing.assert_close(sae.encode(X), acts)
    torch.testing.assert_close(sae(X)[0], recon)


def test_llama_scope_agrees_with_saelens_conversion_when_decoder_columns_are_unit(tmp_path):
    """SAELens's llama_scope loader ignores decoder norms (threshold × s, W_enc × s, W_dec / s);
    with unit-norm columns both readings give the same reconstruction."""
    hp, tensors = write_llama_scope(tmp_path / "sae")
    tensors["decoder.weight"] = tensors["decoder.weight"] / tensors["decoder.weight"].norm(dim=0)
    save_file(tensors, str(tmp_path / "sae" / "checkpoints" / "final.safetensors"))
    s = math.sqrt(D_IN) / 7.5
    pre = X @ (tensors["encoder.weight"].T * s) + tensors["encoder.bias"]
    f = torch.relu(pre) * (pre > hp["jump_relu_threshold"] * s)
    saelens_recon = f @ (tensors["decoder.weight"].T / s) + tensors["decoder.bias"] / s
    torch.testing.assert_close(load_sae(tmp_path / "sae")(X)[0], saelens_recon)


def test_llama_scope_topk_checkpoint_with_a_threshold_is_served_as_jumprelu(tmp_path):
    write_llama_scope(tmp_path / "a", act_fn="topk", jump_relu_threshold=0.3)
    assert load_sae(tmp_path / "a").cfg.architecture == "jumprelu"
    write_llama_scope(tmp_path / "b", act_fn="topk", jump_relu_threshold=0.0)
    sae = load_sae(tmp_path / "b")
    assert (sae.cfg.architecture, sae.cfg.k) == ("topk", 5)


def test_llama_scope_errors(tmp_path):
    write_llama_scope(tmp_path / "a", norm_activation="token-wise")
    with pytest.raises(RefusalScopeError, match="norm_activation 'token-wise' rescales each input"):
        load_sae(tmp_path / "a")
    write_llama_scope(tmp_path / "b", hook_point_out="blocks.15.hook_mlp_out")
    with pytest.raises(RefusalScopeError, match="is a transcoder"):
        load_sae(tmp_path / "b")
    write_llama_scope(tmp_path / "c", d_sae=D_SAE * 2)
    with pytest.raises(RefusalScopeError, match=r"encoder.weight has shape \[20, 6\]"):
        load_sae(tmp_path / "c")
    (tmp_path / "c" / "checkpoints" / "final.safetensors").unlink()
    with pytest.raises(RefusalScopeError, match="has no weights file"):
        load_sae(tmp_path / "c")
