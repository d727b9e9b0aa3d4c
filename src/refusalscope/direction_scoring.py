"""Scoring many candidate refusal directions per forward pass.

Selecting the refusal direction asks the same question of ~50–100 candidate vectors:
what is the model's first-token refusal score on these prompts with the candidate
ablated (or added)? Asked one candidate at a time, every forward holds a handful of
prompts, and a 2-core CPU spends much of its time on per-call overhead and small
matrices. Here the candidates go along the batch dimension instead: one padded batch
holds (candidate, prompt) rows, and per-row hooks apply each row's own edit. The
prompts are tokenised once, the chat template's shared prefix (Qwen's ~20-token default
system prompt) is computed once per candidate rather than once per row, and rows are
grouped by prompt length so little is spent on padding.

The edits match `steering.DirectionAblation(vec)` (project the direction out after the
embedding and every block) and `steering.ActAdd(vec, layer)` (add it after one block),
both at every token: their scores agree with one-at-a-time scoring within float32
rounding (tests/unit/test_direction_scoring.py). Padding tokens are edited too, which is
harmless: no real token attends to them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import RefusalScopeError
from .judges.first_token import refusal_log_odds
from .models.hooks import ForwardContext


@dataclass(frozen=True)
class Edit:
    """One candidate's edit: `kind` "ablate" (remove `vector`'s direction at every layer and
    the embedding) or "add" (add `vector` after block `layer`)."""

    kind: str
    vector: torch.Tensor
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("ablate", "add"):
            raise RefusalScopeError(f"unknown edit kind '{self.kind}'", "use 'ablate' or 'add'")
        if self.kind == "add" and self.layer is None:
            raise RefusalScopeError("an 'add' edit needs the layer it adds the vector after")
        if self.kind == "ablate" and float(self.vector.norm()) == 0:
            raise RefusalScopeError("cannot ablate the zero vector", "pass a non-zero direction")


@dataclass
class RowScores:
    """Per-row results of `score_rows`, in the order of the rows given."""

    log_odds: torch.Tensor  # [R] first-token refusal log-odds
    kl: torch.Tensor | None  # [R] KL(baseline || edited) of the next-token distribution, when asked


class _RowEdits:
    """The per-row edit tensors of the forward in flight, read by hooks at every point."""

    def __init__(self, chat, edits: Sequence[Edit]):
        d = chat.d_model
        dtype = torch.float32
        self.units = torch.zeros(len(edits), d, dtype=dtype)
        self.adds: dict[int, torch.Tensor] = {}
        for i, edit in enumerate(edits):
            vec = edit.vector.detach().to("cpu", dtype).reshape(-1)
            if vec.shape[0] != d:
                raise RefusalScopeError(
                    f"a candidate direction has {vec.shape[0]} entries but the model has d_model={d}"
                )
            if edit.kind == "ablate":
                self.units[i] = vec / vec.norm()
            else:
                assert edit.layer is not None  # an "add" edit names its layer (checked when built)
                chat.hooks.module(edit.layer)  # validates the layer
                self.adds.setdefault(int(edit.layer), torch.zeros(len(edits), d, dtype=dtype))[i] = vec
        self.any_ablation = bool(self.units.abs().sum() > 0)
        self.device = chat.device
        self.rows: torch.Tensor | None = None  # [B] edit index of each row of the current forward

    def hooks(self, chat) -> list:
        """(point, fn) pairs: ablation at the embedding and every block, additions at their layers."""
        out = []
        if self.any_ablation:
            units = self.units.to(self.device)

            def ablate(hidden, ctx):
                u = units[self.rows]  # [B, d]
                proj = torch.einsum("btd,bd->bt", hidden.float(), u)
                return hidden - (proj[..., None] * u[:, None, :]).to(hidden.dtype)

            out += [(point, ablate) for point in ["embed", *range(chat.n_layers)]]
        for layer, table in self.adds.items():
            table = table.to(self.device)

            def add(hidden, ctx, table=table):
                return hidden + table[self.rows][:, None, :].to(hidden.dtype)

            out.append((layer, add))
        return out


def _plan(lengths: Sequence[int], pairs: Sequence[tuple[int, int]], rows_per_forward: int) -> list[list[int]]:
    """Chunks of row indices: rows sorted by prompt length (longest first), so each padded
    batch holds prompts of similar length."""
    order = sorted(range(len(pairs)), key=lambda r: (-lengths[pairs[r][1]], pairs[r][0], pairs[r][1]))
    return [order[i : i + rows_per_forward] for i in range(0, len(order), rows_per_forward)]


def score_rows(
    chat,
    prompts: Sequence[str],
    edits: Sequence[Edit],
    pairs: Sequence[tuple[int, int]],
    refusal_token_ids: Sequence[int],
    *,
    baseline_logp: torch.Tensor | None = None,
    rows_per_forward: int = 64,
) -> RowScores:
    """First-token refusal log-odds (and, given `baseline_logp` [len(prompts), vocab] of the
    unedited model, the KL divergence from it) for each (edit index, prompt index) row."""
    return EditScorer(
        chat, prompts, edits, refusal_token_ids, baseline_logp=baseline_logp, rows_per_forward=rows_per_forward
    ).score(pairs)


def _prefix_cache(chat, state: _RowEdits, prefix: Sequence[int], edits: list[int]):
    """KV cache of the shared prefix under each of `edits` (one row per edit), computed once
    for all the chunks of a call: the prefix depends on the edit, not on the prompt."""
    device = chat.device
    ctx = ForwardContext(
        torch.ones(len(edits), len(prefix), dtype=torch.long, device=device),
        torch.full((len(edits),), len(prefix) + 1, device=device),
        0,
        torch.arange(len(edits), device=device),
        -1,
        "prefill",
    )
    state.rows = torch.tensor(edits, device=device)
    return chat.prefill_cache([list(prefix)] * len(edits), ctx)


def _forward_rows(
    chat, state: _RowEdits, tokens, rows: list[tuple[int, int]], shared: int, prefix, slot: dict
) -> torch.Tensor:
    """[B, vocab] float32 next-token logits of one chunk of (edit, prompt) rows."""
    device = chat.device
    state.rows = torch.tensor([e for e, _ in rows], device=device)
    if shared == 0:
        batch = chat.pad([tokens[p] for _, p in rows])
        ctx = ForwardContext(
            batch.attention_mask, batch.lengths, 0, torch.arange(len(rows), device=device), -1, "forward"
        )
        with chat.hooks.forward_context(ctx):
            out = chat.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
                logits_to_keep=1,
            )
        return out.logits[:, -1].float().cpu()
    cache = copy.deepcopy(prefix)  # each row starts from its own edit's prefix
    cache.batch_select_indices(torch.tensor([slot[e] for e, _ in rows], device=device))
    suffix = chat.pad([tokens[p][shared:] for _, p in rows])
    mask = torch.cat([torch.ones(len(rows), shared, dtype=torch.long, device=device), suffix.attention_mask], dim=1)
    positions = shared + (suffix.attention_mask.cumsum(-1) - 1).clamp(min=0)
    ctx = ForwardContext(mask, mask.sum(-1), shared, torch.arange(len(rows), device=device), -1, "prefill")
    out = chat.forward_over_cache(suffix.input_ids, mask, positions, cache, ctx)
    return out.logits[:, -1].float().cpu()


class EditScorer:
    """`score_rows` for one fixed set of prompts and edits, called many times (rounds of an
    adaptive screen): prompts are tokenised once and the shared prefix under each edit is
    computed once, at the first call."""

    def __init__(
        self,
        chat,
        prompts: Sequence[str],
        edits: Sequence[Edit],
        refusal_token_ids: Sequence[int],
        *,
        baseline_logp: torch.Tensor | None = None,
        rows_per_forward: int = 64,
    ):
        if rows_per_forward < 1:
            raise RefusalScopeError(f"rows_per_forward must be at least 1, got {rows_per_forward}")
        self.chat = chat
        self.tokens = chat.encode_prompts(list(prompts))
        self.edits = list(edits)
        self.refusal_token_ids = list(refusal_token_ids)
        self.baseline_logp = baseline_logp
        self.rows_per_forward = rows_per_forward
        self.shared = chat.shared_prefix(self.tokens)  # asked with no hooks of ours attached
        self.state = _RowEdits(chat, self.edits)
        self.prefix = None
        self.rows_scored = 0

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[int, int]]) -> RowScores:
        pairs = [(int(e), int(p)) for e, p in pairs]
        log_odds = torch.empty(len(pairs))
        kl = torch.empty(len(pairs)) if self.baseline_logp is not None else None
        if not pairs:
            return RowScores(log_odds, kl)
        chat = self.chat
        slot = {e: e for e in range(len(self.edits))}
        with chat.hooks.attached(self.state.hooks(chat)):
            if self.shared and self.prefix is None:
                self.prefix = _prefix_cache(
                    chat, self.state, self.tokens[0][: self.shared], list(range(len(self.edits)))
                )
            for chunk in _plan([len(t) for t in self.tokens], pairs, self.rows_per_forward):
                rows = [pairs[r] for r in chunk]
                logits = _forward_rows(chat, self.state, self.tokens, rows, self.shared, self.prefix, slot)
                log_odds[chunk] = refusal_log_odds(logits, self.refusal_token_ids)
                if kl is not None and self.baseline_logp is not None:
                    logp = torch.log_softmax(logits.double(), -1)
                    base = self.baseline_logp[[p for _, p in rows]]
                    kl[chunk] = (base.exp() * (base - logp)).sum(-1).float()
        self.rows_scored += len(pairs)
        return RowScores(log_odds, kl)


class AdaptiveScreen:
    """Rank candidates by their mean score on up to `n_prompts` prompts, scoring each
    candidate on only as many prompts as it takes to settle who is in the next group.

    `next_group(n)` returns the n best candidates not yet taken. Candidates are scored
    prompt by prompt (all on the same prompts, in the same order); a candidate stops being
    scored once it is clearly worse than every member of the group on the prompts both
    have seen (paired mean difference above `z` standard errors, after at least
    `min_prompts`); the group is settled when no candidate outside it is in contention, or
    when every one still in contention has seen all prompts (then the ranking is that of
    the exhaustive screen).
    A candidate left behind is scored further only if a later group needs it. With
    `z=None` every candidate sees every prompt (the exhaustive screen).
    """

    def __init__(
        self,
        score_fn: Callable[[list[tuple[int, int]]], torch.Tensor],
        n_candidates: int,
        n_prompts: int,
        *,
        z: float | None = 3.0,
        min_prompts: int = 3,
        min_rows: int = 16,
    ):
        self.score_fn = score_fn  # [(candidate, prompt)] -> [R] scores, lower is better
        self.scores: list[list[float]] = [[] for _ in range(n_candidates)]
        self.n_prompts = n_prompts
        self.z = z
        self.min_prompts = max(2, min_prompts)
        self.min_rows = (
            min_rows  # a round scores several prompts when few candidates are left: tiny batches waste the CPU
        )
        self.taken: set[int] = set()

    def mean(self, c: int) -> float:
        s = self.scores[c]
        return sum(s) / len(s) if s else float("inf")

    def _advance(self, cands: Sequence[int], upto: int) -> None:
        pairs = [(c, p) for c in cands for p in range(len(self.scores[c]), min(upto, self.n_prompts))]
        if pairs:
            values = self.score_fn(pairs)
            for (c, p), v in zip(pairs, values.tolist()):
                assert p == len(self.scores[c])
                self.scores[c].append(v)

    def clearly_worse(self, c: int, than: int) -> bool:
        if self.z is None:
            return False
        k = min(len(self.scores[c]), len(self.scores[than]))
        if k < self.min_prompts:
            return False
        d = torch.tensor(self.scores[c][:k], dtype=torch.float64) - torch.tensor(
            self.scores[than][:k], dtype=torch.float64
        )
        return bool(d.mean() > 0 and d.mean() > self.z * d.std() / k**0.5)

    def next_group(self, n: int) -> list[int]:
        pool = [c for c in range(len(self.scores)) if c not in self.taken]
        if not pool or n < 1:
            return []
        first = self.n_prompts if self.z is None else min(self.min_prompts, self.n_prompts)
        self._advance(pool, first)
        while True:
            ranked = sorted(pool, key=lambda c: (self.mean(c), c))
            top, rest = ranked[:n], ranked[n:]
            contenders = [c for c in rest if not all(self.clearly_worse(c, t) for t in top)]
            active = [c for c in top + contenders if len(self.scores[c]) < self.n_prompts]
            if not contenders or not active:
                break
            step = max(1, -(-self.min_rows // len(active)))
            self._advance(active, min(len(self.scores[c]) for c in active) + step)
        self.taken.update(top)
        return top
