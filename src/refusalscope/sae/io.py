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
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import RefusalScopeError
from ..paths import atomic_dir
from .files import RawSAE, assemble, dtype_name
from .formats import read_dictionary_learning, read_gemmascope, read_llama_scope, read_sparsify
from .model import SAE
from .saelens import CFG_FILE, WEIGHTS_FILE, read_saelens, saelens_tensors, to_saelens_cfg

READERS: dict[str, Callable[..., RawSAE]] = {
    "saelens": read_saelens,
    "gemmascope": read_gemmascope,
    "sparsify": read_sparsify,
    "dictionary_learning": read_dictionary_learning,
    "llama_scope": read_llama_scope,
}
_LAYOUTS = (
    "a SAELens folder (cfg.json + sae_weights.safetensors), a GemmaScope params.npz, a sparsify "
    "hookpoint folder (cfg.json + sae.safetensors), a dictionary_learning folder (ae.pt + config.json), "
    "a Llama Scope folder (hyperparams.json + checkpoints/final.safetensors), or '<release>/<sae_id>'"
)


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
    if folder.exists() and not (
        folder.is_dir() and (not any(folder.iterdir()) or _is_sae_folder(folder))
    ):
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
def detect_format(path: Path) -> tuple[str, Path]:
    """(format name, the file or folder its reader takes) for a local SAE path."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".npz":
            return "gemmascope", path
        if path.name in (
            CFG_FILE,
            WEIGHTS_FILE,
            "sae.safetensors",
            "ae.pt",
            "config.json",
            "hyperparams.json",
        ):
            return detect_format(path.parent)
        if path.parent.name == "checkpoints" and path.suffix == ".safetensors":
            return detect_format(path.parent.parent)
        raise RefusalScopeError(
            f"{path} is not a file refusalscope can load an SAE from", f"pass {_LAYOUTS}"
        )
    has = lambda name: (path / name).is_file()
    if has(CFG_FILE) and has(WEIGHTS_FILE):
        return "saelens", path
    if has(CFG_FILE) and has("sae.safetensors"):
        return "sparsify", path
    if has("params.npz"):
        return "gemmascope", path / "params.npz"
    if has("ae.pt") and has("config.json"):
        return "dictionary_learning", path
    if has("hyperparams.json"):
        return "llama_scope", path
    for present, needed in (
        (WEIGHTS_FILE, CFG_FILE),
        ("sae.safetensors", CFG_FILE),
        ("ae.pt", "config.json"),
    ):
        if has(present):
            raise RefusalScopeError(
                f"{path} has {present} but no {needed}",
                "the SAE folder is incomplete: copy or download the missing file",
            )
    if has(CFG_FILE):
        raise RefusalScopeError(
            f"{path} has {CFG_FILE} but no weights ({WEIGHTS_FILE} for SAELens, sae.safetensors for sparsify)",
            "the SAE folder is incomplete: copy or download the weights file",
        )
    inner = sorted(
        child.name for child in path.iterdir() if child.is_dir() and _holds_an_sae(child)
    )
    if inner:
        shown = ", ".join(inner[:12]) + (f", … ({len(inner)} in all)" if len(inner) > 12 else "")
        raise RefusalScopeError(
            f"{path} holds several SAEs ({shown})",
            f"pass one of them, e.g. {path / inner[0]}",
        )
    raise RefusalScopeError(
        f"{path} does not contain an SAE in a layout refusalscope knows", f"pass {_LAYOUTS}"
    )


def _holds_an_sae(folder: Path) -> bool:
    names = {"cfg.json", "params.npz", "ae.pt", "hyperparams.json"}
    return any((folder / name).is_file() for name in names)


def load_local(
    path: Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    fmt: str | None = None,
    norm_scaling_factor: float | None = None,
) -> SAE:
    """Load an SAE from a local file or folder, in the given format or the one its layout shows.

    `provenance["source"]` is set to the path it was read from (replacing any earlier one), so
    steering specs and results can name where to reload this SAE.
    """
    found, target = detect_format(path)
    fmt = fmt or found
    if fmt != found:
        raise RefusalScopeError(
            f"{path} looks like a {found} SAE, not {fmt}",
            "check the release's format in the registry",
        )
    raw = READERS[fmt](target, norm_scaling_factor) if fmt == "saelens" else READERS[fmt](target)
    if dtype is not None:
        raw.cfg.dtype = dtype_name(dtype)
    raw.cfg.provenance = {**raw.cfg.provenance, "source": str(path)}
    return assemble(raw).to(device)


def load_sae(
    source: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    model=None,
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
        from .pretrained import known_releases, load_pretrained, split_pretrained

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
