"""SAELens's on-disk layout: `cfg.json` + `sae_weights.safetensors`, read and written.

The layout is what the ecosystem exchanges (Neuronpedia, SAEBench, most hub releases), so
refusalscope writes it as its own format. What was checked against SAELens's source
(jbloomAus/SAELens v6: `sae_lens/saes/sae.py`, `saes/{standard,jumprelu,topk,batchtopk}_sae.py`,
`loading/pretrained_sae_loaders.py`):

* tensors are `W_enc [d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`, `b_dec`, plus
  `threshold [d_sae]` for JumpReLU; the inference forward pass is the one in `model.py`;
* v6 cfg.json has `architecture, d_in, d_sae, dtype, device, apply_b_dec_to_input,
  normalize_activations, reshape_activations` (+ `k`, `rescale_acts_by_decoder_norm` for
  TopK) at the top level, and `model_name`, `hook_name`, … inside a free-form `metadata`
  dict; SAELens keeps unknown metadata keys and drops unknown top-level keys;
* SAELens decides the cfg generation by `sae_lens_version` (top level or in `metadata`):
  missing or < 6 means the v3–v5 layout, with `model_name`/`hook_name`/`hook_layer` at the
  top level, old names (`hook_point`, `activation_fn_str`) and TopK spelled
  `activation_fn: topk` + `activation_fn_kwargs: {k}`;
* SAELens has no inference-time BatchTopK: a trained BatchTopK SAE is saved as `jumprelu`
  with its learned threshold, which is refusalscope's BatchTopK maths too.

refusalscope's own fields ride in `metadata.refusalscope`, which SAELens carries along
unread. A non-unit `input_scale` has no SAELens field, so it is folded into the weights
on save (exact: `SAE.fold_input_scale`).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..checks import number
from ..errors import RefusalScopeError
from .files import RawSAE, dtype_name, read_json, read_safetensors, site_from_hook
from .model import SAE, SAEConfig, canonical_architecture

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# the cfg generation this writer follows; SAELens parses the file as v6 because of it
FORMAT_SAE_LENS_VERSION = "6.0.0"
_RENAMED = {
    "hook_point": "hook_name",
    "hook_point_layer": "hook_layer",
    "activation_fn_str": "activation_fn",
}


def _refusalscope_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("refusalscope")
    except metadata.PackageNotFoundError:
        return "unknown"


def to_saelens_cfg(sae: SAE, folded_input_scale: float) -> dict[str, Any]:
    """The v6 cfg.json for `sae` (whose input scale has already been folded into its tensors)."""
    cfg = sae.cfg
    out: dict[str, Any] = {
        "architecture": "jumprelu" if cfg.architecture == "batchtopk" else cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    metadata: dict[str, Any] = {"sae_lens_version": FORMAT_SAE_LENS_VERSION}
    if cfg.model_name:
        metadata["model_name"] = cfg.model_name
    if cfg.hook_name:
        metadata["hook_name"] = cfg.hook_name
    metadata["refusalscope"] = {
        "format_version": 1,
        "refusalscope_version": _refusalscope_version(),
        "architecture": cfg.architecture,
        "k": cfg.k,
        "layer": cfg.layer,
        "site": cfg.site,
        "model_sha256": cfg.model_sha256,
        "folded_input_scale": folded_input_scale,
        "provenance": cfg.provenance,
    }
    out["metadata"] = metadata
    return out


def _major_version(version: Any) -> int | None:
    match = re.match(r"\s*(\d+)", str(version)) if version else None
    return int(match.group(1)) if match else None


def _input_scale(raw: dict[str, Any], where: str, norm_scaling_factor: float | None) -> float:
    mode = raw.get("normalize_activations")
    if mode in (None, False, "none"):
        return 1.0
    if mode in (True, "expected_average_only_in"):
        factor = (
            norm_scaling_factor
            or raw.get("norm_scaling_factor")
            or (raw.get("metadata") or {}).get("norm_scaling_factor")
        )
        if factor:
            return number(factor, f"{where}: norm_scaling_factor", positive=True)
        warnings.warn(
            f"{where} was trained on inputs rescaled by a constant (normalize_activations="
            f"'expected_average_only_in') that its cfg.json does not record; loading it unscaled, "
            "as SAELens's load_from_disk does. Add 'norm_scaling_factor' to cfg.json if you know it.",
            stacklevel=3,
        )
        return 1.0
    raise RefusalScopeError(
        f"{where} normalises each input at run time (normalize_activations='{mode}')",
        "refusalscope supports SAEs with fixed input scaling only ('none' or 'expected_average_only_in')",
    )


def _architecture_and_k(raw: dict[str, Any], ours: dict[str, Any], where: str) -> tuple[str, int | None]:
    arch = raw.get("architecture") or "standard"
    kwargs = raw.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RefusalScopeError(
            f"{where}: 'activation_fn_kwargs' must be a JSON object", "repair or re-download cfg.json"
        )
    if not isinstance(ours, dict):
        raise RefusalScopeError(
            f"{where}: 'metadata.refusalscope' must be a JSON object", "repair or re-download cfg.json"
        )
    k = raw.get("k")
    if raw.get("activation_fn") == "topk" and arch == "standard":  # v3–v5 spelling of TopK
        arch = "topk"
        k = kwargs.get("k")
    if ours.get("architecture") == "batchtopk" and arch == "jumprelu":
        arch, k = "batchtopk", ours.get("k")
    try:
        arch = canonical_architecture(str(arch))
    except RefusalScopeError as exc:
        raise RefusalScopeError(f"{where}: {exc.problem}", exc.fix) from None
    if arch == "topk" and k is None:
        k = kwargs.get("k")
        if k is None:
            raise RefusalScopeError(
                f"{where} describes a TopK SAE but gives no k",
                'add "k": <active latents per token> to cfg.json',
            )
    return arch, (number(k, f"{where}: k", integer=True, minimum=1) if k is not None else None)


def cfg_from_saelens(
    raw: dict[str, Any], where: str, norm_scaling_factor: float | None = None
) -> tuple[SAEConfig, bool]:
    """An SAEConfig from a SAELens cfg.json of any generation (v3–v6); also says whether the
    decoder must be normalised (TopK with `rescale_acts_by_decoder_norm`).

    A file refusalscope wrote keeps the provenance it was saved with; any other file gets
    one that names the SAELens cfg generation it was written in.
    """
    raw = {_RENAMED.get(key, key): value for key, value in raw.items()}
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RefusalScopeError(f"{where}: 'metadata' must be a JSON object", "repair or re-download cfg.json")
    ours = metadata.get("refusalscope") or {}

    def pick(key: str) -> Any:
        return raw[key] if raw.get(key) is not None else metadata.get(key)

    missing = [key for key in ("d_in", "d_sae") if pick(key) is None]
    if missing:
        raise RefusalScopeError(
            f"{where} lacks the required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            "an SAELens cfg.json needs at least d_in and d_sae (and architecture); re-download or re-save the SAE",
        )
    hook_name = pick("hook_name")
    if hook_name is not None and not isinstance(hook_name, str):
        raise RefusalScopeError(
            f"{where}: hook_name must be a string, got {hook_name!r}", "repair or re-download cfg.json"
        )
    for key in ("model_name", "dtype", "reshape_activations"):
        if pick(key) is not None and not isinstance(pick(key), str):
            raise RefusalScopeError(
                f"{where}: {key} must be a string, got {pick(key)!r}", "repair or re-download cfg.json"
            )
    for key in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        if raw.get(key) is not None and not isinstance(raw[key], bool):
            raise RefusalScopeError(
                f"{where}: {key} must be true or false, got {raw[key]!r}", "repair or re-download cfg.json"
            )
    if (
        raw.get("reshape_activations") == "hook_z"
        or (hook_name or "").endswith("hook_z")
        or pick("hook_head_index") is not None
    ):
        raise RefusalScopeError(
            f"{where} is an attention-head SAE ({hook_name})",
            "refusalscope steers the residual stream; use a residual-stream SAE",
        )
    arch, k = _architecture_and_k(raw, ours, where)
    layer, site = site_from_hook(hook_name)
    if layer is None and pick("hook_layer") is not None and site == "resid_post":
        layer = number(pick("hook_layer"), f"{where}: hook_layer", integer=True, minimum=0)
    version = pick("sae_lens_version")
    if "refusalscope" in metadata:
        provenance = ours.get("provenance") or {}
        if not isinstance(provenance, dict):
            raise RefusalScopeError(f"{where}: metadata.refusalscope.provenance must be a JSON object")
    else:
        provenance = {
            "format": f"saelens-v{_major_version(version) or '3-5'}",
            "sae_lens_version": version,
        }
    cfg = SAEConfig(
        d_in=number(pick("d_in"), f"{where}: d_in", integer=True, minimum=1),
        d_sae=number(pick("d_sae"), f"{where}: d_sae", integer=True, minimum=1),
        architecture=arch,
        k=k,
        layer=layer
        if ours.get("layer") is None
        else number(ours["layer"], f"{where}: refusalscope layer", integer=True, minimum=0),
        site=ours.get("site", site) if isinstance(ours.get("site", site), str) else site,
        model_name=pick("model_name"),
        model_sha256=ours.get("model_sha256"),
        hook_name=hook_name,
        dtype=dtype_name(raw.get("dtype") or "float32"),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        input_scale=_input_scale(raw, where, norm_scaling_factor),
        provenance=provenance,
    )
    return cfg, bool(raw.get("rescale_acts_by_decoder_norm", False))


def _fix_tensors(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Older SAELens files: `log_threshold` instead of `threshold`, a trivial `scaling_factor`."""
    tensors = dict(tensors)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp()
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale.float(), torch.ones_like(scale, dtype=torch.float32)):
        raise RefusalScopeError(
            f"{where} has a fine-tuning scaling_factor (an old SAELens feature-rescaling layer)",
            "fold scaling_factor into W_dec (W_dec *= scaling_factor[:, None]) and delete it, then load again",
        )
    return tensors


def read_saelens(folder: Path, norm_scaling_factor: float | None = None) -> RawSAE:
    folder = Path(folder)
    cfg_path = folder / CFG_FILE
    cfg, normalize = cfg_from_saelens(read_json(cfg_path), str(cfg_path), norm_scaling_factor)
    weights = folder / WEIGHTS_FILE
    tensors = _fix_tensors(read_safetensors(weights), str(weights))
    return RawSAE(cfg, tensors, str(weights), normalize_decoder=normalize)


def saelens_tensors(sae: SAE) -> tuple[dict[str, torch.Tensor], float]:
    """Tensors to write, with the input scale folded in (without touching `sae`)."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in sae.state_tensors().items()}
    scale = float(sae.cfg.input_scale)
    if scale != 1.0:
        if not math.isfinite(scale) or scale <= 0:
            raise RefusalScopeError(
                f"cannot save an SAE with input_scale={scale}",
                "input_scale must be a positive number",
            )
        # the same arithmetic as SAE.fold_input_scale, in float32 so bf16 SAEs lose nothing extra
        tensors["W_enc"] = (tensors["W_enc"].float() * scale).to(tensors["W_enc"].dtype)
        tensors["W_dec"] = (tensors["W_dec"].float() / scale).to(tensors["W_dec"].dtype)
        tensors["b_dec"] = (tensors["b_dec"].float() / scale).to(tensors["b_dec"].dtype)
    return tensors, scale
