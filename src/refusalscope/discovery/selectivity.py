"""Rank candidate refusal latents by how *selectively* they steer, not only how strongly.

CosSim+IG finds latents that mediate refusal, but clamping them also raises refusal of
benign requests and costs capability on ordinary text (both papers end on this tension).
Two properties predict a cheaper steering latent, and this module measures both for a
short list of candidates (e.g. CosSim+IG's prefilter):

- **benign firing**: the fraction of a benign document's tokens (harmless requests,
  ordinary text) on which the latent is active. A latent that fires on benign inputs is
  active where refusal is not wanted, and clamping it there moves those activations most.
  Measured per document and bootstrapped over documents (the independent units).
- **output effect per unit of text loss**: clamp the latent alone and measure the mean
  change of the first-token refusal log-odds on a set of prompts, divided by the mean
  increase of cross-entropy on ordinary text (floored at `loss_floor` nats, so a latent
  that costs nothing measurable is not divided by ~0). Both are paired differences against
  the unsteered model, bootstrapped over prompts/documents.

The combined score is effect_per_loss × (1 − benign firing): large when clamping moves
refusal much for little text damage and the latent stays quiet on benign inputs. Latents
whose refusal effect's interval does not exclude zero are ranked after all others (a null
effect over a floored loss would otherwise look efficient).
`compare_with_prior` says how this order differs from the candidates' prior (CosSim+IG)
order. Costs: one forward per candidate over the effect prompts and the texts, plus one
pass for firing statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import RefusalScopeError
from ..sae.activations import Document
from ..sae.corpus import shared_prefix_length
from ..stats import Estimate, bootstrap

ORDERS = ("combined", "effect_per_loss", "benign_fire", "prior")


@dataclass
class LatentSelectivity:
    """One candidate latent's selectivity measurements and its place in each order."""

    layer: int
    feature: int
    prior_rank: int  # position in the candidate list given (e.g. the CosSim+IG order)
    benign_fire: Estimate  # mean fraction of a benign document's tokens where it fires
    harmful_fire: Estimate  # the same on harmful requests
    value: float  # the clamp value used for the output effect
    refusal_effect: Estimate | None = None  # Δ first-token refusal log-odds when clamped
    loss_increase: Estimate | None = None  # Δ cross-entropy (nats) on ordinary text
    effect_per_loss: float | None = None
    score: float = float("nan")
    rank: int = -1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not isinstance(v, Estimate)}
        for key in ("benign_fire", "harmful_fire", "refusal_effect", "loss_increase"):
            est = getattr(self, key)
            out[key] = None if est is None else est.to_dict()
        return out


def _candidates(candidates: Sequence[tuple[int, int]], saes: Mapping[int, Any]) -> list[tuple[int, int]]:
    out = [(int(layer), int(feature)) for layer, feature in candidates]
    if not out:
        raise RefusalScopeError(
            "no candidate latents were given", "pass (layer, feature) pairs, e.g. CosSim+IG's top 64"
        )
    if len(set(out)) != len(out):
        raise RefusalScopeError("candidate latents repeat", "list each (layer, feature) once")
    for layer, feature in out:
        if layer not in saes:
            raise RefusalScopeError(
                f"no SAE was given for layer {layer}", f"pass an SAE for each candidate's layer (have {sorted(saes)})"
            )
        saes[layer].check_features(torch.tensor([feature]))
    return out


@torch.no_grad()
def firing_fractions(
    chat,
    saes: Mapping[int, Any],
    candidates: Sequence[tuple[int, int]],
    prompts: Sequence[str] = (),
    texts: Sequence[str] = (),
    *,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([documents, candidates] fraction of each document's tokens where each latent fires,
    [candidates] peak activation seen). The template prefix every request shares and a
    text's first token (an attention sink with outlier activations) are left out."""
    candidates = _candidates(candidates, saes)
    layers = sorted({layer for layer, _ in candidates})
    columns = {layer: [(i, f) for i, (l, f) in enumerate(candidates) if l == layer] for layer in layers}
    rows: list[torch.Tensor] = []
    peak = torch.zeros(len(candidates))
    for items, as_chat, skip in ((list(prompts), True, shared_prefix_length(chat)), (list(texts), False, 1)):
        if not items:
            continue
        fractions = torch.zeros(len(items), len(candidates))
        for index, chunk in chat.iter_residual(items, layers, "all", batch_size, chat=as_chat, progress=False):
            for layer in layers:
                sae = saes[layer].float()
                feats = torch.tensor([f for _, f in columns[layer]])
                where = torch.tensor([i for i, _ in columns[layer]])
                for doc, acts in zip(index, chunk[layer]):
                    acts = acts[skip:] if acts.shape[0] > skip else acts[-1:]
                    f = sae.encode(acts.to(sae.W_enc.device, sae.W_enc.dtype)).float().cpu()[:, feats]
                    fractions[doc, where] = (f > 0).float().mean(0)
                    peak[where] = torch.maximum(peak[where], f.max(0).values)
        rows.append(fractions)
    if not rows:
        raise RefusalScopeError("no prompts or texts were given to measure firing on")
    return torch.cat(rows), peak


def _paired(after: Sequence[float], before: Sequence[float], seed: int) -> Estimate:
    diffs = [
        a - b for a, b in zip(after, before) if not (math.isnan(a) or math.isnan(b))
    ]  # a document too short to score is NaN
    return bootstrap(diffs, seed=seed)


def output_effects(
    chat,
    saes: Mapping[int, Any],
    candidates: Sequence[tuple[int, int]],
    values: Sequence[float],
    prompts: Sequence[str],
    texts: Sequence[str],
    refusal_token_ids: Sequence[int],
    *,
    batch_size: int = 8,
    seed: int = 0,
) -> list[tuple[Estimate, Estimate]]:
    """Per candidate: (Δ refusal log-odds on `prompts`, Δ cross-entropy on `texts`) when
    that latent alone is clamped ('set') to its value at every token."""
    from ..evaluation.loss import per_document_ce
    from ..judges.first_token import refusal_score
    from ..steering import FeatureSteer

    candidates = _candidates(candidates, saes)
    if len(values) != len(candidates):
        raise RefusalScopeError(
            f"{len(values)} clamp values for {len(candidates)} candidates", "give one value per candidate"
        )
    if not prompts or not texts:
        raise RefusalScopeError("the output effect needs prompts (for refusal) and texts (for the loss)")
    docs = [Document(chat.encode(t), "text") for t in texts]
    base_refusal = refusal_score(chat, prompts, refusal_token_ids, batch_size=batch_size).tolist()
    base_loss = per_document_ce(chat, docs, None, batch_size)
    out = []
    for (layer, feature), value in zip(candidates, values):
        clamp = FeatureSteer(saes[layer], [feature], "set", float(value), layer=layer)
        refusal = refusal_score(chat, prompts, refusal_token_ids, batch_size=batch_size, interventions=clamp).tolist()
        loss = per_document_ce(chat, docs, clamp, batch_size)
        out.append((_paired(refusal, base_refusal, seed), _paired(loss, base_loss, seed)))
    return out


def rank_selective(
    chat,
    saes: Mapping[int, Any],
    candidates: Sequence[tuple[int, int]],
    *,
    harmful: Sequence[str],
    benign_prompts: Sequence[str] = (),
    benign_texts: Sequence[str] = (),
    refusal_token_ids: Sequence[int] | None = None,
    effect_prompts: Sequence[str] | None = None,
    values: float | Sequence[float] | None = None,
    multiplier: float = 1.0,
    loss_floor: float = 0.01,
    by: str = "combined",
    batch_size: int = 8,
    seed: int = 0,
) -> list[LatentSelectivity]:
    """Measure every candidate and return them ordered `by` (best first).

    `candidates` is in prior order (e.g. CosSim+IG's). Clamp `values` default to each
    latent's peak activation on `harmful` × `multiplier` (the paper's clamp is a multiple of
    the peak). Without `refusal_token_ids` only firing is measured and `by` must be
    'benign_fire' or 'prior'. `effect_prompts` default to `harmful`.
    """
    if by not in ORDERS:
        raise RefusalScopeError(f"unknown order '{by}'", f"use one of {', '.join(ORDERS)}")
    if not harmful:
        raise RefusalScopeError("no harmful prompts were given", "pass the requests refusal should act on")
    if not benign_prompts and not benign_texts:
        raise RefusalScopeError("no benign prompts or texts were given", "pass harmless requests and/or ordinary text")
    if refusal_token_ids is None and by in ("combined", "effect_per_loss"):
        raise RefusalScopeError(
            f"ordering by '{by}' needs the output effect", "pass refusal_token_ids (and benign_texts)"
        )
    if refusal_token_ids is not None and not benign_texts:
        raise RefusalScopeError("the output effect is measured against text loss", "pass benign_texts (ordinary text)")
    candidates = _candidates(candidates, saes)
    benign, _ = firing_fractions(chat, saes, candidates, benign_prompts, benign_texts, batch_size=batch_size)
    harm, peak = firing_fractions(chat, saes, candidates, harmful, batch_size=batch_size)
    if values is None:
        values = [float(p) * multiplier for p in peak]
    elif isinstance(values, (int, float)):
        values = [float(values)] * len(candidates)
    values = [float(v) for v in values]
    rows = [
        LatentSelectivity(
            layer=layer,
            feature=feature,
            prior_rank=i,
            value=values[i] if i < len(values) else float("nan"),
            benign_fire=bootstrap(benign[:, i].tolist(), seed=seed),
            harmful_fire=bootstrap(harm[:, i].tolist(), seed=seed),
        )
        for i, (layer, feature) in enumerate(candidates)
    ]
    if refusal_token_ids is not None:
        effects = output_effects(
            chat,
            saes,
            candidates,
            values,
            list(effect_prompts or harmful),
            benign_texts,
            refusal_token_ids,
            batch_size=batch_size,
            seed=seed,
        )
        for row, (effect, loss) in zip(rows, effects):
            row.refusal_effect, row.loss_increase = effect, loss
            row.effect_per_loss = effect.value / max(loss.value, loss_floor)
    for row in rows:
        quiet = 1.0 - row.benign_fire.value
        if by == "combined":
            assert row.effect_per_loss is not None  # measured above: this order needs refusal_token_ids
            row.score = row.effect_per_loss * quiet
        elif by == "effect_per_loss":
            assert row.effect_per_loss is not None
            row.score = row.effect_per_loss
        elif by == "benign_fire":
            row.score = quiet
        else:
            row.score = -float(row.prior_rank)

    def effective(row: LatentSelectivity) -> bool:
        # a latent whose refusal effect is not shown to be positive is no steering candidate,
        # however cheap: dividing a null effect by a floored ~0 loss must not rank it high
        return row.refusal_effect is None or by == "prior" or row.refusal_effect.low > 0

    ordered = sorted(rows, key=lambda r: (not effective(r), -r.score, r.prior_rank))
    for rank, row in enumerate(ordered):
        row.rank = rank
    return ordered


def compare_with_prior(ranked: Sequence[LatentSelectivity], k: int) -> dict[str, Any]:
    """How the selective order differs from the prior (CosSim+IG) order: the overlap of the
    two top-k sets, Spearman's rank correlation over all candidates, and what each top-k
    costs on average (benign firing, loss increase)."""
    if k < 1:
        raise RefusalScopeError(f"k must be at least 1, got {k}")
    rows = list(ranked)
    by_rank = sorted(rows, key=lambda r: r.rank)[:k]
    by_prior = sorted(rows, key=lambda r: r.prior_rank)[:k]
    top = {(r.layer, r.feature) for r in by_rank}
    prior = {(r.layer, r.feature) for r in by_prior}
    n = len(rows)
    if n > 1:
        d2 = sum((r.rank - r.prior_rank) ** 2 for r in rows)
        spearman = 1 - 6 * d2 / (n * (n * n - 1))
    else:
        spearman = float("nan")

    def mean(items, get):
        values = [get(r) for r in items if get(r) is not None]
        return sum(values) / len(values) if values else None

    return {
        "k": k,
        "overlap": len(top & prior),
        "spearman": spearman,
        "selective": [(r.layer, r.feature) for r in by_rank],
        "prior": [(r.layer, r.feature) for r in by_prior],
        "benign_fire": {
            "selective": mean(by_rank, lambda r: r.benign_fire.value),
            "prior": mean(by_prior, lambda r: r.benign_fire.value),
        },
        "loss_increase": {
            "selective": mean(by_rank, lambda r: r.loss_increase and r.loss_increase.value),
            "prior": mean(by_prior, lambda r: r.loss_increase and r.loss_increase.value),
        },
    }
