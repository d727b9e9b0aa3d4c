"""Named groups of SAE latents (the refusal latents, the upstream harm latents) and how
strongly a prompt turns them on at its post-instruction positions.

Yeo et al. read refusal where the model has seen the whole request but not yet
answered: the chat template's post-instruction tokens. A group's activation on a prompt
is the mean, over those positions and over the group's latents, of each latent's SAE
activation; one number per prompt, comparable between a request asked plainly and the
same request wrapped in a jailbreak.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import RefusalScopeError

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..sae.model import SAE


def _layer(sae: SAE) -> int:
    """The layer an SAE of a group reads (`LatentGroup` checks that every part records one)."""
    if sae.layer is None:
        raise RefusalScopeError("an SAE of a latent group does not record its layer", "set sae.cfg.layer")
    return sae.layer


@dataclass
class LatentGroup:
    """A named set of latents, possibly spread over several SAEs (one per layer)."""

    name: str
    parts: list[tuple[SAE, list[int]]] = field(default_factory=list)  # (SAE, latent indices)

    def __post_init__(self) -> None:
        if not self.parts or not any(feats for _, feats in self.parts):
            raise RefusalScopeError(
                f"the latent group '{self.name}' has no latents", "select latents with `refusalscope discover` first"
            )
        for sae, feats in self.parts:
            if sae.layer is None:
                raise RefusalScopeError(f"an SAE of group '{self.name}' does not record its layer", "set sae.cfg.layer")
            sae.check_features(torch.tensor(list(feats), dtype=torch.long))

    @property
    def layers(self) -> list[int]:
        return sorted({_layer(sae) for sae, _ in self.parts})

    @property
    def size(self) -> int:
        return sum(len(f) for _, f in self.parts)

    def check(self, chat: ChatModel) -> None:
        for sae, _ in self.parts:
            sae.check_model(chat)

    def per_token(self, residual: Mapping[Any, torch.Tensor]) -> torch.Tensor:
        """[..., T] mean activation of the group's latents at each position, from {layer: [..., T, d]}."""
        total: torch.Tensor | None = None
        for sae, feats in self.parts:
            acts = sae.float().encode_subset(residual[_layer(sae)].float(), list(feats)).sum(-1)
            total = acts if total is None else total + acts
        assert total is not None  # __post_init__ refuses a group without parts
        return total / self.size

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "latents": [
                {
                    "layer": sae.layer,
                    "features": list(map(int, feats)),
                    "sae": sae.cfg.provenance.get("source"),
                    "sae_sha256": sae.content_hash(),
                }
                for sae, feats in self.parts
            ],
        }


def group_activations(
    chat: ChatModel,
    groups: Sequence[LatentGroup],
    prompts: Sequence[str],
    batch_size: int = 8,
    progress: bool = False,
    token_lists: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """{group name: [N] mean activation at the post-instruction positions} for each prompt
    (or for each already formatted token list, e.g. a prompt with one token removed)."""
    n = len(token_lists) if token_lists is not None else len(prompts)
    if n == 0:
        raise RefusalScopeError("no prompts to measure", "pass at least one prompt")
    for g in groups:
        g.check(chat)
    layers = sorted({layer for g in groups for layer in g.layers})
    out = {g.name: np.zeros(n) for g in groups}
    for index, chunk in chat.iter_residual(
        list(prompts), layers, "post_instruction", batch_size, progress=progress, token_lists=token_lists
    ):
        for g in groups:
            out[g.name][index] = g.per_token(chunk).mean(-1).detach().numpy()
    return out


def load_feature_groups(
    features_path: str | Path, chat: ChatModel, sae_paths: Sequence[str] = ()
) -> tuple[LatentGroup, dict]:
    """The refusal-latent group of a features.json, with its SAEs (from `sae_paths`, else
    from the sources the file records), and the file's raw content for provenance."""
    from ..discovery.features import FeatureSet
    from ..sae.io import load_sae

    fs = FeatureSet.load(features_path)
    saes = {}
    for source in sae_paths:
        sae = load_sae(source, model=chat)
        saes[sae.layer] = sae
    parts = []
    for layer, feats in sorted(fs.by_layer().items()):
        if layer not in saes:
            recorded = fs.saes.get(str(layer), {}).get("source")
            from ..sae.pretrained import split_pretrained  # a pretrained SAE is recorded by its release id

            if not recorded or not (Path(recorded).exists() or split_pretrained(recorded)):
                raise RefusalScopeError(
                    f"{features_path} selects latents of a layer-{layer} SAE that cannot be found ({recorded})",
                    f"pass the SAE with --sae <folder> (one that reads layer {layer})",
                )
            saes[layer] = load_sae(recorded, model=chat)
        want = fs.saes.get(str(layer), {}).get("sha256")
        if want and saes[layer].content_hash() != want:
            raise RefusalScopeError(
                f"the layer-{layer} SAE given is not the one {features_path} was discovered with",
                "pass the SAE recorded in features.json (its 'saes' field), or rerun `refusalscope discover`",
            )
        parts.append((saes[layer], feats))
    return LatentGroup("refusal", parts), json.loads(Path(features_path).read_text())


def upstream_group(
    chat: ChatModel,
    harm_sae: SAE,
    refusal: LatentGroup,
    prompts: Sequence[str],
    top: int = 10,
    circuits_path: str | Path | None = None,
    progress: bool = False,
    measure_effect: bool = True,
) -> tuple[LatentGroup, list[dict]]:
    """The 'harm' group: the `top` latents of an earlier-layer SAE that drive the refusal
    latents of the deepest refusal layer (`discovery.circuits`: ranked by attribution, then,
    with `measure_effect`, each clamped to zero to measure the relative change of the
    refusal latents' activation, a causal check of the ranking at `top` short forwards), or
    the list a `discover` run already wrote to circuits.json for this SAE's layer."""
    from ..discovery.circuits import upstream_latents

    harm_sae.check_model(chat)
    down_sae, down_feats = max(refusal.parts, key=lambda p: _layer(p[0]))
    if circuits_path is not None and Path(circuits_path).is_file():
        saved = json.loads(Path(circuits_path).read_text())
        if saved.get("upstream_layer") == harm_sae.layer and saved.get("downstream_features") == list(down_feats):
            rows = saved["upstream"][:top]
            return LatentGroup("harm", [(harm_sae, [int(r["feature"]) for r in rows])]), rows
    ranked = upstream_latents(
        chat, harm_sae, down_sae, down_feats, list(prompts), top=top, measure_effect=measure_effect, progress=progress
    )
    rows = [{"layer": u.layer, "feature": u.feature, "attribution": u.attribution, "effect": u.effect} for u in ranked]
    return LatentGroup("harm", [(harm_sae, [u.feature for u in ranked])]), rows


def measure_while_generating(
    chat: ChatModel,
    groups: Sequence[LatentGroup],
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """`group_activations` of `prompts`, read from the prefill of their greedy replies.

    Suppression needs both each jailbroken prompt's latent activations and the model's
    greedy reply to it; measured apart, the prompt (hundreds of tokens for template and
    random-search attacks) is prefilled twice. Here capture hooks read the group layers'
    post-instruction residuals during the generation's own prefill, and the replies go to
    the generation cache, where `suppression.jailbreak_success` then finds them. Replies
    already cached mean no generation runs: then the activations come from a residual pass
    (`group_activations`), so the result is the same either way."""
    from ..generations import cached_replies

    prompts = list(prompts)
    if not prompts:
        raise RefusalScopeError("no prompts to measure", "pass at least one prompt")
    for g in groups:
        g.check(chat)
    layers = sorted({layer for g in groups for layer in g.layers})
    n_post = len(chat.eoi_ids)
    seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def capture(layer: int):
        def fn(hidden: torch.Tensor, ctx: Any) -> None:
            if ctx.phase == "prefill" and ctx.past_length == 0:
                seen[layer].append(hidden[:, -n_post:].detach().float().clone())

        return fn

    # raw capture hooks also switch off the shared-prefix prefill, so each batch is one
    # forward over whole prompts, in the order of `chat.batches`
    with torch.no_grad(), chat.hooks.attached([(layer, capture(layer)) for layer in layers]):
        cached_replies(chat, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    batches = [b.index for b in chat.batches(chat.encode_prompts(prompts), batch_size)]
    complete = all(
        len(seen[layer]) == len(batches) and all(len(t) == len(i) for t, i in zip(seen[layer], batches))
        for layer in layers
    )
    if not complete:  # the replies came from the cache (or generation batched differently)
        return group_activations(chat, groups, prompts, batch_size, progress=progress)
    out = {g.name: np.zeros(len(prompts)) for g in groups}
    with torch.no_grad():
        for k, index in enumerate(batches):
            chunk = {layer: seen[layer][k] for layer in layers}
            for g in groups:
                out[g.name][index] = g.per_token(chunk).mean(-1).numpy()
    return out
