"""How good is an SAE, on the model it belongs to?

- FVU (fraction of variance unexplained) and L0 on live activations;
- dead / dense latents (never active / active on more than 10% of tokens);
- cross-entropy loss recovered and KL divergence when the SAE's reconstruction replaces
  the residual stream at its layer (0% = as bad as zeroing the stream, 100% = lossless),
  separately on ordinary text and on chat text;
- refusal-direction cosine: the cosine between the difference of means (harmful −
  harmless, post-instruction positions) of the true activations and of their SAE
  reconstructions. Yeo et al. use it to show chat SAEs keep the refusal direction and
  base-text SAEs lose it; a steering study built on an SAE that loses it is doomed.

Positions that SAE training leaves out (the first token, template-prefix tokens, and
tokens with massive norms) are also left untouched by the splice, so the numbers
describe the tokens the SAE is meant for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import RefusalScopeError
from .activations import Document
from .model import SAE

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..models.hooks import ForwardContext


@dataclass
class SAEMetrics:
    fvu: float
    l0: float
    dead_frac: float
    dense_frac: float
    n_tokens: int
    ce_clean: dict
    ce_sae: dict
    ce_zero: dict
    ce_recovered: dict
    kl: dict
    refusal_cosine: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        out: dict[str, float | None] = {
            "fvu": self.fvu,
            "l0": self.l0,
            "dead_frac": self.dead_frac,
            "dense_frac": self.dense_frac,
        }
        for name in self.ce_recovered:
            out[f"ce_recovered/{name}"] = self.ce_recovered[name]
            out[f"kl/{name}"] = self.kl[name]
        out["refusal_cosine"] = self.refusal_cosine
        return out


def keep_mask(hidden: torch.Tensor, mask: torch.Tensor, skip: torch.Tensor, outlier_factor: float) -> torch.Tensor:
    """[B, T] positions the SAE is meant for: real, past each row's `skip` leading tokens
    (first token, shared template prefix), and not massive-norm outliers."""
    index = mask.cumsum(-1) - 1
    real = mask.bool() & (index >= skip[:, None])
    norms = hidden.norm(dim=-1)
    if real.any():
        median = norms[real].median()
        real &= norms <= outlier_factor * median
    return real


def _layer(sae: SAE) -> int:
    if sae.layer is None:
        raise RefusalScopeError("the SAE does not say which layer it reads", "set cfg.layer (or a hook_name)")
    return sae.layer


@torch.no_grad()
def _splice_stats(
    chat: ChatModel,
    sae: SAE,
    documents: Sequence[Document],
    batch_size: int,
    outlier_factor: float,
    counts: torch.Tensor,
):
    """CE (clean, SAE, zero) summed over next-token positions, KL(clean‖SAE), and FVU parts."""
    layer = _layer(sae)
    totals: dict[str, Any] = {
        "ce_clean": 0.0,
        "ce_sae": 0.0,
        "ce_zero": 0.0,
        "kl": 0.0,
        "n": 0,
        "err": 0.0,
        "sumsq": 0.0,
        "sum": None,
        "tokens": 0,
        "l0": 0.0,
    }
    mode = {"value": "clean"}
    state: dict = {}

    def hook(hidden: torch.Tensor, ctx: ForwardContext):
        if mode["value"] == "clean":
            keep = keep_mask(hidden, ctx.chunk_mask, state["skip"], outlier_factor)
            state["keep"] = keep
            x = hidden[keep].float()
            recon, f = sae(x)
            state["recon"] = recon
            totals["err"] += float((recon - x).pow(2).sum())
            totals["sumsq"] += float(x.pow(2).sum())
            s = x.sum(0)
            totals["sum"] = s if totals["sum"] is None else totals["sum"] + s
            totals["tokens"] += x.shape[0]
            active = f > 0
            totals["l0"] += float(active.sum())
            counts.add_(active.sum(0).float())
            return None
        new = hidden.clone()
        keep = state["keep"]
        new[keep] = state["recon"].to(hidden.dtype) if mode["value"] == "sae" else 0
        return new

    def ce(logits, batch):
        logp = F.log_softmax(logits[:, :-1].float(), -1)
        target = batch.input_ids[:, 1:]
        valid = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).bool()
        nll = -logp.gather(-1, target[..., None]).squeeze(-1)
        return nll[valid].sum(), logp, valid

    with chat.hooks.attached([(layer, hook)]):
        for batch in chat.batches([d.tokens for d in documents], batch_size):
            state["skip"] = torch.tensor([documents[i].skip for i in batch.index])
            mode["value"] = "clean"
            clean = chat.forward(batch).logits
            c_clean, logp_clean, valid = ce(clean, batch)
            mode["value"] = "sae"
            spliced = chat.forward(batch).logits
            c_sae, logp_sae, _ = ce(spliced, batch)
            mode["value"] = "zero"
            zeroed = chat.forward(batch).logits
            c_zero, _, _ = ce(zeroed, batch)
            kl = (logp_clean.exp() * (logp_clean - logp_sae)).sum(-1)[valid].sum()
            totals["ce_clean"] += float(c_clean)
            totals["ce_sae"] += float(c_sae)
            totals["ce_zero"] += float(c_zero)
            totals["kl"] += float(kl)
            totals["n"] += int(valid.sum())
    return totals


def refusal_direction_cosine(
    chat: ChatModel, sae: SAE, harmful: Sequence[str], harmless: Sequence[str], batch_size: int = 16
) -> float:
    """cos(mean-diff of activations, mean-diff of their reconstructions) at post-instruction tokens."""
    layer = _layer(sae)
    acts = {}
    for name, prompts in (("harmful", harmful), ("harmless", harmless)):
        acts[name] = chat.residual(
            list(prompts), [layer], positions="post_instruction", batch_size=batch_size, progress=False
        )[layer]
    with torch.no_grad():
        direction = acts["harmful"].mean(0) - acts["harmless"].mean(0)  # [P, d]
        recon = {k: sae(v)[0] for k, v in acts.items()}
        recon_direction = recon["harmful"].mean(0) - recon["harmless"].mean(0)
    return float(F.cosine_similarity(direction.flatten(), recon_direction.flatten(), dim=0))


def evaluate_sae(
    chat: ChatModel,
    sae: SAE,
    corpora: Mapping[str, Sequence[Document]],
    harmful: Sequence[str] | None = None,
    harmless: Sequence[str] | None = None,
    batch_size: int = 8,
    outlier_factor: float = 10.0,
) -> SAEMetrics:
    """Quality metrics of `sae` on `chat`; `corpora` maps a name (e.g. 'text', 'chat') to documents."""
    sae.check_model(chat)
    _layer(sae)
    if not corpora or not any(len(v) for v in corpora.values()):
        raise RefusalScopeError("no evaluation text was given", "pass at least one non-empty corpus")
    sae = sae.float().eval()
    counts = torch.zeros(sae.d_sae)
    ce_clean, ce_sae, ce_zero, recovered, kl = {}, {}, {}, {}, {}
    err = sumsq = 0.0
    total_sum: torch.Tensor | None = None
    tokens = 0
    l0 = 0.0
    for name, documents in corpora.items():
        t = _splice_stats(chat, sae, documents, batch_size, outlier_factor, counts)
        n = max(t["n"], 1)
        ce_clean[name], ce_sae[name], ce_zero[name] = t["ce_clean"] / n, t["ce_sae"] / n, t["ce_zero"] / n
        denom = ce_zero[name] - ce_clean[name]
        recovered[name] = (ce_zero[name] - ce_sae[name]) / denom if abs(denom) > 1e-9 else float("nan")
        kl[name] = t["kl"] / n
        err += t["err"]
        sumsq += t["sumsq"]
        total_sum = t["sum"] if total_sum is None else total_sum + t["sum"]
        tokens += t["tokens"]
        l0 += t["l0"]
    if total_sum is None:
        raise RefusalScopeError("no token of the evaluation text was kept", "pass longer documents")
    variance = sumsq - float(total_sum.pow(2).sum()) / max(tokens, 1)
    cosine = None
    if harmful and harmless:
        cosine = refusal_direction_cosine(chat, sae, harmful, harmless)
    freq = counts / max(tokens, 1)
    return SAEMetrics(
        fvu=err / max(variance, 1e-12),
        l0=l0 / max(tokens, 1),
        dead_frac=float((counts == 0).float().mean()),
        dense_frac=float((freq > 0.1).float().mean()),
        n_tokens=tokens,
        ce_clean=ce_clean,
        ce_sae=ce_sae,
        ce_zero=ce_zero,
        ce_recovered=recovered,
        kl=kl,
        refusal_cosine=cosine,
    )
