"""Tiny playgrounds for the API and browser tests (seconds to build, no files needed).

`tiny_playground` is a random tiny model with a saved SAE, a ranked latent list, feature
cards built by `discovery.cards.build_cards` and a random "refusal direction": every
control on the page has something real to act on. `xss_chat_model` is a tiny Llama whose
weights are set by hand so that greedy decoding replies with HTML/JS payloads whatever
the prompt: model output that a careless page would execute.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..models.chat import ChatModel

XSS_REPLY = ("<script>window.__xss = 1</script>", '<img src=x onerror="window.__xss = 2">')
CARD_XSS = '<img src=y onerror="window.__xss = 3">'
LAYER = 1


def tiny_sae(chat: ChatModel, folder: Path, layer: int = LAYER, d_sae: int = 128, seed: int = 1):
    """A random JumpReLU SAE with some latents active, saved and reloaded (so it has a source)."""
    from ..sae import SAE, SAEConfig
    from ..sae.io import load_sae, save_sae

    cfg = SAEConfig(d_in=chat.d_model, d_sae=d_sae, architecture="jumprelu", layer=layer, dtype="float32")
    sae = SAE.random(cfg, seed=seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.5)
        sae.threshold.fill_(0.3)
    save_sae(sae, folder)
    return load_sae(folder)


def tiny_playground(folder: Path, chat: ChatModel | None = None, k: int = 6, cards: bool = True):
    """A Playground on a tiny random Llama; specs go to `folder / 'specs'`."""
    from ..discovery.cards import build_cards
    from ..discovery.features import FeatureSet, RankedFeature
    from ..testing import MIXED_LENGTH_PROMPTS, tiny_chat_model
    from .playground import Playground

    folder = Path(folder)
    chat = chat or tiny_chat_model("llama")
    sae = tiny_sae(chat, folder / "sae")
    gen = torch.Generator().manual_seed(0)
    acts = chat.residual(MIXED_LENGTH_PROMPTS, [LAYER], positions="all", progress=False)[LAYER]
    with torch.no_grad():  # latents that fire on these prompts rank first
        scores = torch.stack([sae.encode(a[1:]).max(0).values for a in acts]).mean(0)
    order = scores.argsort(descending=True)[:k].tolist()
    features = FeatureSet(
        method="cossim+ig",
        k=k,
        features=[
            RankedFeature(LAYER, j, rank, float(scores[j]), {"cossim": float(scores[j]), "ig": float(scores[j]) / 2})
            for rank, j in enumerate(order)
        ],
    )
    built = []
    if cards:
        built = build_cards(
            chat,
            {LAYER: sae},
            [(LAYER, j) for j in order[:3]],
            {"harmful": MIXED_LENGTH_PROMPTS[:3], "text": [MIXED_LENGTH_PROMPTS[3]]},
            MIXED_LENGTH_PROMPTS[:3],
            MIXED_LENGTH_PROMPTS[3:],
            top_contexts=3,
            progress=False,
        )
    direction = torch.randn(chat.d_model, generator=gen)
    return Playground(
        chat,
        {LAYER: sae},
        features=features,
        cards=built,
        direction=direction,
        direction_layer=2,
        spec_dir=folder / "specs",
        source={"kind": "tiny test playground"},
    )


def xss_chat_model():
    """A tiny Llama that answers every prompt with the `XSS_REPLY` payloads, then stops.

    The payloads are single added tokens; the blocks' output projections are zeroed so the
    residual stream is just the token embedding, and embeddings, final norm and
    unembedding form a three-state machine: any prompt token → payload 1 → payload 2 →
    end of turn.
    """
    import transformers

    from ..models.attention import register
    from ..models.chat import ChatModel
    from ..testing import tiny_config, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(list(XSS_REPLY))
    first, second = (tokenizer.convert_tokens_to_ids(t) for t in XSS_REPLY)
    eos = tokenizer.eos_token_id
    config = tiny_config("llama", len(tokenizer), eos, tokenizer.pad_token_id)
    config._attn_implementation = register()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=register())
    model.generation_config.eos_token_id = eos
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, 0] = 1.0
        embed[first] = 0.0
        embed[first, 1] = 1.0
        embed[second] = 0.0
        embed[second, 2] = 1.0
        model.model.norm.weight.fill_(1.0)
        head = model.lm_head.weight
        head.zero_()
        head[first, 0] = head[second, 1] = head[eos, 2] = 10.0
    model.eval().requires_grad_(False)
    return ChatModel(model, tokenizer, {"name": "tiny-xss", "source": "tiny", "spec": "tiny-xss"})
