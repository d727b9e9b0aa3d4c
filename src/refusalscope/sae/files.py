"""Reading SAE files safely, and turning what was read into a checked `SAE`.

Every reader here turns a failure into a `RefusalScopeError` that names the file and what
is wrong with it (truncated download, wrong tensor shape, missing key), because a corrupt
SAE otherwise surfaces much later as a shape error deep inside a steering hook.

Nothing here unpickles: safetensors and npz (with `allow_pickle=False`) hold only arrays,
and the one pickle-based format met in the wild (dictionary_learning's `ae.pt`) is read
with `torch.load(weights_only=True)`, which restores tensors and plain containers and
refuses to run arbitrary code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import RefusalScopeError
from .model import SAE, SAEConfig

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def dtype_name(dtype: str | torch.dtype) -> str:
    """'float32' / 'bfloat16' / … for any spelling SAELens, torch or a user writes."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = str(dtype).removeprefix("torch.").lower()
    if name not in _DTYPES:
        raise RefusalScopeError(f"unknown dtype '{dtype}' for an SAE", "use float32, bfloat16 or float16")
    return str(_DTYPES[name]).removeprefix("torch.")


@dataclass
class RawSAE:
    """What a format reader found: the config, SAELens-named tensors, and fix-ups to apply.

    `normalize_decoder` asks for `SAE.normalize_decoder()` after loading: SAELens TopK SAEs
    with `rescale_acts_by_decoder_norm` rank latents by pre-activation × decoder norm, which
    is exactly a TopK SAE whose decoder rows were rescaled to unit norm.
    """

    cfg: SAEConfig
    tensors: dict[str, torch.Tensor]
    where: str
    normalize_decoder: bool = False


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise RefusalScopeError(f"{path} does not exist", "check the SAE folder") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RefusalScopeError(
            f"cannot read {path}: it is not valid JSON ({exc})",
            "re-download or re-save the SAE; the file is damaged",
        ) from exc
    if not isinstance(data, dict):
        raise RefusalScopeError(f"{path} holds a JSON {type(data).__name__}, not an object", "re-download the SAE")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU; a truncated file is an error, not a crash."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise RefusalScopeError(f"{path} does not exist", "check the SAE folder")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types, and OSError for short reads
        raise RefusalScopeError(
            f"cannot read {path}: it is not a complete safetensors file ({exc})",
            "the file is truncated or damaged: download or save it again",
        ) from exc


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """All arrays of an .npz file as tensors; object arrays (which would need pickle) are refused."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise RefusalScopeError(f"{path} does not exist", "check the SAE path")
    try:
        with np.load(path, allow_pickle=False) as data:
            # np.load is lazy: read every array inside the try so a truncated member fails here
            arrays = {name: data[name] for name in data.files}
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError (pickled member), OSError
        raise RefusalScopeError(
            f"cannot read {path}: it is not a complete .npz file of plain arrays ({exc})",
            "the file is truncated or damaged: download it again",
        ) from exc
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def load_weights_only(path: Path, what: str = "file") -> Any:
    """`torch.load(path, weights_only=True)` with every refusal or damage as one clear error.

    torch's own refusal advises `weights_only=False`, which would execute whatever code the
    pickle carries: refusalscope never does that, so the user is told to convert the file instead.
    """
    path = Path(path)
    if not path.is_file():
        raise RefusalScopeError(f"{what} {path} does not exist", "check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden objects, RuntimeError/EOFError for damage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RefusalScopeError(
            f"cannot read the {what} {path} with torch.load(weights_only=True): {first}",
            "refusalscope never fully unpickles files (that would run code from the file); the file is damaged or "
            "holds more than tensors: re-download it, or convert it to safetensors with a tool you trust",
        ) from None


def read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A .pt state dict read with `torch.load(weights_only=True)`: tensors and plain values only.

    A full unpickle would execute whatever code the file carries; weights_only restricts
    the unpickler to tensors and builtin containers, so a malicious file fails to load.
    """
    state = load_weights_only(path, "SAE weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RefusalScopeError(f"{path} does not hold a state dict of tensors", "re-download the SAE")
    return dict(state)


_HOOK = re.compile(
    r"blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_resid_mid|hook_mlp_out|hook_attn_out|attn\.hook_z)"
)
_SITES = {
    "hook_resid_post": "resid_post",
    "hook_resid_mid": "resid_mid",
    "hook_mlp_out": "mlp_out",
    "hook_attn_out": "attn_out",
    "attn.hook_z": "attn_z",
}


def site_from_hook(hook_name: str | None) -> tuple[int | None, str]:
    """(layer, site) for a TransformerLens hook name.

    refusalscope reads the residual stream *after* a decoder block, so `blocks.L.hook_resid_pre`
    (the stream entering block L) is the same tensor as resid_post of block L-1, and is mapped
    there; resid_pre of block 0 is the embedding output.
    """
    if not hook_name:
        return None, "resid_post"
    if hook_name in ("hook_embed", "embed_tokens"):
        return None, "embed"
    match = _HOOK.fullmatch(hook_name)
    if match is None:
        return None, hook_name
    layer, hook = int(match.group(1)), match.group(2)
    if hook == "hook_resid_pre":
        return (layer - 1, "resid_post") if layer > 0 else (None, "embed")
    return layer, _SITES[hook]


def expected_tensors(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if cfg.architecture in ("jumprelu", "batchtopk"):
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


def assemble(raw: RawSAE) -> SAE:
    """Check every tensor against the config, then build the SAE without a second copy in memory."""
    cfg, tensors = raw.cfg, dict(raw.tensors)
    shapes = expected_tensors(cfg)
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise RefusalScopeError(
            f"{raw.where} has no tensor {', '.join(repr(m) for m in missing)} "
            f"(it holds: {', '.join(sorted(tensors)) or 'nothing'})",
            f"a {cfg.architecture} SAE needs {', '.join(shapes)}; the file is incomplete or of another architecture",
        )
    unknown = sorted(set(tensors) - set(shapes))
    if unknown:
        raise RefusalScopeError(
            f"{raw.where} holds tensors a {cfg.architecture} SAE does not have: {', '.join(unknown)}",
            "the config names the wrong architecture, or the SAE is of a kind refusalscope does not support",
        )
    for name, shape in shapes.items():
        if name == "threshold" and tensors[name].ndim == 0:  # one scalar threshold for all latents
            tensors[name] = tensors[name].expand(cfg.d_sae)
        if tuple(tensors[name].shape) != shape:
            raise RefusalScopeError(
                f"{raw.where}: {name} has shape {list(tensors[name].shape)}, but the config says "
                f"d_in={cfg.d_in}, d_sae={cfg.d_sae}, so it must be {list(shape)}",
                "the config and the weights disagree: the download is mixed up or the file was edited",
            )
        if not tensors[name].is_floating_point():
            raise RefusalScopeError(f"{raw.where}: {name} is not a floating-point tensor", "re-download the SAE")
    dtype = getattr(torch, cfg.dtype)
    with torch.device("meta"):
        sae = SAE(cfg)
    state = {name: tensors[name].to(dtype).contiguous() for name in shapes}
    sae.load_state_dict(state, assign=True)
    if raw.normalize_decoder:
        sae.normalize_decoder()
    return sae
