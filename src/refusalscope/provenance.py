"""What produced a result: package versions, hashes, seeds.

Every artefact refusalscope writes (an SAE, a features.json, a results row) embeds this,
so a number in a report can always be traced back to the code and inputs that made it.
"""

from __future__ import annotations

import hashlib
import platform
import random
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

_PACKAGES = ("refusalscope", "torch", "transformers", "safetensors", "numpy", "tokenizers")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """A content hash of named tensors, independent of file layout or dtype of storage."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
