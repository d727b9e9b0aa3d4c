"""Which words of a jailbreak turn the refusal latents down?

Method: gradient × input on the token embeddings. The target is a latent group's mean
activation at the post-instruction positions (the same number `suppression` compares);
each instruction token t gets g_t · e_t, the first-order change of that activation when
t's embedding is zeroed. Negative scores suppress the group.

Why this method: it needs one forward and one backward per prompt, whatever the prompt's
length; leave-one-token-out (LOO) is the faithful ground truth but costs one forward per
token (PAIR and template prompts run to hundreds of tokens, on 2 CPU cores), and
integrated gradients costs ~10 forwards and backwards per prompt. So gradient × input
ranks every token of every prompt, and `loo_check` measures on a sample how well it
agrees with LOO (rank correlation of the scores with the real effect of deleting each
token; top-token agreement), which the report prints next to the word list.

Words: scores are summed over the tokens of each word (character offsets from the fast
tokenizer), and words are ranked across prompts by mean suppression per occurrence.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import RefusalScopeError
from ..stats import Estimate, bootstrap
from .latents import LatentGroup, group_activations

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..models.hooks import ForwardContext

WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


@dataclass
class TokenScores:
    """Gradient × input of one prompt's instruction tokens."""

    prompt: str
    token_ids: list[int]  # the whole formatted sequence
    positions: list[int]  # sequence index of each instruction token
    spans: list[tuple[int, int]]  # character span of each instruction token within `prompt`
    scores: np.ndarray  # one per instruction token; < 0: lowers the group's activation
    activation: float
    tags: dict = field(default_factory=dict)

    def pieces(self) -> list[str]:
        return [self.prompt[a:b] for a, b in self.spans]


def instruction_tokens(chat: ChatModel, prompt: str) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """(formatted token ids, positions of the request's own tokens, their spans in `prompt`)."""
    text = chat.format(prompt)
    start = text.find(prompt)
    if start < 0:
        raise RefusalScopeError("the chat template changed the request's text", "pass the request as plain text")
    enc = chat.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if ids != chat.encode(text):
        raise RefusalScopeError("the tokenizer's offsets do not match its encoding", "use a fast tokenizer")
    end = start + len(prompt)
    positions, spans = [], []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if b > start and a < end and b > a:
            positions.append(i)
            spans.append((max(a, start) - start, min(b, end) - start))
    return ids, positions, spans


def attribute_tokens(
    chat: ChatModel, group: LatentGroup, prompts: Sequence[str], batch_size: int = 4, progress: bool = False
) -> list[TokenScores]:
    """Gradient × input of every instruction token of every prompt (see the module docstring)."""
    from tqdm.auto import tqdm

    group.check(chat)
    prepared = [instruction_tokens(chat, p) for p in prompts]
    lists = [ids for ids, _, _ in prepared]
    n_post = len(chat.eoi_ids)
    out: list[TokenScores | None] = [None] * len(prompts)
    for batch in tqdm(list(chat.batches(lists, batch_size)), desc="token attribution", disable=not progress):
        store: dict = {}

        def leaf(hidden: torch.Tensor, ctx: ForwardContext):
            e = hidden.detach().float().requires_grad_(True)
            store["embed"] = e  # noqa: B023 (used within this iteration)
            return e.to(hidden.dtype)

        with torch.enable_grad(), chat.hooks.attached([("embed", leaf)]):
            captured = chat.run_until(batch, group.layers)  # stops after the group's deepest layer
            value = group.per_token({layer: captured[layer][:, -n_post:] for layer in group.layers}).mean(-1)  # [B]
            value.sum().backward()
        e = store["embed"]
        gx = (e.grad * e.detach()).sum(-1)  # [B, T]
        width = gx.shape[1]
        for row, i in enumerate(batch.index):
            ids, positions, spans = prepared[i]
            offset = width - len(ids)
            scores = np.array([float(gx[row, offset + p]) for p in positions])
            out[i] = TokenScores(prompts[i], ids, positions, spans, scores, float(value[row].detach()))
    return out  # type: ignore[return-value]


def leave_one_out(
    chat: ChatModel, group: LatentGroup, item: TokenScores, which: Sequence[int], batch_size: int = 8
) -> np.ndarray:
    """Activation change when each listed instruction token (index into item.positions) is
    deleted: positive = the token was holding the activation down."""
    full = [item.token_ids]
    cut = [item.token_ids[: item.positions[k]] + item.token_ids[item.positions[k] + 1 :] for k in which]
    acts = group_activations(chat, [group], [], batch_size, token_lists=full + cut)[group.name]
    return acts[1:] - acts[0]


def loo_check(
    chat: ChatModel,
    group: LatentGroup,
    items: Sequence[TokenScores],
    n_prompts: int = 4,
    max_tokens: int = 24,
    seed: int = 0,
) -> dict:
    """How well gradient × input predicts the real effect of deleting a token, on a sample.

    Per sampled prompt: the `max_tokens` tokens with the largest |score| (all of them for
    short prompts), their LOO effects, and the Spearman correlation between suppression
    (−score) and LOO effect; whether the top suppressing token by each method is the same."""
    from scipy.stats import spearmanr

    rng = random.Random(seed)
    chosen = rng.sample(range(len(items)), min(n_prompts, len(items)))
    rows = []
    for i in chosen:
        item = items[i]
        if len(item.positions) < 3:
            continue
        order = np.argsort(-np.abs(item.scores))[:max_tokens].tolist()
        effect = leave_one_out(chat, group, item, order)
        suppression = -item.scores[order]
        rho = (
            float(spearmanr(suppression, effect).statistic)
            if np.ptp(effect) > 0 and np.ptp(suppression) > 0
            else float("nan")
        )
        rows.append(
            {
                "prompt_index": i,
                "n_tokens": len(order),
                "spearman": rho,
                "top_agree": bool(order[int(np.argmax(suppression))] == order[int(np.argmax(effect))]),
                "pieces": [item.pieces()[k] for k in order],
                "grad_x_input": item.scores[order].tolist(),
                "loo_effect": effect.tolist(),
            }
        )
    rhos = [r["spearman"] for r in rows if not np.isnan(r["spearman"])]
    return {
        "method": "gradient x input vs leave-one-token-out",
        "n_prompts": len(rows),
        "mean_spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "top_agreement": float(np.mean([r["top_agree"] for r in rows])) if rows else float("nan"),
        "prompts": rows,
    }


@dataclass
class WordScore:
    word: str
    suppression: Estimate  # mean −(grad × input) per occurrence, summed over the word's tokens
    n_prompts: int
    attacks: dict[str, int]

    def to_dict(self) -> dict:
        return {
            "word": self.word,
            "suppression": self.suppression.to_dict(),
            "n_prompts": self.n_prompts,
            "attacks": self.attacks,
        }


def word_scores(items: Sequence[TokenScores], min_prompts: int = 3, seed: int = 0) -> list[WordScore]:
    """Words ranked by mean suppression per occurrence, over words seen in ≥ `min_prompts` prompts."""
    values: dict[str, list[float]] = defaultdict(list)
    prompts: dict[str, set[int]] = defaultdict(set)
    attacks: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i, item in enumerate(items):
        starts = np.array([a for a, _ in item.spans])
        ends = np.array([b for _, b in item.spans])
        for m in WORD.finditer(item.prompt):
            inside = (starts < m.end()) & (ends > m.start())
            if not inside.any():
                continue
            word = m.group().lower()
            values[word].append(float(-item.scores[inside].sum()))
            prompts[word].add(i)
            attacks[word][item.tags.get("attack", "")] += 1
    out = [
        WordScore(w, bootstrap(v, seed=seed), len(prompts[w]), dict(attacks[w]))
        for w, v in values.items()
        if len(prompts[w]) >= min_prompts
    ]
    return sorted(out, key=lambda s: -s.suppression.value)
