"""A batch-invariant attention implementation.

Greedy output that changes with the batch size makes every experiment irreproducible: the
same prompt refuses in one sweep and complies in another. On CPU the projections are
row-invariant, but attention is not: with left padding the key length (and with it the
reduction order of the softmax-weighted sum) depends on the longest prompt in the batch,
and the fused SDPA kernel picks different blockings for different shapes. This module
registers `refusalscope` as a transformers attention implementation that computes the
scores, softmax and weighted sum in float32 with plain matmuls, where the padded keys
contribute exact zeros at the front of the reduction. Cost: the attention core runs in
fp32; for the prompt lengths used here (tens to hundreds of tokens) that is a few percent
of a forward pass (benchmarks/generation.py).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "refusalscope"


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(
        batch, heads * groups, length, dim
    )


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
    groups = query.shape[1] // key.shape[1]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q = query.float()
    k = _repeat_kv(key, groups).float()
    v = _repeat_kv(value, groups).float()
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : k.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        else:
            scores = scores + mask.float()
    weights = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    out = torch.matmul(weights, v).to(query.dtype)
    return out.transpose(1, 2).contiguous(), weights


def register() -> str:
    """Register the implementation with transformers (idempotent) and return its name."""
    AttentionInterface.register(NAME, invariant_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME
