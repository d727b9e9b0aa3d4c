"""Cross-entropy of the model on text it did not write and on its own answers.

The cheapest capability signal there is: one forward pass per document, no generation,
and sensitive to any intervention that damages the residual stream. Scored tokens start
after each document's `skip` prefix (for a conversation: the prompt), so the loss on "the
model's own harmless answers" measures only the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import RefusalScopeError
from ..sae.activations import Document
from ..stats import Estimate, bootstrap

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..types import Interventions


def answer_documents(
    chat: ChatModel, prompts: Sequence[str], replies: Sequence[str], max_tokens: int = 160
) -> list[Document]:
    """Conversations (request + the model's reply); only the reply tokens are scored."""
    docs = []
    for prompt, reply in zip(prompts, replies):
        if not reply.strip():
            continue
        head = chat.encode(chat.format(prompt))
        full = chat.encode(
            chat.format(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                add_generation_prompt=False,
            )
        )
        docs.append(Document(full[:max_tokens], "chat_answer", skip=min(len(head), max_tokens - 1)))
    return docs


@torch.no_grad()
def per_document_ce(
    chat: ChatModel, documents: Sequence[Document], interventions: Interventions = None, batch_size: int = 8
) -> list[float]:
    """Mean next-token cross-entropy (nats) over each document's scored tokens."""
    if not documents:
        raise RefusalScopeError("no documents to score", "pass at least one document")
    out = [float("nan")] * len(documents)
    with chat.attached(interventions):
        for batch in chat.batches([d.tokens for d in documents], batch_size):
            logits = chat.forward(batch).logits[:, :-1].float()
            target = batch.input_ids[:, 1:]
            nll = -F.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)
            index = batch.attention_mask.cumsum(-1)[:, 1:] - 1  # index of each target token in its row
            for row, i in enumerate(batch.index):
                scored = (batch.attention_mask[row, 1:] > 0) & (index[row] >= max(documents[i].skip, 1))
                if scored.any():
                    out[i] = float(nll[row][scored].mean())
    return out


def cross_entropy(
    chat: ChatModel,
    documents: Sequence[Document],
    interventions: Interventions = None,
    batch_size: int = 8,
    seed: int = 0,
) -> Estimate:
    """Mean per-document cross-entropy with a bootstrap interval over documents."""
    values = [v for v in per_document_ce(chat, documents, interventions, batch_size) if not math.isnan(v)]
    return bootstrap(values, seed=seed)
