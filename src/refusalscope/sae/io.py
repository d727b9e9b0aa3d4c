"""Saving SAEs in SAELens's layout, and loading them from every layout in common use.

`save_sae` writes `cfg.json` + `sae_weights.safetensors` exactly as SAELens v6 reads them
(see `saelens.py`), so an SAE trained here opens in SAELens, SAEBench or Neuronpedia
tooling unchanged. `load_sae` accepts what people actually download:

===================  =========================================================
SAELens folder       `cfg.json` + `sae_weights.safetensors` (cfg v3–v6)
GemmaScope           `params.npz`, or a folder holding one
EleutherAI sparsify  a hookpoint folder (`layers.12/`) with `cfg.json` + `sae.safetensors`
dictionary_learning  `ae.pt` + `config.json` (`ae.pt` read with weights_only=True)
Llama Scope          `hyperparams.json` + `checkpoints/final.safetensors`
pretrained release   `"<release>/<sae_id>"`, fetched through the Hugging Face hub
===================  =========================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import RefusalScopeError
from ..paths import atomic_dir
from .files import dtype_name
from .layouts import detect_format, load_local
from .model import SAE
from .pretrained import known_releases, load_pretrained, split_pretrained
from .saelens import CFG_FILE, WEIGHTS_FILE, saelens_tensors, to_saelens_cfg

__all__ = ["detect_format", "load_local", "load_sae", "save_sae"]


# ----------------------------------------------------------------------------- saving
def _is_sae_folder(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def save_sae(sae: SAE, folder: str | Path) -> Path:
    """Write `sae` to `folder` in SAELens's layout, atomically; return the folder.

    The folder appears complete or not at all (written beside it, then renamed), so a
    killed process never leaves an SAE that loads with half its weights. An existing SAE
    folder is replaced as a whole; any other non-empty folder is refused rather than wiped.
    A non-unit `input_scale` is folded into the written weights (outputs are unchanged);
    `sae` itself is not modified.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or _is_sae_folder(folder))):
        raise RefusalScopeError(
            f"{folder} exists and is not an SAE folder; refusing to overwrite it",
            "choose a new folder name (an existing SAE folder would be replaced)",
        )
    from safetensors.torch import save_file

    tensors, scale = saelens_tensors(sae)
    cfg = to_saelens_cfg(sae, scale)
    cfg["dtype"] = dtype_name(tensors["W_enc"].dtype)  # what is on disk, even after sae.to(dtype)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    return folder


# ----------------------------------------------------------------------------- loading
def load_sae(
    source: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    model: Any = None,
) -> SAE:
    """Load an SAE from a local file/folder in any supported layout, or a pretrained release.

    `source` is a path (see the module docstring for the layouts) or `"<release>/<sae_id>"`,
    e.g. `"gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"`; releases are
    resolved through the Hugging Face hub and its local cache (`load_pretrained`).
    `dtype=None` keeps the dtype the SAE was stored in. dictionary_learning `.pt` files are
    read only with `torch.load(weights_only=True)`; nothing is ever fully unpickled.
    With `model` (a ChatModel), the SAE is checked to fit its residual stream (d_in, layer).
    """
    path = Path(source).expanduser()
    if path.exists():
        sae = load_local(path, device=device, dtype=dtype)
    else:
        spec = split_pretrained(str(source))
        if spec is None:
            raise RefusalScopeError(
                f"'{source}' is neither an existing SAE file or folder nor a known pretrained release",
                f"pass a path, or '<release>/<sae_id>' with a release among: {', '.join(known_releases())}",
            )
        sae = load_pretrained(*spec, device=device, dtype=dtype)
    if model is not None:
        sae.check_model(model)
    return sae
