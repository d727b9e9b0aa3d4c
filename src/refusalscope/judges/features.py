"""What the learned judge reads: a small local model's residual stream over the request
and the reply, plus a few cheap text features.

Why these features. Refusals that avoid stock phrases ("It is illegal and dangerous
to…", a jailbreak persona declining) and replies that quietly answer another question
are what a phrase list misses. A language model that reads the request and then the reply
represents both "this declines" and "this is about something else"; a linear read-out of
its residual stream picks that up across wordings. The text features add what a model
prefix sees poorly: whether a refusal phrase occurs anywhere, the reply's length, and how
much of the request's vocabulary the reply takes up (a reply that shares none of it is
usually a deflection).

Cost is budgeted for a 2-core CPU: the request is cut to `prompt_tokens`, the reply to
its first `reply_tokens` (refusals declare themselves early), and the forward stops at the
deepest layer read (`ChatModel.iter_residual`), in fp32.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RefusalScopeError
from .substring import SubstringJudge

if TYPE_CHECKING:
    from ..models.chat import ChatModel

POOLS = ("reply_mean", "opening_mean", "last")
TEXT_FEATURES = (
    "substring_head",
    "substring_anywhere",
    "log_chars",
    "empty",
    "request_overlap",
    "request_overlap_head",
)

_WORDS = re.compile(r"[a-z][a-z']+")
# function words carry no topic: left out of the request/reply overlap
_STOP = frozenset(
    """about above after again against all also an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers him his how if in into is it its itself just me more most my no nor not now of off on once only or other
    our out over own same she should so some such than that the their them then there these they this those through
    to too under until up very was we were what when where which while who whom why will with would you your yours
    tell give explain describe write make get know need want please way ways best good some""".split()
)


@dataclass(frozen=True)
class FeatureConfig:
    """How replies become feature vectors; saved with the judge so it is read the same way."""

    model: str = "smollm2-135m-instruct"
    layer: int = 12
    prompt_tokens: int = 48
    reply_tokens: int = 64
    opening_tokens: int = 8
    batch_size: int = 32
    pools: tuple[str, ...] = ("reply_mean",)  # all of POOLS: no better under leave-one-set-out (README)
    text_features: tuple[str, ...] = TEXT_FEATURES
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pools"], out["text_features"] = list(self.pools), list(self.text_features)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("pools", "text_features"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def names(self, d_model: int) -> list[str]:
        """Column names, model features first (pool/unit), then text features."""
        return [f"{p}/{i}" for p in self.pools for i in range(d_model)] + list(self.text_features)


def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ letters that are not function words, cut to 5 letters
    (a crude stem: 'poisoning' and 'poison' meet)."""
    return {w[:5] for w in _WORDS.findall(text.lower()) if len(w) >= 3 and w not in _STOP}


def text_features(prompts: Sequence[str], replies: Sequence[str], names: Sequence[str] = TEXT_FEATURES) -> np.ndarray:
    """[N, len(names)] cheap features of each (prompt, reply) pair."""
    head = SubstringJudge()
    anywhere = SubstringJudge(window=None)
    rows = []
    for prompt, reply in zip(prompts, replies):
        asked = content_words(prompt)
        said = content_words(reply)
        said_head = content_words(reply[:300])
        values = {
            "substring_head": float(head.verdict(reply).refused),
            "substring_anywhere": float(anywhere.verdict(reply).refused),
            "log_chars": math.log1p(len(reply.strip())),
            "empty": float(not reply.strip()),
            "request_overlap": len(asked & said) / len(asked) if asked else 1.0,
            "request_overlap_head": len(asked & said_head) / len(asked) if asked else 1.0,
        }
        unknown = [n for n in names if n not in values]
        if unknown:
            raise RefusalScopeError(f"unknown text feature(s) {unknown}", f"use some of {', '.join(values)}")
        rows.append([values[n] for n in names])
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(names))


def pair_tokens(
    chat: ChatModel, prompts: Sequence[str], replies: Sequence[str], cfg: FeatureConfig
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each chat-formatted request (cut to `prompt_tokens`) followed by the
    first `reply_tokens` of its reply; returns (token lists, reply lengths in tokens)."""
    tok = chat.tokenizer
    lists, lengths = [], []
    for prompt, reply in zip(prompts, replies):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) > cfg.prompt_tokens:
            prompt = chat.decode(ids[: cfg.prompt_tokens])
        head = chat.encode(chat.format(prompt))
        body = tok(reply, add_special_tokens=False)["input_ids"][: cfg.reply_tokens]
        lists.append(head + body)
        lengths.append(len(body))
    return lists, lengths


def pool(hidden, reply_len: int, cfg: FeatureConfig) -> np.ndarray:
    """Pool one sequence's [T, d] activations over its reply positions. An empty reply is
    read at the last template token (the model about to answer)."""
    span = hidden[-reply_len:] if reply_len else hidden[-1:]
    parts = {
        "reply_mean": span.mean(0),
        "opening_mean": span[: cfg.opening_tokens].mean(0),
        "last": span[-1],
    }
    unknown = [p for p in cfg.pools if p not in parts]
    if unknown:
        raise RefusalScopeError(f"unknown pooling(s) {unknown}", f"use some of {', '.join(parts)}")
    return np.concatenate([parts[p].numpy() for p in cfg.pools])


def model_features(
    chat: ChatModel,
    prompts: Sequence[str],
    replies: Sequence[str],
    cfg: FeatureConfig,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[int, np.ndarray]:
    """{layer: [N, len(pools) * d_model]} pooled residual activations after each layer
    (default: `cfg.layer`), in input order, from one forward pass per batch."""
    layers = list(layers) if layers is not None else [cfg.layer]
    bad = [layer for layer in layers if not 0 <= layer < chat.n_layers]
    if bad:
        raise RefusalScopeError(
            f"layer(s) {bad} out of range for {chat.info.name} ({chat.n_layers} layers)",
            f"use layers in [0, {chat.n_layers - 1}]",
        )
    lists, lengths = pair_tokens(chat, prompts, replies, cfg)
    width = len(cfg.pools) * chat.d_model
    out = {layer: np.zeros((len(lists), width), dtype=np.float32) for layer in layers}
    if not lists:
        return out
    for index, chunk in chat.iter_residual(
        None, layers, positions="all", batch_size=cfg.batch_size, token_lists=lists, progress=progress
    ):
        for layer in layers:
            for row, hidden in zip(index, chunk[layer]):
                out[layer][row] = pool(hidden, lengths[row], cfg)
    return out


def features(
    chat: ChatModel, prompts: Sequence[str], replies: Sequence[str], cfg: FeatureConfig, progress: bool = False
) -> np.ndarray:
    """The judge's full feature matrix: model features at `cfg.layer`, then text features."""
    model = model_features(chat, prompts, replies, cfg, progress=progress)[cfg.layer]
    return np.concatenate([model, text_features(prompts, replies, cfg.text_features)], axis=1)
