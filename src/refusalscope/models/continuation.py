"""Log-likelihoods of continuations, with the context's KV cache computed once.

Multiple-choice benchmarks (evaluation/capability.py) ask one question and score several
answers: running the question once and every answer from a copy of its KV cache costs
one prefill per question instead of one per answer, and letter scoring (single-token
answers) costs nothing beyond that prefill. This drives the model's cache directly, which
is why it lives with `ChatModel` in `models/` and not with the benchmarks.

In hooks, context tokens are the prompt (phase "prefill") and continuation tokens are
reply tokens (phase "decode", rows = the context's row), exactly as if the continuation
had been generated; so position keywords ('prompt', 'generated', [-1]) and conditional
gates mean what they mean in `ChatModel.generate`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import RefusalScopeError
from .hooks import ForwardContext

if TYPE_CHECKING:
    from transformers import DynamicCache

    from ..types import Interventions
    from .chat import ChatModel

#: one scoring request: (context token ids, [continuation token ids, ...])
Request = tuple[Sequence[int], Sequence[Sequence[int]]]

MAX_PREFILL_TOKENS = 4096  # tokens (batch x padded length) per prompt forward
MAX_LOGITS = 2**26  # float32 logits per continuation forward (256 MiB)


def prefill_groups(lengths: Sequence[int], batch_size: int, max_tokens: int, min_fill: float = 0.8) -> list[list[int]]:
    """Indices grouped longest first: at most `batch_size` and ~`max_tokens` padded tokens
    per group, and no row shorter than `min_fill` of the group's longest (padding is pure
    waste on a CPU, where a batch of one long prompt already fills the matmuls)."""
    if batch_size < 1:
        raise RefusalScopeError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if (
            group
            and len(group) < batch_size
            and (len(group) + 1) * lengths[group[0]] <= max_tokens
            and lengths[i] >= min_fill * lengths[group[0]]
        ):
            group.append(i)
        else:
            groups.append([i])
    return groups


def select_cache(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A copy of `cache` holding the given batch rows (repeats allowed); `cache` is untouched."""
    sub = copy.copy(cache)
    sub.layers = [copy.copy(layer) for layer in cache.layers]
    sub.batch_select_indices(rows)
    return sub


@torch.no_grad()
def continuation_logprobs(
    chat: ChatModel,
    requests: Sequence[Request],
    interventions: Interventions = None,
    batch_size: int = 16,
    *,
    max_prefill_tokens: int = MAX_PREFILL_TOKENS,
    max_logits: int = MAX_LOGITS,
) -> list[list[float]]:
    """Summed log-probability (nats) of each continuation given its context.

    `requests` holds (context token ids, [continuation token ids, ...]). Contexts run once
    each (batched, left-padded, KV-cached); every continuation's first token is scored
    from its context's last logits, its other tokens from a copy of the context's cache,
    all continuations of a batch together, at most `max_logits` float32 logits at a time.
    """
    for n, (context, continuations) in enumerate(requests):
        if len(context) == 0:
            raise RefusalScopeError(f"request {n} has an empty context", "every context needs at least one token")
        if len(continuations) == 0:
            raise RefusalScopeError(f"request {n} has no continuations to score")
        if any(len(c) == 0 for c in continuations):
            raise RefusalScopeError(f"request {n} has an empty continuation", "every continuation needs a token")
    out = [[0.0] * len(conts) for _, conts in requests]
    with chat.attached(interventions):
        for index in prefill_groups([len(c) for c, _ in requests], batch_size, max_prefill_tokens):
            _score_group(chat, requests, index, out, max_logits)
    return out


def _score_group(
    chat: ChatModel, requests: Sequence[Request], index: list[int], out: list[list[float]], max_logits: int
) -> None:
    """Score the continuations of the requests `index` into `out` (one prefill, then the
    multi-token continuations in chunks of similar length)."""
    from transformers import DynamicCache

    model, device = chat.model, chat.device
    batch = chat.pad([requests[i][0] for i in index], index)
    lengths = batch.lengths
    batch_id = chat.new_batch_id()
    multi = any(len(cont) > 1 for i in index for cont in requests[i][1])
    cache = DynamicCache(config=model.config) if multi else None  # single-token continuations need no cache
    ctx = ForwardContext(batch.attention_mask, lengths, 0, torch.arange(len(index), device=device), batch_id, "prefill")
    with chat.hooks.forward_context(ctx):
        last = (
            model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                past_key_values=cache,
                use_cache=multi,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .float()
        )
    first = torch.log_softmax(last, -1).cpu()
    tails = []  # (row, request, continuation, token ids) of continuations longer than one token
    for r, i in enumerate(index):
        for c, cont in enumerate(requests[i][1]):
            out[i][c] = float(first[r, cont[0]])
            if len(cont) > 1:
                tails.append((r, i, c, list(cont)))
    tails.sort(key=lambda t: -len(t[3]))  # similar lengths together: little padding
    start = 0
    while start < len(tails):
        assert cache is not None  # built whenever some continuation has more than one token
        span = len(tails[start][3]) - 1
        n = max(1, min(len(tails) - start, max_logits // (span * last.shape[-1])))
        chunk, start = tails[start : start + n], start + n
        ids = torch.full((n, span), chat.tokenizer.pad_token_id, dtype=torch.long)
        targets = torch.zeros((n, span), dtype=torch.long)
        keep = torch.zeros((n, span), dtype=torch.long)
        for k, (*_, cont) in enumerate(chunk):  # right-padded: pads come after every real token
            ids[k, : len(cont) - 1] = torch.tensor(cont[:-1])
            targets[k, : len(cont) - 1] = torch.tensor(cont[1:])
            keep[k, : len(cont) - 1] = 1
        ids, targets, keep = ids.to(device), targets.to(device), keep.to(device)
        rows = torch.tensor([t[0] for t in chunk], device=device)
        mask = torch.cat([batch.attention_mask[rows], keep], dim=1)
        positions = lengths[rows, None] + torch.arange(span, device=device)[None]
        ctx = ForwardContext(mask, lengths[rows], batch.input_ids.shape[1], rows, batch_id, "decode")
        with chat.hooks.forward_context(ctx):
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=select_cache(cache, rows),
                use_cache=True,
            ).logits.float()
        logp = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
        del logits
        sums = (logp * keep).sum(-1).cpu()
        for k, (_, i, c, _) in enumerate(chunk):
            out[i][c] += float(sums[k])
