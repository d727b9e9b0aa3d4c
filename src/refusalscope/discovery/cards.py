"""Feature cards: what a selected latent reads and writes, for a human to judge.

For each latent: its top-activating contexts over harmful requests, harmless requests and
ordinary text (the token it peaks on, highlighted in a window of context); the
distribution of its per-prompt maximum activation on harmful vs harmless requests; and its
direct logit effect, the tokens its decoder row promotes and suppresses through the final
norm's scale and the unembedding. Rendered as one self-contained HTML page (every piece of
text escaped) and a JSON file with the same data.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..paths import atomic_file
from ..sae.corpus import shared_prefix_length

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..sae.model import SAE


@dataclass
class Context:
    activation: float
    corpus: str
    tokens: list[str]
    peak: int  # index of the peak token within `tokens`


@dataclass
class FeatureCard:
    layer: int
    feature: int
    rank: int | None = None
    scores: dict = field(default_factory=dict)
    contexts: list[Context] = field(default_factory=list)
    max_harmful: list[float] = field(default_factory=list)
    max_harmless: list[float] = field(default_factory=list)
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)


def logit_effect(
    chat: ChatModel, direction: torch.Tensor, top: int = 10
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Tokens whose logits the direction raises / lowers most (direct path, final-norm scale included)."""
    w = chat.unembed.weight.detach().float()
    gain = chat.final_norm_gain()
    vec = direction.float() if gain is None else direction.float() * gain
    effect = w @ vec
    hi = effect.topk(top)
    lo = (-effect).topk(top)
    decode = chat.decode
    return (
        [(decode([int(i)]), float(v)) for v, i in zip(hi.values, hi.indices)],
        [(decode([int(i)]), float(-v)) for v, i in zip(lo.values, lo.indices)],
    )


@torch.no_grad()
def build_cards(
    chat: ChatModel,
    saes: dict[int, SAE],
    features: Sequence[tuple[int, int]],
    corpora: dict[str, Sequence[str]],
    harmful: Sequence[str],
    harmless: Sequence[str],
    top_contexts: int = 8,
    window: int = 10,
    batch_size: int = 8,
    max_tokens: int = 256,
    ranks: dict | None = None,
    scores: dict | None = None,
    progress: bool = True,
) -> list[FeatureCard]:
    """Cards for `features` [(layer, latent)]; `corpora` maps a name to prompts (chat-formatted)
    or, for a name starting with 'text', raw text documents, of which the first `max_tokens`
    tokens are read (a WikiText article runs to thousands of tokens, and attention memory
    grows with the square of the length)."""
    prefix = shared_prefix_length(chat)
    layers = sorted({l for l, _ in features})
    feats_by_layer = {l: [f for ll, f in features if ll == l] for l in layers}
    cards = {(l, f): FeatureCard(l, f, (ranks or {}).get((l, f)), (scores or {}).get((l, f), {})) for l, f in features}
    heaps: dict[tuple[int, int], list] = {key: [] for key in cards}
    counter = 0

    def scan(name: str, texts: Sequence[str], chat_format: bool):
        nonlocal counter
        token_lists = [ids[:max_tokens] for ids in chat.encode_prompts(list(texts), chat=chat_format)]
        skip = prefix if chat_format else 1
        for index, chunk in chat.iter_residual(
            None, layers, "all", batch_size, token_lists=token_lists, progress=progress
        ):
            for layer in layers:
                sae = saes[layer].float()
                idx = feats_by_layer[layer]
                for row, acts in zip(index, chunk[layer]):
                    f = sae.encode_subset(acts, idx)  # [T, n]
                    toks = token_lists[row]
                    for col, feat in enumerate(idx):
                        values = f[skip:, col]
                        if values.numel() == 0:
                            continue
                        peak = int(values.argmax()) + skip
                        value = float(f[peak, col])
                        if value <= 0:
                            continue
                        lo, hi = max(skip, peak - window), min(len(toks), peak + window // 2 + 1)
                        ctx = Context(value, name, [chat.decode([t]) for t in toks[lo:hi]], peak - lo)
                        counter += 1
                        heap = heaps[(layer, feat)]
                        item = (value, counter, ctx)
                        if len(heap) < top_contexts:
                            heapq.heappush(heap, item)
                        else:
                            heapq.heappushpop(heap, item)

    for corpus, texts in corpora.items():
        scan(corpus, texts, chat_format=not corpus.startswith("text"))
    for _, prompts, target in (("harmful", harmful, "max_harmful"), ("harmless", harmless, "max_harmless")):
        token_lists = chat.encode_prompts(list(prompts))
        for _, chunk in chat.iter_residual(None, layers, "all", batch_size, token_lists=token_lists, progress=False):
            for layer in layers:
                sae = saes[layer].float()
                for acts in chunk[layer]:
                    f = sae.encode_subset(acts[prefix:], feats_by_layer[layer]).max(0).values
                    for col, feat in enumerate(feats_by_layer[layer]):
                        getattr(cards[(layer, feat)], target).append(float(f[col]))
    for (layer, feat), card in cards.items():
        card.contexts = [c for _, _, c in sorted(heaps[(layer, feat)], key=lambda t: -t[0])]
        card.promoted, card.suppressed = logit_effect(chat, saes[layer].decoder_directions([feat])[0])
    return [cards[key] for key in features]


def _histogram_png(card: FeatureCard) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 1.8), dpi=100)
    top = max(card.max_harmful + card.max_harmless + [1e-6])
    bins = [top * i / 20 for i in range(21)]
    ax.hist(card.max_harmful, bins=bins, alpha=0.6, label="harmful", color="#c0392b")
    ax.hist(card.max_harmless, bins=bins, alpha=0.6, label="harmless", color="#2980b9")
    ax.set_xlabel("max activation per prompt", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(cards: Sequence[FeatureCard], title: str) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}"
        ".card{border:1px solid #ccc;border-radius:6px;padding:10px;margin:12px 0}"
        ".ctx{font-family:monospace;font-size:12px;white-space:pre-wrap;margin:2px 0}"
        "mark{background:#f6c343} td{padding:0 6px;font-size:12px} .tok{font-family:monospace}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for card in cards:
        scores = ", ".join(f"{e(k)}={v:.3g}" for k, v in card.scores.items())
        parts.append(
            f"<div class='card'><h2>layer {card.layer} · latent {card.feature}"
            f"{'' if card.rank is None else f' · rank {card.rank}'}</h2><p>{scores}</p>"
        )
        parts.append(f"<img alt='activation histogram' src='data:image/png;base64,{_histogram_png(card)}'>")
        parts.append("<h3>top-activating contexts</h3>")
        for ctx in card.contexts:
            toks = [e(t) if i != ctx.peak else f"<mark>{e(t)}</mark>" for i, t in enumerate(ctx.tokens)]
            parts.append(f"<div class='ctx'>[{e(ctx.corpus)} {ctx.activation:.2f}] {''.join(toks)}</div>")
        parts.append("<h3>logit effect</h3><table><tr><th>promotes</th><th></th><th>suppresses</th><th></th></tr>")
        for (pt, pv), (st, sv) in zip(card.promoted, card.suppressed):
            parts.append(
                f"<tr><td class='tok'>{e(repr(pt))}</td><td>{pv:+.2f}</td><td class='tok'>{e(repr(st))}</td><td>{sv:+.2f}</td></tr>"
            )
        parts.append("</table></div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_cards(cards: Sequence[FeatureCard], folder: str | Path, title: str) -> Path:
    folder = Path(folder)
    with atomic_file(folder / "cards.json") as handle:
        json.dump([asdict(c) for c in cards], handle, indent=2)
    with atomic_file(folder / "cards.html") as handle:
        handle.write(render_html(cards, title))
    return folder / "cards.html"
