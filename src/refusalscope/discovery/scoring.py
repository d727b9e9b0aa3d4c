"""Score every SAE latent for its role in refusal (Yeo et al., 2025; O'Brien et al.).

Four scores, each a [d_sae] vector per SAE layer:

- ActDiff: mean over harmful prompts minus mean over harmless prompts of each latent's
  activation, reduced over the request's tokens by max or mean.
- CosSim: cosine between each latent's decoder row and the refusal direction at that
  layer. Free (no forward passes), and a strong prior: refusal latents write along r̂.
- AP (attribution patching): (f_patched − f_clean) ⊙ ∂m/∂f at the clean run, where the
  patched run is the same harmful prompt with the refusal direction ablated (the model
  complies), and m = logit(patched run's first token) − logit(refusal first token) at the
  last position. Positive = moving the latent from its clean to its patched value moves
  the model towards complying: the latent mediates refusal.
- IG (integrated gradients): the same, with ∂m/∂f averaged along the straight path from
  the clean to the patched latents *and* SAE error (midpoint rule, N steps), one layer at
  a time so that the gradient also flows through later layers' natural computation.

Latent activations are treated as leaves and the SAE error as a separate node (as in
Marks et al.'s sparse feature circuits): the spliced residual x' = decode(f) + ε equals x,
the gradient wrt x is exact, and the gradient wrt f is what the latent contributes.
Attributions are averaged over each prompt's non-padding positions, then over prompts;
the per-prompt matrix is kept for per-prompt top-K selection. The error node's share of
the attribution is reported: when it dominates, the SAE, not the method, limits what
discovery can find.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import RefusalScopeError
from ..models.placement import layer_device
from ..sae.corpus import shared_prefix_length
from ..sae.model import SAE
from ..steering.latents import steering_view

if TYPE_CHECKING:
    from ..models.chat import Batch, ChatModel
    from ..types import AttributionMethod, Interventions


def _check_saes(chat: ChatModel, saes: dict[int, SAE]) -> None:
    if not saes:
        raise RefusalScopeError("no SAEs were given", "pass {layer: SAE}, e.g. from train_preset or load_sae")
    for layer, sae in saes.items():
        sae.check_model(chat)
        if sae.layer is not None and sae.layer != layer:
            raise RefusalScopeError(f"the SAE given for layer {layer} was trained on layer {sae.layer}")


# ---------------------------------------------------------------------- ActDiff
@torch.no_grad()
def activation_stats(
    chat: ChatModel, saes: dict[int, SAE], prompts: Sequence[str], batch_size: int = 8, progress: bool = True
) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer: mean over prompts of the per-prompt max and mean activation of each latent,
    and the max over everything (used to pick 'high' clamp values). The shared template
    prefix (identical for every request) is left out."""
    _check_saes(chat, saes)
    prefix = shared_prefix_length(chat)
    layers = sorted(saes)
    out = {
        l: {"max": torch.zeros(saes[l].d_sae), "mean": torch.zeros(saes[l].d_sae), "peak": torch.zeros(saes[l].d_sae)}
        for l in layers
    }
    for _, chunk in chat.iter_residual(list(prompts), layers, "all", batch_size, progress=progress):
        for layer in layers:
            sae = saes[layer].float()
            for acts in chunk[layer]:
                f = sae.encode(acts[prefix:])
                out[layer]["max"] += f.max(0).values
                out[layer]["mean"] += f.mean(0)
                out[layer]["peak"] = torch.maximum(out[layer]["peak"], f.max(0).values)
    for layer in layers:
        out[layer]["max"] /= len(prompts)
        out[layer]["mean"] /= len(prompts)
    return out


def actdiff_scores(harmful_stats: dict, harmless_stats: dict, reduce: str = "max") -> dict[int, torch.Tensor]:
    if reduce not in ("max", "mean"):
        raise RefusalScopeError(f"unknown reduction '{reduce}'", "use 'max' or 'mean'")
    return {layer: harmful_stats[layer][reduce] - harmless_stats[layer][reduce] for layer in harmful_stats}


# ---------------------------------------------------------------------- CosSim
def cossim_scores(saes: dict[int, SAE], directions: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """cos(W_dec[j], r̂_layer) for every latent."""
    out = {}
    for layer, sae in saes.items():
        r = directions[layer].float()
        out[layer] = F.cosine_similarity(sae.W_dec.detach().float(), r[None], dim=-1)
    return out


# ---------------------------------------------------------------------- AP / IG
@dataclass
class Attribution:
    """Attribution scores of one method: mean per layer, and per prompt."""

    method: str
    mean: dict[int, torch.Tensor]  # layer -> [d_sae]
    per_prompt: dict[int, torch.Tensor]  # layer -> [N, d_sae]
    error: dict[int, torch.Tensor]  # layer -> [N] attribution of the SAE error node
    metric_clean: torch.Tensor  # [N]
    metric_patched: torch.Tensor  # [N]
    prompts: list[str] = field(default_factory=list)

    def error_share(self, layer: int) -> float:
        """|error attribution| / (|error| + |Σ feature attributions|), averaged over prompts."""
        feats = self.per_prompt[layer].sum(-1).abs()
        err = self.error[layer].abs()
        return float((err / (err + feats).clamp_min(1e-12)).mean())


def merge_attributions(parts: Sequence[Attribution]) -> Attribution:
    """One Attribution from those of consecutive shards of the prompts (in prompt order):
    what `attribution_scores` over all the prompts gives, the per-prompt rows stacked and
    the means taken again over all of them."""
    if not parts:
        raise RefusalScopeError("no attribution shards to merge")
    methods = {p.method for p in parts}
    if len(methods) != 1:
        raise RefusalScopeError(f"attribution shards of different methods {sorted(methods)}")
    layers = sorted(parts[0].per_prompt)
    per_prompt = {l: torch.cat([p.per_prompt[l] for p in parts]) for l in layers}
    return Attribution(
        method=parts[0].method,
        mean={l: per_prompt[l].mean(0) for l in layers},
        per_prompt=per_prompt,
        error={l: torch.cat([p.error[l] for p in parts]) for l in layers},
        metric_clean=torch.cat([p.metric_clean for p in parts]),
        metric_patched=torch.cat([p.metric_patched for p in parts]),
        prompts=[q for p in parts for q in p.prompts],
    )


def first_tokens(
    chat: ChatModel,
    prompts: Sequence[str],
    ablation: Interventions,
    refusal_token_ids: Sequence[int],
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t_refuse, t_jail, clean log-odds): the refusal token the clean run likes most and
    the patched (direction-ablated) run's greedy first token, per prompt."""
    from ..judges.first_token import refusal_log_odds

    clean = chat.next_token_logits(list(prompts), batch_size=batch_size)
    patched = chat.next_token_logits(list(prompts), batch_size=batch_size, interventions=ablation)
    ids = torch.tensor(sorted(set(int(t) for t in refusal_token_ids)))
    t_refuse = ids[clean[:, ids].argmax(-1)]
    t_jail = patched.argmax(-1)
    return t_refuse, t_jail, refusal_log_odds(clean, ids.tolist())


def _capture(
    chat: ChatModel, batch: Batch, layers: list[int], interventions: Interventions = None
) -> dict[int, torch.Tensor]:
    """Residual after each of `layers` (float32, detached); the forward stops at the deepest."""
    with torch.no_grad(), chat.attached(interventions):
        captured = chat.run_until(batch, layers, logits_to_keep=1)
    return {layer: captured[layer].detach().float() for layer in layers}


def _metric(logits: torch.Tensor, t_jail: torch.Tensor, t_refuse: torch.Tensor) -> torch.Tensor:
    last = logits[:, -1].float()
    rows = torch.arange(last.shape[0], device=last.device)
    return (last[rows, t_jail.to(last.device)] - last[rows, t_refuse.to(last.device)]).cpu()


def attribution_scores(
    chat: ChatModel,
    saes: dict[int, SAE],
    prompts: Sequence[str],
    ablation: Interventions,
    refusal_token_ids: Sequence[int],
    method: AttributionMethod = "ig",
    steps: int = 10,
    batch_size: int = 4,
    progress: bool = True,
) -> Attribution:
    """AP or IG attributions of every latent of every SAE (see the module docstring)."""
    if method not in ("ap", "ig"):
        raise RefusalScopeError(f"unknown attribution method '{method}'", "use 'ap' or 'ig'")
    if steps < 1:
        raise RefusalScopeError(f"IG needs at least one step, got {steps}")
    _check_saes(chat, saes)
    prompts = list(prompts)
    if not prompts:
        raise RefusalScopeError("no prompts to attribute", "pass harmful prompts the model refuses")
    layers = sorted(saes)
    # float32 copies (views on a CPU) on the device of the layer each SAE reads: with the
    # layers spread over GPUs (device_map), layer l's residual stream lives on its own device
    fsaes = {l: steering_view(saes[l], layer_device(chat, l)) for l in layers}
    t_refuse, t_jail, _ = first_tokens(chat, prompts, ablation, refusal_token_ids)
    tokens = chat.encode_prompts(prompts)
    per_prompt = {l: torch.zeros(len(prompts), saes[l].d_sae) for l in layers}
    error = {l: torch.zeros(len(prompts)) for l in layers}
    m_clean = torch.zeros(len(prompts))
    m_patched = torch.zeros(len(prompts))
    batches = list(chat.batches(tokens, batch_size))
    work = len(batches) * (1 if method == "ap" else steps * len(layers))
    bar = tqdm(total=work, desc=f"attribution ({method})", disable=not progress)
    for batch in batches:
        idx = torch.tensor(batch.index)
        tj, tr = t_jail[idx], t_refuse[idx]
        x_clean = _capture(chat, batch, layers)
        x_patch = _capture(chat, batch, layers, ablation)
        mask = {l: batch.attention_mask.bool().to(x_clean[l].device) for l in layers}
        code = {}
        for l in layers:
            with torch.no_grad():
                fc, fp = fsaes[l].encode(x_clean[l]), fsaes[l].encode(x_patch[l])
                ec, ep = x_clean[l] - fsaes[l].decode(fc), x_patch[l] - fsaes[l].decode(fp)
            code[l] = (fc, fp, ec, ep)
        if method == "ap":
            leaves = {}

            def splice(layer):
                def fn(hidden, ctx):
                    sae = fsaes[layer]
                    f = sae.encode(hidden.float()).detach().requires_grad_(True)
                    recon = sae.decode(f)
                    # the error stays attached to the incoming stream, so earlier layers'
                    # latents still reach the metric through it (d x'/d x = I)
                    err = hidden.float() - recon.detach()
                    if err.requires_grad:
                        err.retain_grad()
                    else:  # the earliest spliced layer: nothing upstream needs gradients
                        err.requires_grad_(True)
                    leaves[layer] = (f, err)  # noqa: B023
                    return (recon + err).to(hidden.dtype)

                return fn

            with torch.enable_grad(), chat.hooks.attached([(l, splice(l)) for l in layers]):
                metric = _metric(chat.forward(batch, logits_to_keep=1).logits, tj, tr)
                metric.sum().backward()
            with torch.no_grad():
                m_clean[idx] = metric.detach().float()  # the splice leaves values unchanged
                for l in layers:
                    fc, fp, ec, ep = code[l]
                    f, err = leaves[l]
                    real, n_real = mask[l], mask[l].sum(-1, keepdim=True).float()
                    attr = ((fp - fc) * f.grad * real[..., None]).sum(1) / n_real
                    per_prompt[l][idx] = attr.cpu()
                    error[l][idx] = (((ep - ec) * err.grad * real[..., None]).sum((1, 2)) / n_real.squeeze(-1)).cpu()
            bar.update(1)
        else:
            for l in layers:
                fc, fp, ec, ep = code[l]
                grad_f = torch.zeros_like(fc)
                grad_e = torch.zeros_like(ec)
                for step in range(steps):
                    alpha = (step + 0.5) / steps
                    f_a = (fc + alpha * (fp - fc)).requires_grad_(True)
                    e_a = (ec + alpha * (ep - ec)).requires_grad_(True)

                    def replace(hidden, ctx, f_a=f_a, e_a=e_a, sae=fsaes[l]):
                        return (sae.decode(f_a) + e_a).to(hidden.dtype)

                    with torch.enable_grad(), chat.hooks.attached([(l, replace)]):
                        metric = _metric(chat.forward(batch, logits_to_keep=1).logits, tj, tr)
                        metric.sum().backward()
                    assert f_a.grad is not None and e_a.grad is not None  # both are leaves of the metric
                    grad_f += f_a.grad / steps
                    grad_e += e_a.grad / steps
                    bar.update(1)
                with torch.no_grad():
                    real, n_real = mask[l], mask[l].sum(-1, keepdim=True).float()
                    per_prompt[l][idx] = (((fp - fc) * grad_f * real[..., None]).sum(1) / n_real).cpu()
                    error[l][idx] = (((ep - ec) * grad_e * real[..., None]).sum((1, 2)) / n_real.squeeze(-1)).cpu()
        with torch.no_grad():
            if method == "ig":
                m_clean[idx] = _metric(chat.forward(batch, logits_to_keep=1).logits, tj, tr).float()
            with chat.attached(ablation):
                m_patched[idx] = _metric(chat.forward(batch, logits_to_keep=1).logits, tj, tr).float()
    bar.close()
    return Attribution(
        method=method,
        mean={l: per_prompt[l].mean(0) for l in layers},
        per_prompt=per_prompt,
        error=error,
        metric_clean=m_clean,
        metric_patched=m_patched,
        prompts=prompts,
    )
