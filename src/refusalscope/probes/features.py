"""Probe inputs, from one pass of every prompt through the model.

All of them are read at the post-instruction positions and averaged over them (where
the refusal direction is read, and what `ProbeGate` with reduce='mean' over
positions='post_instruction' computes during generation, so a saved probe gates exactly
as it was evaluated): the dense residual at a layer, chosen SAE latents (encoded per
position, then averaged), or the projection on a direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from ..models.chat import ChatModel


class ResidualBank:
    """Post-instruction residuals [N, P, d] of a fixed prompt list at several layers."""

    def __init__(
        self,
        chat: ChatModel,
        prompts: Sequence[str],
        layers: Sequence[int],
        batch_size: int = 8,
        progress: bool = False,
    ):
        self.prompts = list(prompts)
        self.index = {p: i for i, p in enumerate(self.prompts)}
        self.layers = sorted(set(layers))
        self.residual = chat.residual(self.prompts, self.layers, "post_instruction", batch_size, progress=progress)

    def rows(self, prompts: Sequence[str]) -> np.ndarray:
        return np.array([self.index[p] for p in prompts], dtype=int)

    def dense(self, layer: int, prompts: Sequence[str]) -> np.ndarray:
        return self.residual[layer][self.rows(prompts)].mean(1).double().numpy()

    def latents(self, sae, features: Sequence[int], prompts: Sequence[str]) -> np.ndarray:
        x = self.residual[sae.layer][self.rows(prompts)]
        with torch.no_grad():
            return sae.float().encode_subset(x.float(), list(features)).mean(1).double().numpy()

    def projection(self, layer: int, direction: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        unit = np.asarray(direction, np.float64) / np.linalg.norm(direction)
        return (self.dense(layer, prompts) @ unit)[:, None]

    def live_latents(self, sae, prompts: Sequence[str]) -> np.ndarray:
        """Latents of `sae` that fire on at least one of `prompts` at a post-instruction position."""
        x = self.residual[sae.layer][self.rows(prompts)]
        with torch.no_grad():
            fired = (sae.float().encode(x.float()) > 0).flatten(0, 1).any(0)
        return fired.nonzero().squeeze(-1).numpy()
