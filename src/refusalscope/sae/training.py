"""Train an SAE on cached activations: TopK (default), BatchTopK, ReLU/L1 and JumpReLU.

One loop for all four, in the spirit of EleutherAI's sparsify: inputs rescaled so that
E‖x‖ = √d_in (the constant is folded into the weights at the end), decoder bias started at
the data mean, decoder rows kept at unit norm (gradient component along each row removed
before the step, rows renormalised after), Adam with linear warm-up and linear decay to
zero. TopK decodes through `embedding_bag` over the k active rows only, which is what makes
CPU training fast: the decoder costs k·d_in per token instead of d_sae·d_in.

Dead latents (no activation for `dead_tokens` tokens) are revived by the AuxK loss of
Gao et al. (2024): the top `aux_k` dead latents are asked to reconstruct the residual
error. JumpReLU uses straight-through estimators with a rectangle kernel for the
threshold (Rajamanoharan et al., 2024) and an L0 penalty.

Training checkpoints every `checkpoint_seconds` into its output folder and resumes from
there, so a killed run loses at most that much work.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import RefusalScopeError
from ..provenance import package_versions
from .model import SAE, SAEConfig, canonical_architecture

# Bumped whenever a change to the training code changes the SAE that a given TrainConfig
# produces; part of `training_key`, so cached SAEs from older trainers are not reused.
TRAINER_VERSION = 1


@dataclass
class TrainConfig:
    """Hyper-parameters of one SAE training run.

    `lr=None` uses sparsify's rule 2e-4 / sqrt(d_sae / 2**14), tuned for runs of many
    thousands of steps. A run of a few hundred steps (the quick preset: 22.5k tokens,
    10 epochs, 220 steps) is badly under-trained at that rate: on the default model it
    leaves FVU at 0.32 and the refusal direction at cosine 0.83, where 4x the rate gives
    0.24 and 0.92 (benchmarks/sae_training.py). Short runs set `lr` themselves.
    """

    architecture: str = "topk"
    d_sae: int = 2048
    k: int = 32
    epochs: int = 8
    batch_size: int = 2048
    lr: float | None = None  # None: 2e-4 / sqrt(d_sae / 2**14), the sparsify scaling
    warmup_frac: float = 0.05
    decay_start_frac: float = 0.6
    aux_k: int | None = None  # None: d_in // 2
    aux_coeff: float = 1 / 32
    dead_tokens: int = 100_000
    l1_coeff: float = 3e-3  # standard (ReLU) SAEs, on normalised inputs
    l0_coeff: float = 1e-3  # JumpReLU
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.05
    holdout_frac: float = 0.05
    # rescale inputs so that E‖x‖ = √d_in (folded back at the end); False trains on raw
    # activations as sparsify does (no measurable difference on the default model)
    normalise_inputs: bool = True
    seed: int = 0
    checkpoint_seconds: float = 60.0

    def __post_init__(self) -> None:
        self.architecture = canonical_architecture(self.architecture)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 2**14)


@dataclass
class TrainResult:
    sae: SAE
    steps: int
    tokens_seen: int
    seconds: float
    tokens_per_second: float
    holdout: dict = field(default_factory=dict)


class _SparseDecode(torch.autograd.Function):
    """Σ_j vals[b, j] · W[idx[b, j]]: embedding_bag forward, two dense matmuls backward.

    torch's own embedding_bag backward with per-sample weights runs an index loop that is
    ~20× slower than its forward on CPU; scattering the k values into a dense [B, d_sae]
    code and using two GEMMs is several times faster (benchmarks/sae_training.py).
    """

    @staticmethod
    def forward(ctx, idx, vals, weight):
        ctx.save_for_backward(idx, vals, weight)
        return F.embedding_bag(idx, weight, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        idx, vals, weight = ctx.saved_tensors
        grad_vals = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_vals = (grad @ weight.T).gather(1, idx)
        if ctx.needs_input_grad[2]:
            dense = torch.zeros(idx.shape[0], weight.shape[0], dtype=vals.dtype).scatter_(1, idx, vals)
            grad_weight = dense.T @ grad
        return None, grad_vals, grad_weight


def sparse_decode(idx: torch.Tensor, vals: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _SparseDecode.apply(idx, vals, weight)


class _JumpReLU(torch.autograd.Function):
    """f = z·H(z − θ); dθ via a rectangle-kernel pseudo-derivative."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((z - theta).abs() < eps / 2).to(grad.dtype)
        grad_z = grad * (z > theta)
        grad_theta = (-(theta / eps) * near * grad).sum(dim=tuple(range(grad.dim() - 1)))
        return grad_z, grad_theta, None


class _Step(torch.autograd.Function):
    """H(z − θ) for the L0 penalty; dθ = −K((z − θ)/ε)/ε."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((z - theta).abs() < eps / 2).to(grad.dtype)
        grad_theta = (-(1.0 / eps) * near * grad).sum(dim=tuple(range(grad.dim() - 1)))
        return torch.zeros_like(z), grad_theta, None


class Trainer:
    """Holds the SAE, optimiser and bookkeeping; `step(x)` trains on one batch."""

    def __init__(self, cfg: TrainConfig, d_in: int, sae_meta: dict, total_steps: int):
        self.cfg = cfg
        self.total_steps = max(total_steps, 1)
        arch = cfg.architecture
        self.sae = SAE.random(
            SAEConfig(
                d_in=d_in,
                d_sae=cfg.d_sae,
                architecture=arch,
                k=cfg.k if arch in ("topk", "batchtopk") else None,
                **sae_meta,
            ),
            seed=cfg.seed,
        )
        self.log_threshold: torch.nn.Parameter | None
        if arch == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))
        else:
            self.log_threshold = None
        params = [self.sae.W_enc, self.sae.b_enc, self.sae.W_dec, self.sae.b_dec]
        if self.log_threshold is not None:
            params.append(self.log_threshold)
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=cfg.learning_rate(), betas=(0.9, 0.999))
        self.step_count = 0
        self.tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
        self.batchtopk_threshold_sum = 0.0
        self.batchtopk_threshold_n = 0
        self.aux_k = cfg.aux_k or d_in // 2

    # ---------------------------------------------------------------- schedule
    def lr_at(self, step: int) -> float:
        base = self.cfg.learning_rate()
        warm = max(1, int(self.cfg.warmup_frac * self.total_steps))
        decay_start = int(self.cfg.decay_start_frac * self.total_steps)
        if step < warm:
            return base * (step + 1) / warm
        if step >= decay_start:
            return base * max(0.0, (self.total_steps - step) / max(1, self.total_steps - decay_start))
        return base

    # ---------------------------------------------------------------- forward
    def _decode_sparse(self, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        return sparse_decode(idx, vals, self.sae.W_dec) + self.sae.b_dec

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        sae, cfg = self.sae, self.cfg
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        variance = (x - x.mean(0)).pow(2).sum()
        stats: dict = {}
        if cfg.architecture == "topk":
            vals, idx = pre.topk(cfg.k, dim=-1)
            vals = torch.relu(vals)
            recon = self._decode_sparse(idx, vals)
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
            fired[idx[vals > 0]] = True
            l0 = (vals > 0).sum(-1).float().mean()
        elif cfg.architecture == "batchtopk":
            acts = torch.relu(pre)
            flat = acts.flatten()
            n_keep = cfg.k * x.shape[0]
            top_vals, top_idx = flat.topk(n_keep)
            f = torch.zeros_like(flat).scatter(0, top_idx, top_vals).view_as(acts)
            recon = f @ sae.W_dec + sae.b_dec
            positive = top_vals.detach()[top_vals.detach() > 0]
            if positive.numel():
                self.batchtopk_threshold_sum += float(positive.min())
                self.batchtopk_threshold_n += 1
            fired = (f > 0).any(0)
            l0 = (f > 0).sum(-1).float().mean()
        elif cfg.architecture == "standard":
            f = torch.relu(pre)
            recon = f @ sae.W_dec + sae.b_dec
            fired = (f > 0).any(0)
            l0 = (f > 0).sum(-1).float().mean()
            l1 = f.sum(-1).mean()
            stats["l1"] = float(l1.detach())
        else:  # jumprelu
            assert self.log_threshold is not None  # a jumprelu trainer learns its thresholds
            theta = self.log_threshold.exp()
            f = _JumpReLU.apply(torch.relu(pre), theta, cfg.jumprelu_bandwidth)
            recon = f @ sae.W_dec + sae.b_dec
            fired = (f > 0).any(0)
            l0_soft = _Step.apply(torch.relu(pre), theta, cfg.jumprelu_bandwidth).sum(-1).mean()
            l0 = (f > 0).sum(-1).float().mean()
        error = (recon - x).pow(2).sum()
        fvu = error / variance.clamp_min(1e-12)
        loss = fvu
        if cfg.architecture == "standard":
            loss = loss + cfg.l1_coeff * l1
        if cfg.architecture == "jumprelu":
            loss = loss + cfg.l0_coeff * l0_soft
        # bookkeeping of dead latents
        self.tokens_since_fired += x.shape[0]
        self.tokens_since_fired[fired] = 0
        dead = self.tokens_since_fired >= cfg.dead_tokens
        if cfg.architecture in ("topk", "batchtopk") and dead.any() and cfg.aux_coeff > 0:
            k_aux = min(self.aux_k, int(dead.sum()))
            masked = pre.masked_fill(~dead, -torch.inf)
            aux_vals, aux_idx = masked.topk(k_aux, dim=-1)
            aux_vals = torch.relu(aux_vals)
            residual = (x - recon).detach()
            aux_recon = sparse_decode(aux_idx, aux_vals, sae.W_dec)
            aux = (aux_recon - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
            scale = min(1.0, int(dead.sum()) / self.aux_k)
            loss = loss + cfg.aux_coeff * scale * aux
            stats["aux"] = float(aux.detach())
        stats.update(fvu=float(fvu.detach()), l0=float(l0), dead=float(dead.float().mean()))
        return loss, stats

    def step(self, x: torch.Tensor) -> dict:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)
        loss, stats = self.loss(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            w = self.sae.W_dec
            if w.grad is not None:  # keep the update tangent to the unit sphere of each row
                w.grad -= (w.grad * w).sum(-1, keepdim=True) * w
        self.optimizer.step()
        with torch.no_grad():
            self.sae.W_dec.div_(self.sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        self.step_count += 1
        return stats

    # ---------------------------------------------------------------- finishing
    def finished_sae(self, input_scale: float) -> SAE:
        """A copy with thresholds materialised and the input scale folded in."""
        sae = SAE(SAEConfig(**{**self.sae.cfg.to_dict(), "input_scale": 1.0}))
        with torch.no_grad():
            for name, tensor in self.sae.state_tensors().items():
                getattr(sae, name).copy_(tensor)
            if self.cfg.architecture == "jumprelu":
                assert self.log_threshold is not None
                sae.threshold.copy_(self.log_threshold.exp())
            if self.cfg.architecture == "batchtopk":
                mean_min = self.batchtopk_threshold_sum / max(1, self.batchtopk_threshold_n)
                sae.threshold.fill_(mean_min)
        sae.cfg.input_scale = input_scale
        # encode(x·s) on raw x, then bake s into the weights (thresholds act on
        # pre-activations, which folding leaves unchanged). Folding leaves every decoder
        # row with norm 1/s; renormalising multiplies every pre-activation by the same
        # factor, so TopK's ranking is unchanged and latents are in raw residual units.
        sae.fold_input_scale()
        sae.normalize_decoder()
        sae.requires_grad_(False)
        return sae

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"param.{i}": p.detach().clone() for i, p in enumerate(self.params)}
        for i, p in enumerate(self.params):
            st = self.optimizer.state.get(p, {})
            if st:
                tensors[f"adam.{i}.exp_avg"] = st["exp_avg"]
                tensors[f"adam.{i}.exp_avg_sq"] = st["exp_avg_sq"]
        tensors["tokens_since_fired"] = self.tokens_since_fired
        meta = {
            "step": self.step_count,
            "adam_steps": {
                i: float(self.optimizer.state[p]["step"])
                for i, p in enumerate(self.params)
                if self.optimizer.state.get(p)
            },
            "batchtopk": [self.batchtopk_threshold_sum, self.batchtopk_threshold_n],
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(tensors[f"param.{i}"])
        for i, p in enumerate(self.params):
            if f"adam.{i}.exp_avg" in tensors:
                self.optimizer.state[p] = {
                    "step": torch.tensor(meta["adam_steps"][str(i)]),
                    "exp_avg": tensors[f"adam.{i}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"].clone(),
                }
        self.tokens_since_fired = tensors["tokens_since_fired"].clone()
        self.step_count = meta["step"]
        self.batchtopk_threshold_sum, self.batchtopk_threshold_n = meta["batchtopk"]


def _save_checkpoint(folder: Path, trainer: Trainer, fingerprint: str) -> None:
    tensors, meta = trainer.state()
    meta["fingerprint"] = fingerprint
    tmp = folder / ".checkpoint.tmp.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, folder / "checkpoint.safetensors")
    tmp_json = folder / ".checkpoint.tmp.json"
    tmp_json.write_text(json.dumps(meta))
    os.replace(tmp_json, folder / "checkpoint.json")


def _load_checkpoint(folder: Path, trainer: Trainer, fingerprint: str) -> bool:
    meta_path, tensor_path = folder / "checkpoint.json", folder / "checkpoint.safetensors"
    if not (meta_path.is_file() and tensor_path.is_file()):
        return False
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:
        return False
    try:
        trainer.load_state(load_file(str(tensor_path)), meta)
    except Exception:  # a checkpoint from another run shape: start over
        return False
    return True


def training_key(cfg: TrainConfig) -> str:
    """A short content key of what determines the trained SAE (config + trainer version),
    so that caches keyed by it never hand back an SAE trained another way."""
    blob = json.dumps({"trainer": TRAINER_VERSION, "cfg": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def split_rows(doc_index: np.ndarray, holdout_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole documents (not rows) so held-out tokens have unseen contexts."""
    docs = np.unique(doc_index)
    rng = np.random.default_rng(seed)
    n_hold = max(1, int(round(holdout_frac * len(docs)))) if holdout_frac > 0 and len(docs) > 1 else 0
    held = set(rng.choice(docs, size=n_hold, replace=False).tolist()) if n_hold else set()
    mask = np.isin(doc_index, list(held))
    return np.nonzero(~mask)[0], np.nonzero(mask)[0]


@torch.no_grad()
def holdout_metrics(sae: SAE, x: torch.Tensor, batch: int = 4096) -> dict:
    """FVU, L0 and latent-frequency statistics on held-out activations (raw scale)."""
    err = 0.0
    l0 = 0.0
    counts = torch.zeros(sae.d_sae)
    for start in range(0, x.shape[0], batch):
        chunk = x[start : start + batch]
        recon, f = sae(chunk)
        err += float((recon - chunk).pow(2).sum())
        active = f > 0
        l0 += float(active.sum())
        counts += active.sum(0).float()
    n = x.shape[0]
    variance = float((x - x.mean(0)).pow(2).sum())
    freq = counts / max(n, 1)
    return {
        "fvu": err / max(variance, 1e-12),
        "l0": l0 / max(n, 1),
        "dead_frac": float((counts == 0).float().mean()),
        "dense_frac": float((freq > 0.1).float().mean()),
        "n_tokens": n,
    }


def train_sae(
    store,
    layer: int,
    cfg: TrainConfig,
    out_dir: str | Path,
    sae_meta: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one SAE on layer `layer` of an ActivationStore; checkpoints in `out_dir`."""
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acts = store.layer(layer)
    if acts.shape[0] == 0:
        raise RefusalScopeError("the activation harvest is empty", "harvest more documents")
    train_idx, hold_idx = split_rows(store.documents(), cfg.holdout_frac, cfg.seed)
    x_all = torch.from_numpy(np.asarray(acts, dtype=np.float32))
    x_train = x_all[torch.from_numpy(train_idx)]
    x_hold = x_all[torch.from_numpy(hold_idx)] if len(hold_idx) else x_all[:0]
    if x_train.shape[0] < cfg.batch_size:
        raise RefusalScopeError(
            f"only {x_train.shape[0]} training tokens for a batch size of {cfg.batch_size}",
            "harvest more tokens or lower the batch size",
        )
    scale = math.sqrt(x_train.shape[1]) / float(x_train.norm(dim=-1).mean()) if cfg.normalise_inputs else 1.0
    x_train = x_train * scale
    steps_per_epoch = x_train.shape[0] // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    meta = dict(sae_meta or {})
    meta.setdefault("layer", layer)
    trainer = Trainer(cfg, x_train.shape[1], meta, total)
    with torch.no_grad():
        trainer.sae.b_dec.copy_(x_train.mean(0))
    fingerprint = json.dumps(
        {"cfg": asdict(cfg), "layer": layer, "rows": int(acts.shape[0]), "plan": store.manifest.plan_hash},
        sort_keys=True,
    )
    resumed = _load_checkpoint(out_dir, trainer, fingerprint)
    bar = tqdm(
        total=total, initial=trainer.step_count, desc=f"training SAE L{layer}", unit="step", disable=not progress
    )
    started = time.perf_counter()
    last_ckpt = started
    start_step = trainer.step_count
    stats: dict = {}
    while trainer.step_count < total:
        epoch, offset = divmod(trainer.step_count, steps_per_epoch)
        perm = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for b in range(offset, steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            stats = trainer.step(x_train[idx])
            bar.update(1)
            if trainer.step_count % 10 == 0:
                rate = (trainer.step_count - start_step) * cfg.batch_size / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(
                    fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.0f}", dead=f"{stats['dead']:.2f}", tok_s=f"{rate:.0f}"
                )
            if time.perf_counter() - last_ckpt > cfg.checkpoint_seconds:
                _save_checkpoint(out_dir, trainer, fingerprint)
                last_ckpt = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - started
    sae = trainer.finished_sae(scale)
    hold = holdout_metrics(sae, x_hold) if x_hold.shape[0] else {}
    tokens = (trainer.step_count - start_step) * cfg.batch_size
    sae.cfg.provenance = {
        "trainer": "refusalscope",
        "trainer_version": TRAINER_VERSION,
        "train_config": asdict(cfg),
        "layer": layer,
        "harvest": {
            "plan_hash": store.manifest.plan_hash,
            "rows": int(acts.shape[0]),
            "train_rows": int(x_train.shape[0]),
            "holdout_rows": int(x_hold.shape[0]),
            "kinds": store.kinds(),
        },
        "steps": trainer.step_count,
        "resumed": resumed,
        "input_scale": scale,
        "holdout": hold,
        "versions": package_versions(),
    }
    for name in ("checkpoint.safetensors", "checkpoint.json"):
        (out_dir / name).unlink(missing_ok=True)
    return TrainResult(sae, trainer.step_count, tokens, seconds, tokens / max(seconds, 1e-9), hold)
