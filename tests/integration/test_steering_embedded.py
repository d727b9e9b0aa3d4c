"""Steering on the embedded SmolLM2-135M-Instruct: the identity property on a real model,
and a large activation addition that visibly changes the reply."""

import torch

from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import ActAdd, DirectionAblation, FeatureSteer, steer

PROMPTS = ["What is the capital of France?", "Give me a recipe for pancakes.", "Write a haiku about autumn."]


def random_sae(chat, layer):
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=8 * chat.d_model, architecture="jumprelu", layer=layer), seed=0)
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    return sae


def test_identity_steering_leaves_smollm2_unchanged(smol):
    layer = smol.n_layers // 2
    sae = random_sae(smol, layer)
    features = list(range(0, 4608, 97))
    base = smol.next_token_logits(PROMPTS)
    assert torch.equal(smol.next_token_logits(PROMPTS, interventions=FeatureSteer(sae, features, "scale", 1.0)), base)
    for prompt, logits in zip(PROMPTS, base):
        x = smol.residual([prompt], [layer], positions="last", progress=False)[layer]
        current = sae.encode(x)[0, features]
        assert (current > 0).any()
        clamp = FeatureSteer(sae, features, "set", current.tolist(), positions=[-1])
        torch.testing.assert_close(smol.next_token_logits([prompt], interventions=clamp)[0], logits, atol=1e-3, rtol=0)
        moved = FeatureSteer(sae, features, "set", (current + 50).tolist(), positions=[-1])
        assert (smol.next_token_logits([prompt], interventions=moved)[0] - logits).abs().max() > 1e-2


def test_large_activation_addition_changes_the_reply_and_is_removed(smol):
    plain = smol.generate(PROMPTS, max_new_tokens=12, progress=False)
    x = smol.residual(PROMPTS, [10], positions="last", progress=False)[10]
    direction = torch.randn(smol.d_model, generator=torch.Generator().manual_seed(0))
    push = ActAdd(direction / direction.norm(), 10, 8 * float(x.norm(dim=-1).mean()))
    with steer(smol, push):
        pushed = smol.generate(PROMPTS, max_new_tokens=12, progress=False)
    assert all(a != b for a, b in zip(pushed.texts, plain.texts))
    assert smol.hooks.active == 0
    assert smol.generate(PROMPTS, max_new_tokens=12, progress=False).texts == plain.texts


def test_steered_smollm2_is_batch_invariant(smol):
    ablate = DirectionAblation(torch.randn(smol.d_model, generator=torch.Generator().manual_seed(1)))
    one = smol.generate(PROMPTS, max_new_tokens=8, batch_size=1, interventions=ablate, progress=False).token_ids
    three = smol.generate(PROMPTS, max_new_tokens=8, batch_size=3, interventions=ablate, progress=False).token_ids
    assert one == three
