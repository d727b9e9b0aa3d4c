"""Readers for SAE files published in other projects' layouts, mapped onto refusalscope's SAE.

Each reader returns a `RawSAE` with SAELens-named tensors and the maths of the original
project, re-expressed in `model.py`'s forward pass (checked against each project's source):

* **GemmaScope** (google/gemma-scope-*): `params.npz` with `W_enc [d_in, d_sae]`, `W_dec`,
  `b_enc`, `b_dec`, `threshold`; JumpReLU, and `b_dec` is *not* subtracted from the input.
* **EleutherAI sparsify** (`sparsify/sparse_coder.py`): a folder per hookpoint (`layers.12/`)
  with `cfg.json` (`d_in`, `k`, `num_latents` or `expansion_factor`, …) and `sae.safetensors`
  (`encoder.weight [d_sae, d_in]`, `encoder.bias`, `W_dec [d_sae, d_in]`, `b_dec`); TopK of
  ReLU(`(x - b_dec) W_encᵀ + b_enc`). Hookpoint `layers.N` is the output of decoder layer N.
* **dictionary_learning** (saprmarks/dictionary_learning): `ae.pt` (a state dict, read with
  `torch.load(weights_only=True)`) + `config.json` whose `trainer.dict_class` names the class.
* **Llama Scope** (OpenMOSS Language-Model-SAEs, `lm_saes/sae.py` at the Llama Scope release,
  commit 4ec6f0aa): `hyperparams.json` + `checkpoints/final.safetensors` with nn.Linear
  `encoder`/`decoder`. Weights live in a space where inputs were rescaled to norm √d_model
  (`dataset_average_activation_norm`); lm_saes folds that scale into the biases and decoder
  at load time and, with `sparsity_include_decoder_norm`, moves decoder norms into the
  encoder; its JumpReLU threshold is a single scalar in that final space. The same folds
  are applied here, so features and thresholds mean what they meant in lm_saes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..checks import number
from ..errors import RefusalScopeError
from .files import (
    RawSAE,
    dtype_name,
    read_json,
    read_npz,
    read_safetensors,
    read_torch_weights,
    site_from_hook,
)
from .model import SAEConfig


def _tensor_dtype(tensors: dict[str, torch.Tensor]) -> str:
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    return dtype_name(floats[0]) if floats else "float32"


def _need(tensors: dict[str, torch.Tensor], names: list[str], where: str) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise RefusalScopeError(
            f"{where} has no tensor {', '.join(repr(m) for m in missing)} (it holds: {', '.join(sorted(tensors)) or 'nothing'})",
            "the file is incomplete or not of the format its folder layout suggests: re-download it",
        )


def _need_keys(config: dict[str, Any], keys: list[str], where: str) -> None:
    missing = [k for k in keys if config.get(k) is None]
    if missing:
        raise RefusalScopeError(
            f"{where} lacks the required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            "re-download the SAE",
        )


# ----------------------------------------------------------------------------- GemmaScope
_GEMMA_MODEL = re.compile(r"gemma-scope-(\d+b)-(pt|it)(?:-(res|mlp|att))?")


def read_gemmascope(npz: Path) -> RawSAE:
    npz = Path(npz)
    where = str(npz)
    tensors = {("W_" + name[2:] if name.startswith("w_") else name): t for name, t in read_npz(npz).items()}
    location = npz.as_posix()
    if "embedding" in location:
        raise RefusalScopeError(
            f"{where} is a GemmaScope embedding SAE",
            "refusalscope steers the residual stream after a decoder layer: use a layer_N SAE",
        )
    _need(tensors, ["W_enc"], where)
    d_in, d_sae = tensors["W_enc"].shape
    layer_match = re.search(r"layer_(\d+)", location)
    layer = int(layer_match.group(1)) if layer_match else None
    model = _GEMMA_MODEL.search(location)
    site = {"mlp": "mlp_out", "att": "attn_z"}.get(model.group(3), "resid_post") if model else "resid_post"
    hook = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "attn_z": "attn.hook_z"}[site]
    cfg = SAEConfig(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture="jumprelu",
        layer=layer,
        site=site,
        model_name=f"google/gemma-2-{model.group(1)}{'-it' if model.group(2) == 'it' else ''}" if model else None,
        hook_name=f"blocks.{layer}.{hook}" if layer is not None else None,
        dtype=_tensor_dtype(tensors),
        apply_b_dec_to_input=False,
        provenance={"format": "gemmascope"},
    )
    return RawSAE(cfg, tensors, where)


# ----------------------------------------------------------------------------- sparsify
def _hookpoint(name: str) -> tuple[int | None, str, str | None]:
    """(layer, site, TransformerLens hook name) for a sparsify hookpoint folder name."""
    if name in ("embed_tokens", "embed"):
        return None, "embed", "hook_embed"
    match = re.fullmatch(r"(?:model\.)?layers[._](\d+)(\.mlp)?", name)
    if match is None:
        return None, name, None
    layer = int(match.group(1))
    if match.group(2):
        return layer, "mlp_out", f"blocks.{layer}.hook_mlp_out"
    return layer, "resid_post", f"blocks.{layer}.hook_resid_post"


def read_sparsify(folder: Path) -> RawSAE:
    folder = Path(folder)
    cfg_path, weights = folder / "cfg.json", folder / "sae.safetensors"
    raw = read_json(cfg_path)
    _need_keys(raw, ["d_in", "k"], str(cfg_path))
    if raw.get("activation", "topk") != "topk":
        raise RefusalScopeError(
            f"{cfg_path}: activation '{raw['activation']}' is not supported",
            "use a TopK sparsify SAE",
        )
    if raw.get("transcode"):
        raise RefusalScopeError(
            f"{folder} is a sparsify transcoder (it predicts another layer)",
            "use a sparse autoencoder",
        )
    tensors = read_safetensors(weights)
    if raw.get("skip_connection") or "W_skip" in tensors:
        raise RefusalScopeError(
            f"{folder} has a skip connection (W_skip)",
            "use a sparsify SAE trained without skip_connection",
        )
    _need(tensors, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], str(weights))
    d_in = number(raw["d_in"], f"{cfg_path}: d_in", integer=True, minimum=1)
    if raw.get("num_latents"):
        d_sae = number(raw["num_latents"], f"{cfg_path}: num_latents", integer=True, minimum=1)
    else:
        d_sae = d_in * number(raw.get("expansion_factor", 32), f"{cfg_path}: expansion_factor", integer=True, minimum=1)
    layer, site, hook = _hookpoint(folder.name)
    run_cfg = folder.parent / "config.json"
    model_name = read_json(run_cfg).get("model") if run_cfg.is_file() else None
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture="topk",
        k=number(raw["k"], f"{cfg_path}: k", integer=True, minimum=1),
        layer=layer,
        site=site,
        model_name=model_name,
        hook_name=hook,
        dtype=_tensor_dtype(tensors),
        apply_b_dec_to_input=True,
        provenance={"format": "sparsify"},
    )
    mapped = {
        "W_enc": tensors["encoder.weight"].T,
        "b_enc": tensors["encoder.bias"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    return RawSAE(cfg, mapped, str(weights))


# ----------------------------------------------------------------------------- dictionary_learning
# dict_class -> (architecture, subtracts b_dec from the input, {our name: their name}, transposed)
_LINEAR = {
    "W_enc": "encoder.weight",
    "b_enc": "encoder.bias",
    "W_dec": "decoder.weight",
    "b_dec": "b_dec",
}
_PARAMS = {
    "W_enc": "W_enc",
    "b_enc": "b_enc",
    "W_dec": "W_dec",
    "b_dec": "b_dec",
    "threshold": "threshold",
}
_DICT_CLASSES: dict[str, tuple[str, bool, dict[str, str], bool]] = {
    "AutoEncoder": ("standard", True, {**_LINEAR, "b_dec": "bias"}, True),
    "AutoEncoderNew": ("standard", False, {**_LINEAR, "b_dec": "decoder.bias"}, True),
    "AutoEncoderTopK": ("topk", True, _LINEAR, True),
    "BatchTopKSAE": ("batchtopk", True, {**_LINEAR, "threshold": "threshold"}, True),
    "MatryoshkaBatchTopKSAE": ("batchtopk", True, _PARAMS, False),
    "JumpReluAutoEncoder": ("jumprelu", False, _PARAMS, False),
}


def read_dictionary_learning(folder: Path) -> RawSAE:
    """An `ae.pt` + `config.json` folder; `ae.pt` is read ONLY with torch.load(weights_only=True)."""
    folder = Path(folder)
    config_path, weights = folder / "config.json", folder / "ae.pt"
    trainer = read_json(config_path).get("trainer")
    if not isinstance(trainer, dict) or "dict_class" not in trainer:
        raise RefusalScopeError(
            f"{config_path} has no trainer.dict_class",
            "point at a dictionary_learning output folder (ae.pt + config.json)",
        )
    dict_class = trainer["dict_class"]
    if dict_class not in _DICT_CLASSES:
        raise RefusalScopeError(
            f"{config_path}: dictionary_learning class '{dict_class}' is not supported",
            f"supported: {', '.join(_DICT_CLASSES)} (gated SAEs: convert to jumprelu first)",
        )
    arch, subtract_b_dec, names, linear = _DICT_CLASSES[dict_class]
    state = read_torch_weights(weights)
    _need(state, list(names.values()), str(weights))
    tensors = {ours: state[theirs] for ours, theirs in names.items()}
    if linear:  # nn.Linear stores [out, in]
        tensors["W_enc"], tensors["W_dec"] = tensors["W_enc"].T, tensors["W_dec"].T
    d_in, d_sae = tensors["W_enc"].shape
    k = state["k"].item() if "k" in state and state["k"].numel() == 1 else trainer.get("k")
    if arch in ("topk", "batchtopk") and k is None:
        raise RefusalScopeError(
            f"{folder} is a {dict_class} but neither ae.pt nor config.json gives k",
            "re-download the SAE",
        )
    submodule = str(trainer.get("submodule_name") or "")
    site = "mlp_out" if "mlp" in submodule else "attn_out" if "attn" in submodule else "resid_post"
    layer = trainer.get("layer")
    cfg = SAEConfig(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture=arch,
        k=number(k, f"{folder}: k", integer=True, minimum=1) if arch in ("topk", "batchtopk") else None,
        layer=number(layer, f"{config_path}: trainer.layer", integer=True, minimum=0) if layer is not None else None,
        site=site,
        model_name=trainer.get("lm_name"),
        dtype=_tensor_dtype(tensors),
        apply_b_dec_to_input=subtract_b_dec,
        provenance={"format": "dictionary_learning", "dict_class": dict_class},
    )
    return RawSAE(cfg, tensors, str(weights))


# ----------------------------------------------------------------------------- Llama Scope (lm_saes)
LLAMA_SCOPE_WEIGHTS = (
    "sae_weights.safetensors",
    "checkpoints/pruned.safetensors",
    "checkpoints/final.safetensors",
)


def _norm_factor(hp: dict[str, Any], key: str, hook: str, where: str) -> float:
    """√d_model / average input norm: the constant lm_saes multiplied inputs by while training.

    A missing `norm_activation` means lm_saes's default, 'token-wise' (a per-token rescaling
    this SAE module cannot express); published Llama Scope files all say 'dataset-wise'.
    """
    mode = hp.get("norm_activation", "token-wise")
    if mode in ("inference", "none"):
        return 1.0
    if mode != "dataset-wise":
        raise RefusalScopeError(
            f"{where}: norm_activation '{mode}' rescales each input at run time",
            "refusalscope supports Language-Model-SAEs SAEs with norm_activation 'dataset-wise' or 'inference'",
        )
    norms = hp.get("dataset_average_activation_norm") or {}
    norm = norms.get(key, norms.get(hook))
    if not norm:
        raise RefusalScopeError(f"{where} lacks dataset_average_activation_norm.{key}", "re-download hyperparams.json")
    return math.sqrt(number(hp["d_model"], f"{where}: d_model", integer=True, minimum=1)) / number(
        norm, f"{where}: dataset_average_activation_norm.{key}", positive=True
    )


def read_llama_scope(folder: Path) -> RawSAE:
    folder = Path(folder)
    hp_path = folder / "hyperparams.json"
    hp = read_json(hp_path)
    where = str(hp_path)
    _need_keys(hp, ["d_model", "d_sae", "hook_point_in"], where)
    hook_in, hook_out = hp["hook_point_in"], hp.get("hook_point_out") or hp["hook_point_in"]
    if hook_out != hook_in:
        raise RefusalScopeError(f"{folder} is a transcoder ({hook_in} -> {hook_out})", "use a sparse autoencoder")
    if hp.get("use_glu_encoder"):
        raise RefusalScopeError(f"{folder} has a GLU encoder", "refusalscope supports plain linear encoders only")
    weights = next((folder / name for name in LLAMA_SCOPE_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise RefusalScopeError(
            f"{folder} has no weights file ({' or '.join(LLAMA_SCOPE_WEIGHTS)})",
            "download the checkpoint too",
        )
    state = read_safetensors(weights)
    _need(state, ["encoder.weight", "encoder.bias", "decoder.weight"], str(weights))
    d_model = number(hp["d_model"], f"{where}: d_model", integer=True, minimum=1)
    d_sae = number(hp["d_sae"], f"{where}: d_sae", integer=True, minimum=1)
    for name, shape in (
        ("encoder.weight", (d_sae, d_model)),
        ("encoder.bias", (d_sae,)),
        ("decoder.weight", (d_model, d_sae)),
    ):
        if tuple(state[name].shape) != shape:
            raise RefusalScopeError(
                f"{weights}: {name} has shape {list(state[name].shape)}, but hyperparams.json says "
                f"d_model={d_model}, d_sae={d_sae}, so it must be {list(shape)}",
                "the config and the weights disagree: re-download both",
            )

    act, theta, top_k = (
        str(hp.get("act_fn", "relu")).lower(),
        number(hp.get("jump_relu_threshold") or 0.0, f"{where}: jump_relu_threshold"),
        hp.get("top_k"),
    )
    if act == "topk" and theta > 0:  # lm_saes serves a TopK-trained SAE with a learned threshold
        act = "jumprelu"
    arch = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}.get(act)
    if arch is None:
        raise RefusalScopeError(
            f"{where}: act_fn '{hp.get('act_fn')}' is not supported",
            "use a relu, topk or jumprelu SAE",
        )
    if arch == "topk" and not top_k:
        raise RefusalScopeError(f"{where} describes a TopK SAE but gives no top_k", "re-download hyperparams.json")

    # lm_saes at inference: fold the dataset-wise input/output scale, then (optionally) the
    # decoder norms, all in float32; see the module docstring
    s_in, s_out = _norm_factor(hp, "in", hook_in, where), _norm_factor(hp, "out", hook_out, where)
    w_enc = state["encoder.weight"].float()  # [d_sae, d_in]
    b_enc = state["encoder.bias"].float() / s_in
    w_dec = state["decoder.weight"].float() * (s_in / s_out)  # [d_in, d_sae]
    bias = state.get("decoder.bias")
    b_dec = (
        bias.float() / s_out if bias is not None and hp.get("use_decoder_bias", True) else torch.zeros(w_dec.shape[0])
    )
    if hp.get("sparsity_include_decoder_norm", True):
        norms = w_dec.norm(dim=0).clamp_min(1e-12)  # a dead latent's zero column stays zero
        w_dec, w_enc, b_enc = w_dec / norms, w_enc * norms[:, None], b_enc * norms
    layer, site = site_from_hook(hook_in)
    cfg = SAEConfig(
        d_in=d_model,
        d_sae=d_sae,
        architecture=arch,
        k=number(top_k, f"{where}: top_k", integer=True, minimum=1) if arch == "topk" else None,
        layer=layer,
        site=site,
        model_name=hp.get("model_name"),
        hook_name=hook_in,
        dtype=dtype_name(state["encoder.weight"].dtype),
        apply_b_dec_to_input=bool(hp.get("apply_decoder_bias_to_pre_encoder", True)) and bias is not None,
        provenance={"format": "llama_scope"},
    )
    tensors = {"W_enc": w_enc.T, "b_enc": b_enc, "W_dec": w_dec.T, "b_dec": b_dec}
    if arch == "jumprelu":
        tensors["threshold"] = torch.full((cfg.d_sae,), theta)
    return RawSAE(cfg, tensors, str(weights))
