"""Sparse autoencoders: the module, files (SAELens layout and others), training, metrics."""

from .model import ARCHITECTURES, SAE, SAEConfig, canonical_architecture

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "canonical_architecture", "load_sae", "save_sae"]


def __getattr__(name: str):
    # file I/O pulls in safetensors/hub code; import it on first use
    if name in ("load_sae", "save_sae"):
        from . import io

        return getattr(io, name)
    raise AttributeError(name)
