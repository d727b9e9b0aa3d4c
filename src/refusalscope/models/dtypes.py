"""Which floating-point type a model runs in, and what `auto` means on this machine.

Kept apart from model loading so that provenance records (which must name the dtype a
result was computed in) can ask without importing the loader.
"""

from __future__ import annotations

import os

import torch

from ..errors import RefusalScopeError

DTYPE_ENV = "REFUSALSCOPE_DTYPE"
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def native_bf16(device: str = "cpu") -> bool:
    """Whether `device` computes bf16 matmuls in hardware (CUDA, or a CPU with AVX512-BF16/AMX)."""
    if device.startswith("cuda"):
        return True
    return bool(
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


def resolve_dtype(dtype: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """`auto` is bfloat16 where the hardware computes it natively, float32 otherwise.

    On a CPU without AVX512-BF16/AMX, bf16 matmuls are emulated and run several times
    slower than fp32 (measured in benchmarks/generation.py), so bf16 is not a free win
    there; on GPUs and bf16-capable CPUs it halves memory and is faster.

    `$REFUSALSCOPE_DTYPE` (bf16/fp32/fp16) overrides what `auto` picks, so a whole run —
    or the test suite — can be forced into the dtype another machine would choose.
    Explicit dtypes are never overridden.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype != "auto":
        raise RefusalScopeError(f"unknown dtype '{dtype}'", "use one of auto, bf16, fp32, fp16")
    forced = os.environ.get(DTYPE_ENV, "").strip().lower()
    if forced and forced != "auto":
        if forced not in _DTYPES:
            raise RefusalScopeError(
                f"${DTYPE_ENV}={forced!r} is not a dtype", f"set {DTYPE_ENV} to bf16, fp32 or fp16, or unset it"
            )
        return _DTYPES[forced]
    return torch.bfloat16 if native_bf16(device) else torch.float32
