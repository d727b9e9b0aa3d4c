"""The token stream an SAE is trained on.

Chat SAEs reconstruct the refusal direction far better than SAEs trained on base text
(Yeo et al.), so the stream mixes three kinds of documents:
  - chat_answer: a harmful or harmless request with the model's *own* greedy reply,
    refusals included, formatted with the chat template;
  - chat: a request alone, ending in the template tokens that precede the reply (where
    the refusal direction is read);
  - text: ordinary text (WikiText-2, Tiny Shakespeare), so that features of ordinary
    language are not all forced onto chat features.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .activations import Document

if TYPE_CHECKING:
    from ..models.chat import ChatModel


def shared_prefix_length(chat: ChatModel) -> int:
    """Leading tokens that every formatted request shares (template start, default system prompt)."""
    a = chat.encode(chat.format("Tell me about the sea."))
    b = chat.encode(chat.format("Why is 7 a prime number?"))
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    # keep the token right before the request if it is part of it (e.g. a leading space)
    return max(1, n)


@dataclass
class CorpusSpec:
    """How many documents of each kind; the preset decides."""

    n_answer_harmful: int = 32
    n_answer_harmless: int = 32
    n_chat_harmful: int = 200
    n_chat_harmless: int = 400
    n_text_chunks: int = 160
    context_length: int = 128
    answer_tokens: int = 40
    seed: int = 0


def text_chunks(chat: ChatModel, texts: Sequence[str], context_length: int, n_chunks: int, seed: int) -> list[Document]:
    """Fixed-length windows of ordinary text, sampled (seeded) from the given texts."""
    windows: list[list[int]] = []
    for text in texts:
        ids = chat.tokenizer(text, add_special_tokens=False)["input_ids"]
        windows.extend(ids[i : i + context_length] for i in range(0, len(ids) - context_length + 1, context_length))
    rng = random.Random(seed)
    rng.shuffle(windows)
    return [Document(tokens=w, kind="text", skip=1) for w in windows[:n_chunks]]


def build_corpus(
    chat: ChatModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    texts: Sequence[str],
    spec: CorpusSpec,
    answers: dict[str, str] | None = None,
) -> list[Document]:
    """Assemble the document list (deterministic for a given spec and inputs).

    `answers` maps a request to the model's own reply (see generations.cached_replies);
    requests without an answer are used as prompt-only chat documents.
    """
    rng = random.Random(spec.seed)
    harmful = list(harmful)
    harmless = list(harmless)
    rng.shuffle(harmful)
    rng.shuffle(harmless)
    answers = answers or {}
    prefix = shared_prefix_length(chat)
    docs: list[Document] = []

    def conversation(prompt: str, reply: str) -> list[int]:
        text = chat.format(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}], add_generation_prompt=False
        )
        return chat.encode(text)[: spec.context_length]

    answered = [p for p in harmful if p in answers][: spec.n_answer_harmful]
    answered += [p for p in harmless if p in answers][: spec.n_answer_harmless]
    docs += [Document(conversation(p, answers[p]), "chat_answer", skip=prefix) for p in answered]
    used = set(answered)
    chat_prompts = [p for p in harmful if p not in used][: spec.n_chat_harmful]
    chat_prompts += [p for p in harmless if p not in used][: spec.n_chat_harmless]
    docs += [Document(chat.encode(chat.format(p))[: spec.context_length], "chat", skip=prefix) for p in chat_prompts]
    docs += text_chunks(chat, texts, spec.context_length, spec.n_text_chunks, spec.seed)
    rng.shuffle(docs)
    return docs


def answer_prompts(harmful: Sequence[str], harmless: Sequence[str], spec: CorpusSpec) -> list[str]:
    """The requests whose replies `build_corpus` will want (same shuffle as build_corpus)."""
    rng = random.Random(spec.seed)
    harmful = list(harmful)
    harmless = list(harmless)
    rng.shuffle(harmful)
    rng.shuffle(harmless)
    return harmful[: spec.n_answer_harmful] + harmless[: spec.n_answer_harmless]
