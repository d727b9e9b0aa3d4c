"""Which on-disk layout a local SAE file or folder is in, and reading it as an SAE.

`io.load_sae` (paths and release names) and `pretrained.load_pretrained` (files fetched
from the hub) both end here: one module that knows the layouts, imported by both, so the
two never need each other's functions (no import cycle between io and pretrained).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import RefusalScopeError
from .files import RawSAE, assemble, dtype_name
from .formats import read_dictionary_learning, read_gemmascope, read_llama_scope, read_sparsify
from .model import SAE
from .saelens import CFG_FILE, WEIGHTS_FILE, read_saelens

__all__ = ["LAYOUTS", "READERS", "detect_format", "holds_an_sae", "load_local"]

READERS: dict[str, Callable[..., RawSAE]] = {
    "saelens": read_saelens,
    "gemmascope": read_gemmascope,
    "sparsify": read_sparsify,
    "dictionary_learning": read_dictionary_learning,
    "llama_scope": read_llama_scope,
}
LAYOUTS = (
    "a SAELens folder (cfg.json + sae_weights.safetensors), a GemmaScope params.npz, a sparsify "
    "hookpoint folder (cfg.json + sae.safetensors), a dictionary_learning folder (ae.pt + config.json), "
    "a Llama Scope folder (hyperparams.json + checkpoints/final.safetensors), or '<release>/<sae_id>'"
)


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
        raise RefusalScopeError(f"{path} is not a file refusalscope can load an SAE from", f"pass {LAYOUTS}")
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
    inner = sorted(child.name for child in path.iterdir() if child.is_dir() and holds_an_sae(child))
    if inner:
        shown = ", ".join(inner[:12]) + (f", … ({len(inner)} in all)" if len(inner) > 12 else "")
        raise RefusalScopeError(
            f"{path} holds several SAEs ({shown})",
            f"pass one of them, e.g. {path / inner[0]}",
        )
    raise RefusalScopeError(f"{path} does not contain an SAE in a layout refusalscope knows", f"pass {LAYOUTS}")


def holds_an_sae(folder: Path) -> bool:
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
