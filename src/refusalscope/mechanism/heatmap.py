"""Feature-level view of one prompt: the refusal latents' activation on every token, as
HTML, plus the small HTML pieces (tables, sections, pages) the mechanism and probe
reports are made of. Every string that came from a model, a tokenizer or a dataset is
HTML-escaped: jailbreak prompts are full of markup-like text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .latents import LatentGroup

if TYPE_CHECKING:
    from ..models.chat import ChatModel


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


@dataclass
class TokenActivations:
    pieces: list[str]  # decoded text of every token of the formatted prompt
    values: np.ndarray  # the group's mean activation at each token
    instruction: list[bool]  # True for the request's own tokens (False: chat template)

    def to_dict(self) -> dict:
        return {"pieces": self.pieces, "values": self.values.tolist(), "instruction": self.instruction}


def token_activations(chat: ChatModel, group: LatentGroup, prompt: str) -> TokenActivations:
    """The group's activation at every position of the formatted `prompt` (BOS included)."""
    from .token_attribution import instruction_tokens

    ids, positions, _ = instruction_tokens(chat, prompt)
    group.check(chat)
    residual = chat.residual([prompt], group.layers, "all", batch_size=1, progress=False)
    values = group.per_token({layer: residual[layer][0] for layer in group.layers}).detach().numpy()
    inside = set(positions)
    pieces = [chat.decode([t]) for t in ids]
    return TokenActivations(pieces, values, [i in inside for i in range(len(ids))])


def heatmap_html(acts: TokenActivations, title: str, scale: float | None = None) -> str:
    """Tokens as spans shaded by activation (red, relative to `scale`, default the max);
    the exact value is in each span's tooltip. Template tokens are underlined grey."""
    top = scale if scale is not None else float(max(acts.values.max(initial=0.0), 1e-9))
    spans = []
    for piece, value, own in zip(acts.pieces, acts.values, acts.instruction):
        alpha = min(max(float(value) / top, 0.0), 1.0) if top > 0 else 0.0
        style = f"background: rgba(220, 40, 40, {alpha:.2f})" + ("" if own else "; border-bottom: 1px dotted #999")
        text = esc(piece).replace("\n", "⏎<br>")
        spans.append(f'<span class="tok" style="{style}" title="{float(value):.3f}">{text}</span>')
    return f'<div class="heat"><div class="heat-title">{esc(title)}</div><div class="heat-body">{"".join(spans)}</div></div>'


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section_html(ident: str, title: str, *parts: str) -> str:
    """One report section; `parts` are HTML built by the functions here (already escaped)."""
    return f'<section id="{esc(ident)}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.heat{margin:1em 0}.heat-title{font-weight:600;margin-bottom:4px}.heat-body{font-family:monospace;line-height:1.9;
white-space:pre-wrap;border:1px solid #ddd;padding:8px}.tok{padding:1px 0}"""


def page_html(title: str, *sections: str) -> str:
    """A self-contained page (no scripts, nothing loaded from elsewhere)."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_STYLE}</style>"
        f"</head><body><h1>{esc(title)}</h1>{''.join(sections)}</body></html>"
    )
