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
    """`auto` is bfloat16 on a GPU and float32 on every CPU, native bf16 or not.

    Why fp32 even where the CPU has AVX512-BF16 (benchmarks/generation.py, Qwen2.5-0.5B,
    2-core AMD EPYC with avx512_bf16, torch 2.13 CPU): bf16 decodes 2-5x faster (batch 8:
    154 vs 31 tok/s) but prefills 1.8-4x slower (batch 8: 80 vs 289 tok/s; copies, casts
    and elementwise ops dominate), and nearly everything refusalscope runs — first-token
    refusal scores, multiple-choice log-likelihoods, attribution, direction selection, SAE
    harvests — is prefill. On CPUs without native bf16 it is emulated and slower still.
    One CPU dtype everywhere also keeps greedy outputs identical across machines. Pass
    `--dtype bf16` for decode-heavy work (long chats) on a CPU with native bf16.

    `$REFUSALSCOPE_DTYPE` (bf16/fp32/fp16) overrides what `auto` picks, so a whole run —
    or the test suite — can be forced into another dtype. Explicit dtypes are never
    overridden.
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
    return torch.bfloat16 if device.startswith("cuda") else torch.float32
