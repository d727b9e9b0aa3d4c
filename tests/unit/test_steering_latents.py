"""Steering reads SAE latents through `SAE.encode_subset` only (steering/latents.py).

TopK keeps exactly k latents per token, also when several tie at the k-th value; feature
steering and the feature and probe gates must see the same latents `encode` does. Before
issue #14 they used a private copy of the encoder that kept every latent tied with the
k-th value (more than k), so these tests fail on that code.
"""

from __future__ import annotations

import copy

import torch

from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import Conditional, FeatureGate, FeatureSteer, ProbeGate
from refusalscope.steering.latents import latents_fn, steering_view
from refusalscope.testing import MIXED_LENGTH_PROMPTS

LAYER = 1
TIED = [0, 1, 2]


def tied_topk_sae(k: int = 2) -> SAE:
    """Three identical latents with a large bias: they lead every token and tie, k = 2."""
    sae = SAE.random(SAEConfig(d_in=64, d_sae=48, architecture="topk", k=k, layer=LAYER), seed=3)
    with torch.no_grad():
        sae.W_enc[:, 1] = sae.W_enc[:, 0]
        sae.W_enc[:, 2] = sae.W_enc[:, 0]
        sae.b_enc[:3] = 100.0
    return sae


def residual(chat, intervention=None):
    return chat.residual(MIXED_LENGTH_PROMPTS, [LAYER], positions="all", interventions=intervention, progress=False)[
        LAYER
    ]


def test_feature_steering_on_tied_topk_latents_matches_encode(chat):
    sae = tied_topk_sae()
    plain = residual(chat)
    got = residual(chat, FeatureSteer(sae, TIED, "scale", 0.0))  # switch the three latents off
    dirs = sae.W_dec[TIED]
    for x, y in zip(plain, got):
        f = sae.encode(x)[:, TIED]
        assert ((f != 0).sum(-1) == 2).all()  # encode keeps exactly k = 2 of the three
        torch.testing.assert_close(y, x - f @ dirs, atol=1e-4, rtol=1e-5)
        # comparing with the k-th value instead keeps all three, a visibly different edit
        pre = sae.pre_activations(x)
        kth = pre.topk(sae.cfg.k, dim=-1).values[..., -1:]
        all_tied = torch.relu(pre[:, TIED]) * (pre[:, TIED] >= kth)
        assert ((all_tied != 0).sum(-1) == 3).all()
        assert (y - (x - all_tied @ dirs)).abs().max() > 1.0


def test_gates_on_tied_topk_latents_score_what_encode_gives(chat):
    sae = tied_topk_sae()
    x = residual(chat)[0]
    full = sae.encode(x)
    for j in TIED:
        score = FeatureGate(sae, j).scorer(chat)(x)
        torch.testing.assert_close(score, full[:, j])
    probe = ProbeGate(torch.ones(3), 0.5, sae=sae, features=TIED).scorer(chat)(x)
    torch.testing.assert_close(probe, full[:, TIED].sum(-1) + 0.5)
    assert float(probe.max()) < 250  # two latents of ~100 each, not three


def test_gate_decisions_use_the_exact_latents(chat):
    sae = tied_topk_sae()
    gate = Conditional(FeatureSteer(sae, [5], "add", 1.0), ProbeGate(torch.ones(3), 0.0, sae=sae, features=TIED), 250.0)
    # the reduced score is the max over prompt tokens of f0 + f1 + f2 = two ~100-sized latents
    decisions = gate.decisions(chat, MIXED_LENGTH_PROMPTS)
    assert not decisions.fired.any() and (decisions.scores > 150).all()


def test_no_gradient_reaches_the_sae_and_the_caller_sae_is_untouched():
    """GCG differentiates through steering hooks with respect to its input only."""
    sae = tied_topk_sae()
    sae.requires_grad_(True)
    fn = latents_fn(sae, [0, 7, 30], "cpu")
    x = torch.randn(5, 64, requires_grad=True)
    fn(x).sum().backward()
    assert x.grad is not None and sae.W_enc.grad is None
    assert sae.W_enc.requires_grad  # the caller's SAE keeps its own settings


def test_a_float32_cpu_sae_is_viewed_not_copied_and_others_are_float32_copies():
    sae = tied_topk_sae()
    view = steering_view(sae, "cpu")
    assert view.W_enc.data_ptr() == sae.W_enc.data_ptr() and view is steering_view(sae, "cpu")

    half = SAE.random(SAEConfig(d_in=64, d_sae=48, architecture="jumprelu", layer=LAYER, dtype="bfloat16"), seed=4)
    x = torch.randn(6, 64)
    got = latents_fn(half, [1, 2, 40], "cpu")(x)
    assert got.dtype == torch.float32 and half.W_enc.dtype == torch.bfloat16
    torch.testing.assert_close(got, copy.deepcopy(half).float().encode_subset(x, [1, 2, 40]))
    with torch.no_grad():  # a copy made before an in-place edit is not reused after it
        half.b_enc.add_(1.0)
    torch.testing.assert_close(
        latents_fn(half, [1, 2, 40], "cpu")(x), copy.deepcopy(half).float().encode_subset(x, [1, 2, 40])
    )
