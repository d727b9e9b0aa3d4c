"""A batch-invariant attention implementation, with its core precision as a switch.

Greedy output that changes with the batch size makes every experiment irreproducible: the
same prompt refuses in one sweep and complies in another. On CPU the projections are
row-invariant, but attention is not: with left padding the key length (and with it the
reduction order of the softmax-weighted sum) depends on the longest prompt in the batch,
and the fused SDPA kernel picks different blockings for different shapes. This module
registers `refusalscope` as a transformers attention implementation that computes the
scores, softmax and weighted sum with plain matmuls in the *core* precision and rounds the
result back to the model's dtype.

The core precision is a switch, `REFUSALSCOPE_ATTENTION` in the environment or
`set_attention_core(model, name)` / `load_model(..., attention=name)` per model:

- `fp64` (the default): the reduction-order differences that padding and key length cause
  (~1e-16) vanish when the result is rounded back, so logits are bit-identical whatever
  the batch size, the padding or a shared prefix (tests assert it). On 2 CPU cores it
  costs ~20% of a sweep's forward time (benchmarks/sweep.py).
- `fp32`: faster (a batch-16 first-token pass 13% faster at best on the default model),
  only nearly batch-invariant: on tiny models logits differ in the last bits. On the
  default model neither core is bit-identical across batch sizes (batch 1 vs 16: fp64
  1.3e-5, fp32 1.6e-5; no greedy reply changed on 32 prompts; README, Benchmarks,
  `attention_core.py`). For GPUs (docs/scale.md) and throughput runs. fp64 stays the
  default: stage caches are keyed by dtype, not by core.

Grouped-query attention is computed without repeating keys and values per query head:
each key/value head is multiplied with its group of query heads stacked along the
sequence axis (the same dot products, fewer copies and casts).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..errors import RefusalScopeError

NAME = "refusalscope"
#: the attention core's precision, by name (see the module docstring)
CORES: dict[str, torch.dtype] = {"fp64": torch.float64, "fp32": torch.float32}
DEFAULT_CORE = "fp64"
ENV = "REFUSALSCOPE_ATTENTION"
CONFIG_KEY = "refusalscope_attention"  # set on a model's config by set_attention_core


def check_core(name: str, where: str = "attention") -> str:
    """`name` if it is a known core precision, else one clear error."""
    if name not in CORES:
        raise RefusalScopeError(f"unknown {where} core '{name}'", f"use one of {', '.join(CORES)} (e.g. {ENV}=fp64)")
    return name


def attention_core(config: Any = None) -> str:
    """The core precision in effect for a model's config: its own setting, else
    $REFUSALSCOPE_ATTENTION, else fp64."""
    name = getattr(config, CONFIG_KEY, None) if config is not None else None
    if name:
        return check_core(str(name))
    env = os.environ.get(ENV)
    return check_core(env.strip(), f"${ENV}") if env and env.strip() else DEFAULT_CORE


def set_attention_core(model: torch.nn.Module, name: str | None) -> str:
    """Fix the attention core precision of one model (None: follow the environment) and
    return the name now in effect."""
    configs = {id(m.config): m.config for m in model.modules() if getattr(m, "config", None) is not None}
    value = check_core(name) if name is not None else None
    for config in configs.values():
        setattr(config, CONFIG_KEY, value)
    return attention_core(getattr(model, "config", None))


def invariant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("attention sinks are not supported by refusalscope attention")
    core = CORES[attention_core(getattr(module, "config", None))]
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[-2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # [B, Hkv, groups * T, D]: query heads h = i * groups + j share key/value head i
    q = query.to(core).reshape(batch, kv_heads, groups * length, dim)
    k = key.to(core)
    v = value.to(core)
    scores = (torch.matmul(q, k.transpose(2, 3)) * scale).view(batch, heads, length, keys)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :keys]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(core).min)
        else:
            scores = scores + mask.to(core)
    weights = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    out = torch.matmul(weights.view(batch, kv_heads, groups * length, keys), v)
    out = out.view(batch, heads, length, dim).to(query.dtype)
    return out.transpose(1, 2).contiguous(), weights


def register() -> str:
    """Register the implementation with transformers (idempotent) and return its name."""
    AttentionInterface.register(NAME, invariant_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME
