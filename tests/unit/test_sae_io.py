"""save_sae / load_sae: SAELens's layout both ways (v3–v6 cfgs), and every error a user can hit.

The cfg.json fixtures mirror what SAELens writes: the v6 ones are byte-for-byte what
sae-lens 6.54 `save_model` produced for d_in=4, d_sae=8 (recorded by hand, since sae-lens is
not a dependency); the v5 and v3 ones carry the key sets of published releases. Expected
outputs come from `saelens_forward`, an independent transcription of SAELens's forward pass.
"""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from refusalscope import RefusalScopeError
from refusalscope.sae import SAE, SAEConfig, load_sae, save_sae

D_IN, D_SAE = 4, 8
V6_META = {
    "sae_lens_version": "6.54.12",
    "sae_lens_training_version": "6.54.12",
    "model_name": "gpt2",
    "hook_name": "blocks.3.hook_resid_post",
}
V6_COMMON = {
    "d_in": 4,
    "d_sae": 8,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": V6_META,
}
V6_STANDARD = {**V6_COMMON, "architecture": "standard"}
V6_JUMPRELU = {**V6_COMMON, "architecture": "jumprelu"}
V6_TOPK = {**V6_COMMON, "k": 3, "rescale_acts_by_decoder_norm": False, "architecture": "topk"}
V5_COMMON = {
    "d_in": 4,
    "d_sae": 8,
    "dtype": "float32",
    "device": "cpu",
    "model_name": "gemma-2-2b",
    "hook_name": "blocks.12.hook_resid_post",
    "hook_layer": 12,
    "hook_head_index": None,
    "apply_b_dec_to_input": True,
    "finetuning_scaling_factor": False,
    "sae_lens_training_version": "5.5.2",
    "prepend_bos": True,
    "dataset_path": "monology/pile-uncopyrighted",
    "dataset_trust_remote_code": True,
    "context_size": 1024,
    "normalize_activations": "none",
    "neuronpedia_id": None,
    "model_from_pretrained_kwargs": {},
    "seqpos_slice": [None],
}
V5_STANDARD = {
    **V5_COMMON,
    "architecture": "standard",
    "activation_fn_str": "relu",
    "activation_fn_kwargs": {},
}
V5_JUMPRELU = {
    **V5_COMMON,
    "architecture": "jumprelu",
    "activation_fn_str": "relu",
    "apply_b_dec_to_input": False,
}
# v5 spelled TopK as a standard SAE with a topk activation function
V5_TOPK = {
    **V5_COMMON,
    "architecture": "standard",
    "activation_fn_str": "topk",
    "activation_fn_kwargs": {"k": 3},
}
# v3 (gpt2-small-res-jb era): no architecture, hook_point names, torch dtype strings
V3_STANDARD = {
    "model_name": "gpt2-small",
    "hook_point": "blocks.8.hook_resid_pre",
    "hook_point_layer": 8,
    "hook_point_head_index": None,
    "dataset_path": "Skylion007/openwebtext",
    "is_dataset_tokenized": False,
    "context_size": 128,
    "d_in": 4,
    "device": "mps",
    "seed": 42,
    "dtype": "torch.float32",
    "b_dec_init_method": "geometric_median",
    "expansion_factor": 2,
    "l1_coefficient": 8e-05,
    "lr": 0.0004,
    "train_batch_size": 4096,
    "use_ghost_grads": False,
    "d_sae": 8,
    "run_name": "8-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
}


def random_tensors(arch: str, seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen),
        "b_enc": torch.randn(d_sae, generator=gen) * 0.3,
        "W_dec": torch.randn(d_sae, d_in, generator=gen),
        "b_dec": torch.randn(d_in, generator=gen) * 0.3,
    }
    if arch in ("jumprelu", "batchtopk"):
        tensors["threshold"] = torch.rand(d_sae, generator=gen) * 0.5
    return tensors


def saelens_forward(arch, t, x, *, apply_b_dec=True, k=None, rescale=False):
    """SAELens's inference forward pass (saes/{standard,jumprelu,topk}_sae.py), transcribed."""
    sae_in = x - t["b_dec"] * apply_b_dec
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    norms = t["W_dec"].norm(dim=-1)
    if rescale:
        pre = pre * norms
    if arch == "standard":
        acts = torch.relu(pre)
    elif arch == "jumprelu":
        acts = torch.relu(pre) * (pre > t["threshold"])
    else:
        values, indices = torch.topk(pre, k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    decoded = (acts / norms if rescale else acts) @ t["W_dec"] + t["b_dec"]
    return acts, decoded


def write_saelens(folder, cfg, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


X = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(7))


def random_sae(arch: str, seed: int = 0, **cfg) -> SAE:
    k = 3 if arch in ("topk", "batchtopk") else None
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=k, **cfg))
    with torch.no_grad():
        for name, tensor in random_tensors(arch, seed).items():
            getattr(sae, name).copy_(tensor)
    return sae


# ----------------------------------------------------------------------------- refusalscope -> disk -> refusalscope
@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk", "batchtopk"])
def test_round_trip_keeps_every_tensor_and_field(tmp_path, arch):
    sae = random_sae(
        arch,
        layer=11,
        site="resid_post",
        model_name="Qwen/Qwen2.5-0.5B-Instruct",
        model_sha256="ab" * 32,
        provenance={"seed": 3, "tokens": 1000},
    )
    folder = save_sae(sae, tmp_path / "sae")
    assert folder == tmp_path / "sae"
    back = load_sae(folder)
    for name, tensor in sae.state_tensors().items():
        assert torch.equal(back.state_tensors()[name], tensor), name
    assert back.cfg.provenance == {**sae.cfg.provenance, "source": str(folder)}
    back.cfg.provenance = sae.cfg.provenance
    assert back.cfg == sae.cfg
    assert torch.equal(back.encode(X), sae.encode(X))


def test_round_trip_in_bfloat16_and_dtype_override(tmp_path):
    sae = random_sae("jumprelu", dtype="bfloat16")
    save_sae(sae, tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["dtype"] == "bfloat16"
    back = load_sae(tmp_path / "sae")
    assert back.W_enc.dtype == torch.bfloat16 and torch.equal(back.W_enc, sae.W_enc)
    wide = load_sae(tmp_path / "sae", dtype=torch.float32)
    assert wide.W_enc.dtype == torch.float32 and wide.cfg.dtype == "float32"
    assert load_sae(tmp_path / "sae", dtype="fp16").W_dec.dtype == torch.float16


def test_input_scale_is_folded_on_save_without_touching_the_sae(tmp_path):
    sae = random_sae("batchtopk", input_scale=4.0)
    save_sae(sae, tmp_path / "sae")
    assert sae.cfg.input_scale == 4.0  # the caller's SAE is unchanged
    back = load_sae(tmp_path / "sae")
    assert back.cfg.input_scale == 1.0
    torch.testing.assert_close(back.encode(X), sae.encode(X))
    torch.testing.assert_close(back(X)[0], sae(X)[0])
    meta = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]["refusalscope"]
    assert meta["folded_input_scale"] == 4.0


def test_written_files_follow_the_saelens_v6_layout(tmp_path):
    from safetensors import safe_open

    save_sae(random_sae("topk", layer=3, model_name="gpt2"), tmp_path / "topk")
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    assert {k: cfg[k] for k in V6_TOPK if k != "metadata"} == {k: v for k, v in V6_TOPK.items() if k != "metadata"}
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0"
    assert (cfg["metadata"]["model_name"], cfg["metadata"]["hook_name"]) == (
        "gpt2",
        "blocks.3.hook_resid_post",
    )
    with safe_open(str(tmp_path / "topk" / "sae_weights.safetensors"), "pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert shapes == {"W_enc": [4, 8], "b_enc": [8], "W_dec": [8, 4], "b_dec": [4]}

    save_sae(random_sae("batchtopk"), tmp_path / "btk")
    cfg = json.loads((tmp_path / "btk" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and "k" not in cfg  # SAELens serves BatchTopK as JumpReLU
    assert cfg["metadata"]["refusalscope"]["architecture"] == "batchtopk"
    with safe_open(str(tmp_path / "btk" / "sae_weights.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]


def test_save_is_atomic_and_never_wipes_a_foreign_folder(tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_sae(random_sae("standard"), tmp_path / "sae")
    assert os.listdir(tmp_path) == []  # neither the folder nor a scratch folder is left
    monkeypatch.undo()

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(RefusalScopeError, match="exists and is not an SAE folder"):
        save_sae(random_sae("standard"), tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"

    save_sae(random_sae("standard", seed=1), tmp_path / "sae")
    save_sae(random_sae("standard", seed=2), tmp_path / "sae")  # an SAE folder is replaced
    assert torch.equal(load_sae(tmp_path / "sae").W_enc, random_sae("standard", seed=2).W_enc)


# ----------------------------------------------------------------------------- SAELens files -> refusalscope
@pytest.mark.parametrize(
    "cfg,arch,k,apply_b_dec,layer,model",
    [
        (V6_STANDARD, "standard", None, True, 3, "gpt2"),
        (V6_JUMPRELU, "jumprelu", None, True, 3, "gpt2"),
        (V6_TOPK, "topk", 3, True, 3, "gpt2"),
        (V5_STANDARD, "standard", None, True, 12, "gemma-2-2b"),
        (V5_JUMPRELU, "jumprelu", None, False, 12, "gemma-2-2b"),
        (V5_TOPK, "topk", 3, True, 12, "gemma-2-2b"),
        (
            V3_STANDARD,
            "standard",
            None,
            True,
            7,
            "gpt2-small",
        ),  # resid_pre of block 8 = resid_post of 7
    ],
)
def test_saelens_folders_of_every_generation_load_with_saelens_maths(tmp_path, cfg, arch, k, apply_b_dec, layer, model):
    tensors = random_tensors(arch, seed=5)
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, tensors))
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.apply_b_dec_to_input) == (arch, k, apply_b_dec)
    assert (sae.cfg.layer, sae.cfg.site, sae.cfg.model_name) == (layer, "resid_post", model)
    assert sae.cfg.provenance["source"] == str(tmp_path / "sae")
    acts, decoded = saelens_forward(arch, tensors, X, apply_b_dec=apply_b_dec, k=k)
    assert 0 < (acts != 0).float().mean() < 1
    torch.testing.assert_close(sae.encode(X), acts)
    torch.testing.assert_close(sae(X)[0], decoded)


def test_topk_rescaled_by_decoder_norm_gives_saelens_reconstructions(tmp_path):
    tensors = random_tensors("topk", seed=6)
    tensors["W_dec"] = tensors["W_dec"] * torch.linspace(0.2, 3.0, D_SAE)[:, None]  # far from unit norm
    cfg = {**V6_TOPK, "rescale_acts_by_decoder_norm": True}
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, tensors))
    acts, decoded = saelens_forward("topk", tensors, X, k=3, rescale=True)
    torch.testing.assert_close(sae(X)[0], decoded)
    torch.testing.assert_close(sae.encode(X), acts)  # SAELens's codes are the rescaled ones
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))


def test_older_files_with_log_threshold_and_a_unit_scaling_factor(tmp_path):
    tensors = random_tensors("jumprelu", seed=8)
    stored = {
        **tensors,
        "log_threshold": tensors["threshold"].log(),
        "scaling_factor": torch.ones(D_SAE),
    }
    del stored["threshold"]
    sae = load_sae(write_saelens(tmp_path / "sae", V5_JUMPRELU, stored))
    torch.testing.assert_close(sae.threshold.detach(), tensors["threshold"])
    stored["scaling_factor"] = torch.full((D_SAE,), 2.0)
    write_saelens(tmp_path / "scaled", {**V5_JUMPRELU, "finetuning_scaling_factor": True}, stored)
    with pytest.raises(RefusalScopeError, match="fine-tuning scaling_factor"):
        load_sae(tmp_path / "scaled")


def test_expected_average_norm_scaling(tmp_path):
    tensors = random_tensors("standard", seed=9)
    cfg = {
        **V6_STANDARD,
        "normalize_activations": "expected_average_only_in",
        "norm_scaling_factor": 0.25,
    }
    sae = load_sae(write_saelens(tmp_path / "known", cfg, tensors))
    assert sae.cfg.input_scale == 0.25
    acts, decoded = saelens_forward("standard", tensors, X * 0.25)
    torch.testing.assert_close(sae.encode(X), acts)
    torch.testing.assert_close(sae(X)[0], decoded / 0.25)
    del cfg["norm_scaling_factor"]
    with pytest.warns(UserWarning, match="does not record"):
        assert load_sae(write_saelens(tmp_path / "unknown", cfg, tensors)).cfg.input_scale == 1.0


def test_a_file_path_inside_the_folder_is_accepted(tmp_path):
    folder = write_saelens(tmp_path / "sae", V6_STANDARD, random_tensors("standard"))
    assert torch.equal(load_sae(folder / "sae_weights.safetensors").W_enc, load_sae(str(folder / "cfg.json")).W_enc)


# ----------------------------------------------------------------------------- errors
@pytest.fixture
def good(tmp_path):
    return write_saelens(tmp_path / "sae", V6_JUMPRELU, random_tensors("jumprelu"))


def test_error_when_d_in_does_not_match_the_model(good, tiny_llama):
    with pytest.raises(RefusalScopeError) as err:
        load_sae(good, model=tiny_llama)
    assert f"SAE d_in=4 does not match the model's d_model={tiny_llama.d_model}" in err.value.problem
    fits = SAE(SAEConfig(d_in=tiny_llama.d_model, d_sae=8, architecture="standard", layer=1))
    save_sae(fits, good.parent / "fits")
    assert load_sae(good.parent / "fits", model=tiny_llama).d_in == tiny_llama.d_model


def test_error_for_a_missing_tensor(tmp_path):
    tensors = random_tensors("jumprelu")
    del tensors["threshold"]
    with pytest.raises(RefusalScopeError) as err:
        load_sae(write_saelens(tmp_path / "sae", V6_JUMPRELU, tensors))
    assert "has no tensor 'threshold'" in err.value.problem and "W_dec" in err.value.problem


def test_error_for_tensors_of_another_architecture(tmp_path):
    tensors = {**random_tensors("standard"), "b_gate": torch.zeros(D_SAE)}
    with pytest.raises(RefusalScopeError, match="tensors a standard SAE does not have: b_gate"):
        load_sae(write_saelens(tmp_path / "sae", V6_STANDARD, tensors))


def test_error_for_an_unknown_architecture(tmp_path):
    with pytest.raises(RefusalScopeError) as err:
        load_sae(
            write_saelens(
                tmp_path / "sae",
                {**V6_STANDARD, "architecture": "gated"},
                random_tensors("standard"),
            )
        )
    assert "unknown SAE architecture 'gated'" in err.value.problem and "cfg.json" in err.value.problem
    assert "jumprelu" in err.value.fix


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_error_for_a_corrupt_safetensors_file(good, damage):
    weights = good / "sae_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) - 17], "garbage": b"\x00" * 64, "empty": b""}[damage])
    with pytest.raises(RefusalScopeError) as err:
        load_sae(good)
    assert "is not a complete safetensors file" in err.value.problem and "sae_weights.safetensors" in err.value.problem


def test_error_for_cfg_json_missing_required_keys_or_broken(good):
    cfg = dict(V6_JUMPRELU)
    del cfg["d_sae"]
    (good / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(RefusalScopeError, match="lacks the required key d_sae"):
        load_sae(good)
    (good / "cfg.json").write_text('{"d_in": 4, "d_sae"')
    with pytest.raises(RefusalScopeError, match="is not valid JSON"):
        load_sae(good)


def test_error_for_shapes_inconsistent_with_cfg(tmp_path):
    with pytest.raises(RefusalScopeError) as err:
        load_sae(write_saelens(tmp_path / "sae", {**V6_STANDARD, "d_sae": 16}, random_tensors("standard")))
    assert "W_enc has shape [4, 8], but the config says d_in=4, d_sae=16, so it must be [4, 16]" in err.value.problem


def test_error_for_a_topk_without_k_and_for_runtime_normalisation(tmp_path):
    cfg = {**V5_TOPK, "activation_fn_kwargs": {}}
    with pytest.raises(RefusalScopeError, match="TopK SAE but gives no k"):
        load_sae(write_saelens(tmp_path / "a", cfg, random_tensors("topk")))
    with pytest.raises(RefusalScopeError, match="normalize_activations='layer_norm'"):
        load_sae(
            write_saelens(
                tmp_path / "b",
                {**V6_STANDARD, "normalize_activations": "layer_norm"},
                random_tensors("standard"),
            )
        )
    hook_z = {
        **V6_STANDARD,
        "metadata": {**V6_META, "hook_name": "blocks.3.attn.hook_z"},
        "reshape_activations": "hook_z",
    }
    with pytest.raises(RefusalScopeError, match="attention-head SAE"):
        load_sae(write_saelens(tmp_path / "c", hook_z, random_tensors("standard")))


def test_error_for_paths_that_are_not_saes(tmp_path):
    with pytest.raises(
        RefusalScopeError,
        match="neither an existing SAE file or folder nor a known pretrained release",
    ) as err:
        load_sae(tmp_path / "absent")
    assert "gemma-scope-2b-pt-res-canonical" in err.value.fix
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefusalScopeError, match="does not contain an SAE in a layout refusalscope knows"):
        load_sae(tmp_path / "empty")
    only_cfg = tmp_path / "only_cfg"
    only_cfg.mkdir()
    (only_cfg / "cfg.json").write_text(json.dumps(V6_STANDARD))
    with pytest.raises(RefusalScopeError, match="has cfg.json but no weights"):
        load_sae(only_cfg)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(RefusalScopeError, match="is not a file refusalscope can load an SAE from"):
        load_sae(tmp_path / "weights.bin")
