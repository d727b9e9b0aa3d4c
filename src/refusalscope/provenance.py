"""What produced a result: package versions, hashes, seeds.

Every artefact refusalscope writes (an SAE, a features.json, a results row) embeds this,
so a number in a report can always be traced back to the code and inputs that made it.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

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


# the CPU features that decide which kernels (and so which rounding) a float run gets:
# greedy outputs differ between bf16 and fp32, and bf16 is native only with AVX512-BF16/AMX
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "neon", "asimd")


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the flags in CPU_FLAGS it has (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags]}


def environment() -> dict[str, Any]:
    """Versions plus the machine facts that change numbers: CPU flags, kernel level, threads,
    and the dtype `auto` resolves to here (after $REFUSALSCOPE_DTYPE)."""
    from .models.dtypes import resolve_dtype

    return {
        "versions": package_versions(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "auto_dtype": str(resolve_dtype("auto")).removeprefix("torch."),
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
