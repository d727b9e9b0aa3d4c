"""A batch-invariant attention implementation.

Greedy output that changes with the batch size makes every experiment irreproducible: the
same prompt refuses in one sweep and complies in another. On CPU the projections are
row-invariant, but attention is not: with left padding the key length (and with it the
reduction order of the softmax-weighted sum) depends on the longest prompt in the batch,
and the fused SDPA kernel picks different blockings for different shapes. This module
registers `refusalscope` as a transformers attention implementation that computes the
scores, softmax and weighted sum in float64 with plain matmuls and rounds the result back
to the model's dtype: the reduction-order differences that padding and key length cause
are far below that rounding. Cost: the attention core runs in fp64; for the prompt lengths
used here (tens to hundreds of tokens) that is a few percent of a forward pass
(benchmarks/generation.py).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "refusalscope"
# float64: the reductions of the attention core (softmax sums, the weighted sum of values)
# are accumulated in an order that depends on the key length and on where padding sits;
# in double precision those differences (~1e-16) vanish when the result is rounded back to
# the model's dtype, so the output does not depend on batching or on a shared prefix.
CORE_DTYPE = torch.float64


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


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
    q = query.to(CORE_DTYPE)
    k = _repeat_kv(key, groups).to(CORE_DTYPE)
    v = _repeat_kv(value, groups).to(CORE_DTYPE)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : k.shape[-2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(CORE_DTYPE).min)
        else:
            scores = scores + mask.to(CORE_DTYPE)
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
