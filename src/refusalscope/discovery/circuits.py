"""Upstream 'harm' latents that drive downstream 'refusal' latents (Yeo et al., §5).

Given selected latents at a later layer (downstream), which latents of an earlier SAE
(upstream) drive them? Two measurements:

- attribution: with the upstream SAE spliced in (latents as leaves, error as a node),
  the gradient of the downstream latents' summed activation at the last token with
  respect to every upstream latent, times that latent's activation: the first-order
  effect of zero-ablating it. Averaged over harmful prompts.
- intervention: for the top upstream latents, actually clamp each to zero (through the
  steering engine, error kept) and measure how much the downstream latents' activation
  drops, relative to the unsteered value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import RefusalScopeError
from ..steering.interventions import FeatureSteer

if TYPE_CHECKING:
    from ..models.chat import Batch, ChatModel
    from ..models.hooks import ForwardContext
    from ..sae.model import SAE
    from ..types import Interventions


@dataclass
class UpstreamLatent:
    layer: int
    feature: int
    attribution: float
    effect: float | None = None  # relative change of the downstream activation when clamped to 0


def _downstream_activation(chat: ChatModel, down_sae: SAE, down_feats: list[int], batch: Batch) -> torch.Tensor:
    """Σ of the downstream latents at each row's last token (differentiable); the forward
    stops at the downstream layer."""
    layer = down_sae.layer
    assert layer is not None  # upstream_latents checked it
    x = chat.run_until(batch, [layer], logits_to_keep=1)[layer][:, -1].float()
    f = down_sae.float().encode_subset(x, down_feats)
    return f.sum(-1)


def upstream_latents(
    chat: ChatModel,
    up_sae: SAE,
    down_sae: SAE,
    down_features: Sequence[int],
    prompts: Sequence[str],
    top: int = 10,
    measure_effect: bool = True,
    batch_size: int = 4,
    progress: bool = True,
) -> list[UpstreamLatent]:
    """Rank `up_sae`'s latents by their attribution to `down_features` of `down_sae`."""
    if up_sae.layer is None or down_sae.layer is None or up_sae.layer >= down_sae.layer:
        raise RefusalScopeError(
            f"the upstream SAE (layer {up_sae.layer}) must read an earlier layer than the downstream one ({down_sae.layer})",
            "pass SAEs from two different layers, earlier first",
        )
    up_sae.check_model(chat)
    down_sae.check_model(chat)
    feats = list(down_features)
    total = torch.zeros(up_sae.d_sae)
    tokens = chat.encode_prompts(list(prompts))
    up = up_sae.float()
    for batch in tqdm(list(chat.batches(tokens, batch_size)), desc="upstream attribution", disable=not progress):
        leaves = {}

        def splice(hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
            f = up.encode(hidden.float()).detach().requires_grad_(True)
            recon = up.decode(f)
            leaves["f"] = f  # noqa: B023 (used within this iteration)
            return (recon + (hidden.float() - recon).detach()).to(hidden.dtype)

        with torch.enable_grad(), chat.hooks.attached([(up_sae.layer, splice)]):
            value = _downstream_activation(chat, down_sae, feats, batch)
            value.sum().backward()
        f = leaves["f"]
        assert f.grad is not None  # a leaf of the downstream activation
        real = batch.attention_mask.bool()[..., None]
        # zero-ablation attribution: (0 − f) · ∂v/∂f, summed over positions
        total += (-(f.detach() * f.grad) * real).sum((0, 1))
    attribution = total / len(prompts)
    # latents whose removal lowers the downstream activation have negative attribution
    order = attribution.argsort()[:top]
    ranked = [UpstreamLatent(up_sae.layer, int(j), float(attribution[j])) for j in order]
    if measure_effect:
        base = _mean_downstream(chat, down_sae, feats, prompts, batch_size, None)
        for item in tqdm(ranked, desc="clamping upstream latents", disable=not progress):
            clamp = FeatureSteer(up_sae, [item.feature], "set", 0.0)
            after = _mean_downstream(chat, down_sae, feats, prompts, batch_size, clamp)
            item.effect = (after - base) / max(abs(base), 1e-9)
    return ranked


@torch.no_grad()
def _mean_downstream(
    chat: ChatModel,
    down_sae: SAE,
    feats: list[int],
    prompts: Sequence[str],
    batch_size: int,
    interventions: Interventions,
) -> float:
    tokens = chat.encode_prompts(list(prompts))
    total = 0.0
    with chat.attached(interventions):
        for batch in chat.batches(tokens, batch_size):
            total += float(_downstream_activation(chat, down_sae, feats, batch).sum())
    return total / len(prompts)
