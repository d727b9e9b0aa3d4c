"""The sparse autoencoder: one module for the architectures in use.

    f = σ(x' W_enc + b_enc)        x' = x·s − b_dec (if apply_b_dec_to_input) else x·s
    x̂ = (f W_dec + b_dec) / s

with σ one of: ReLU (`standard`, trained with an L1 penalty), JumpReLU (`jumprelu`, a
per-latent threshold θ: f = z·[z > θ]), TopK (`topk`, keep the k largest per token) and
BatchTopK (`batchtopk`: k·batch largest over a batch while training; a single learned
threshold at inference, so a token's code does not depend on its batch-mates). `s` is an
optional input normalisation constant (1 unless the SAE was trained on rescaled inputs).

Tensor names and shapes follow SAELens (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc,
b_dec, threshold), so files move between the two without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import RefusalScopeError

ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk")
_ALIASES = {"relu": "standard", "l1": "standard", "jump_relu": "jumprelu", "batch_topk": "batchtopk"}


def canonical_architecture(name: str) -> str:
    arch = _ALIASES.get(name.lower(), name.lower())
    if arch not in ARCHITECTURES:
        raise RefusalScopeError(
            f"unknown SAE architecture '{name}'",
            f"refusalscope supports {', '.join(ARCHITECTURES)} (gated SAEs: convert to jumprelu first)",
        )
    return arch


@dataclass
class SAEConfig:
    """Shape, activation function and provenance of an SAE.

    `layer` is the decoder block whose output (resid_post) the SAE reads; `hook_name`
    keeps the SAELens/TransformerLens name it was published under.
    """

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None
    layer: int | None = None
    site: str = "resid_post"
    model_name: str | None = None
    model_sha256: str | None = None
    hook_name: str | None = None
    dtype: str = "float32"
    apply_b_dec_to_input: bool = True
    input_scale: float = 1.0
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.architecture = canonical_architecture(self.architecture)
        if self.d_in < 1 or self.d_sae < 1:
            raise RefusalScopeError(f"SAE sizes must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.architecture in ("topk", "batchtopk") and (self.k is None or not 0 < self.k <= self.d_sae):
            raise RefusalScopeError(
                f"a {self.architecture} SAE needs 0 < k <= d_sae, got k={self.k}",
                "set k (the number of active latents per token) in the SAE config",
            )
        if self.hook_name is None and self.layer is not None:
            self.hook_name = f"blocks.{self.layer}.hook_resid_post"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SAE(nn.Module):
    """A sparse autoencoder over one hook point of one model."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture in ("jumprelu", "batchtopk"):
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        else:
            self.register_parameter("threshold", None)

    # ----------------------------------------------------------------- construction
    @classmethod
    def random(cls, cfg: SAEConfig, seed: int = 0) -> SAE:
        """Tied-transpose initialisation with unit-norm decoder rows (the usual start)."""
        sae = cls(cfg)
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w.to(sae.W_dec.dtype))
            sae.W_enc.copy_(w.T.to(sae.W_enc.dtype))
        return sae

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def layer(self) -> int | None:
        return self.cfg.layer

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k else ""
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{k}, layer={c.layer}, model={c.model_name}"

    # ----------------------------------------------------------------- maths
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder multiplies: `x` in the SAE's dtype, scaled and, where the
        architecture says so, centred on b_dec (a gate that reduces each token on its own
        needs it without the matrix product)."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.input_scale != 1.0:
            x = x * self.cfg.input_scale
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder_input(x) @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor, threshold: torch.Tensor | None = None) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "standard":
            return torch.relu(pre)
        if arch in ("jumprelu", "batchtopk"):
            theta = self.threshold if threshold is None else threshold
            return torch.relu(pre) * (pre > theta)
        k = self.cfg.k
        assert k is not None  # SAEConfig requires k for topk
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations f(x), [..., d_sae]."""
        return self.activation(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        out = f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        return out / self.cfg.input_scale if self.cfg.input_scale != 1.0 else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, latents)."""
        f = self.encode(x)
        return self.decode(f), f

    def encode_subset(self, x: torch.Tensor, features: torch.Tensor | list[int]) -> torch.Tensor:
        """Activations of only `features`, [..., len(features)].

        ReLU/JumpReLU/BatchTopK (threshold form): a latent depends only on its own encoder
        column, so this costs O(d_in · len(features)) per token. TopK: whether a latent
        survives depends on all latents, so the full TopK is run (O(d_in · d_sae)) and the
        columns picked from it; comparing against the k-th largest value instead would keep
        every latent tied with it, i.e. more than k, and differ from `encode`.
        """
        if isinstance(features, torch.Tensor) and features.device.type != "cpu":
            # an index already on an accelerator was checked where it was built (steering's
            # latents_fn): checking it again would stall every forward on a device-to-host copy
            idx = features.to(self.W_enc.device, torch.long)
        else:
            idx = torch.as_tensor(features, dtype=torch.long)
            self.check_features(idx)
            idx = idx.to(self.W_enc.device)
        if self.cfg.architecture == "topk":
            return self.encode(x)[..., idx]
        pre = self.encoder_input(x) @ self.W_enc[:, idx] + self.b_enc[idx]
        theta = self.threshold[idx] if self.threshold is not None else None
        return self.activation(pre, theta)

    def decoder_directions(self, features: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Residual-space effect of one unit of each latent: W_dec rows, undone input scale."""
        rows = self.W_dec if features is None else self.W_dec[torch.as_tensor(features, dtype=torch.long)]
        return rows / self.cfg.input_scale if self.cfg.input_scale != 1.0 else rows

    # ----------------------------------------------------------------- housekeeping
    def check_features(self, features: torch.Tensor) -> None:
        if features.numel() and (int(features.min()) < 0 or int(features.max()) >= self.d_sae):
            bad = [int(f) for f in features.flatten() if not 0 <= int(f) < self.d_sae]
            raise RefusalScopeError(
                f"feature index {bad[0]} is out of range for an SAE with d_sae={self.d_sae}",
                f"use feature indices in [0, {self.d_sae - 1}]",
            )

    def check_model(self, chat) -> None:
        """Raise if this SAE cannot read the residual stream of `chat`."""
        if chat.d_model != self.d_in:
            raise RefusalScopeError(
                f"SAE d_in={self.d_in} does not match the model's d_model={chat.d_model} ({chat.info.name})",
                f"use an SAE trained on {chat.info.name}, or load the model it was trained on ({self.cfg.model_name})",
            )
        if self.layer is not None and not 0 <= self.layer < chat.n_layers:
            raise RefusalScopeError(
                f"the SAE reads layer {self.layer}, but {chat.info.name} has {chat.n_layers} layers",
                "use an SAE trained on this model",
            )

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm, compensating in the encoder so f·W_dec is unchanged.

        Outputs are preserved for standard, jumprelu and batchtopk (thresholds scale with their
        latents). For topk the ranking of latents changes, so outputs change: callers use it
        there as a training-time constraint, not as a reparametrisation.
        """
        norms = self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.W_dec.div_(norms)
        self.W_enc.mul_(norms.T)
        self.b_enc.mul_(norms.squeeze(-1))
        if self.threshold is not None:
            self.threshold.mul_(norms.squeeze(-1))

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Bake the input scale into the weights (s → 1) without changing any output."""
        s = self.cfg.input_scale
        if s == 1.0:
            return
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.cfg.input_scale = 1.0

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        return {k: v.detach() for k, v in tensors.items()}

    def content_hash(self) -> str:
        from ..provenance import sha256_tensors

        return sha256_tensors(self.state_tensors())
