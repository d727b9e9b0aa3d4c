"""Steering interventions on tiny random models: the maths, identity, KV cache, batching,
hook removal and error messages."""

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.models.hooks import ForwardContext
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import (
    ActAdd,
    Conditional,
    DirectionAblation,
    DirectionClamp,
    DirectionGate,
    FeatureSteer,
    Steering,
    steer,
)
from refusalscope.steering.positions import position_mask
from refusalscope.testing import MIXED_LENGTH_PROMPTS, tiny_chat_model

PROMPTS = MIXED_LENGTH_PROMPTS
ARCHS = ["standard", "jumprelu", "topk", "batchtopk"]
LAYER = 1


def make_sae(arch="jumprelu", d_in=64, d_sae=256, layer=LAYER, seed=1, dtype="float32"):
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture=arch, k=16 if "topk" in arch else None, layer=layer, dtype=dtype
    )
    sae = SAE.random(cfg, seed=seed)
    with torch.no_grad():  # spread the latents so that some are active and some are not
        gen = torch.Generator().manual_seed(seed)
        sae.b_enc.copy_((torch.randn(d_sae, generator=gen) * 0.5).to(sae.b_enc.dtype))
        sae.b_dec.copy_((torch.randn(d_in, generator=gen) * 0.1).to(sae.b_dec.dtype))
        if sae.threshold is not None:
            sae.threshold.fill_(0.3)
    return sae


def steered_residual(chat, prompts, intervention, layer=LAYER):
    """Residual after `layer` with the intervention applied (capture hooks run after it)."""
    return chat.residual(prompts, [layer], positions="all", interventions=intervention, progress=False)[layer]


def naive_steered_greedy(chat, prompt, steering, n):
    """Reference: no KV cache, no padding; the whole sequence recomputed at every step,
    with a context that marks the prompt tokens so position selections still apply."""
    ids = chat.encode(chat.format(prompt))
    out = []
    with chat.hooks.attached(steering.hooks(chat)):
        for step in range(n):
            seq = torch.tensor([ids + out])
            ctx = ForwardContext(
                torch.ones_like(seq), torch.tensor([len(ids)]), 0, torch.tensor([0]), 10_000 + step, "forward"
            )
            with chat.hooks.forward_context(ctx):
                logits = chat.model(input_ids=seq).logits[0, -1]
            out.append(int(logits.float().argmax()))
    return out


@pytest.fixture(scope="module")
def unsteered(chat):
    return chat.residual(PROMPTS, [LAYER], positions="all", progress=False)[LAYER]


# ---------------------------------------------------------------------- identity
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steering_latents_to_their_own_values_leaves_the_logits_unchanged(arch, dtype):
    """Tolerances: `scale 1` and `add 0` are exact in every dtype (the change is 0);
    `set` to values measured in a separate pass: 1e-4 (fp32) and 1e-2 (bf16) on the logits,
    the measured values differing from the in-hook ones by float rounding only."""
    chat = tiny_chat_model("llama", dtype=dtype)
    sae = make_sae(arch)
    features = list(range(0, 256, 5))
    base = chat.next_token_logits(PROMPTS)
    for mode, value in (("scale", 1.0), ("add", 0.0)):
        got = chat.next_token_logits(PROMPTS, interventions=FeatureSteer(sae, features, mode, value))
        assert torch.equal(got, base), (mode, arch, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for prompt in PROMPTS[:3]:
        x = chat.residual([prompt], [LAYER], positions="last", progress=False)[LAYER]
        current = sae.encode(x)[0, features]
        assert (current > 0).any()
        clamp = FeatureSteer(sae, features, "set", current.tolist(), positions=[-1])
        torch.testing.assert_close(
            chat.next_token_logits([prompt], interventions=clamp), chat.next_token_logits([prompt]), atol=tol, rtol=0
        )


# ---------------------------------------------------------------------- hand-computed expectations
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode,value", [("set", 5.0), ("scale", -3.0), ("add", 2.5)])
def test_feature_steering_matches_the_formula(chat, unsteered, arch, mode, value):
    sae = make_sae(arch)
    features = [3, 17, 100]
    got = steered_residual(chat, PROMPTS, FeatureSteer(sae, features, mode, value))
    dirs = sae.W_dec[features]
    for x, y in zip(unsteered, got):
        f = sae.encode(x)[:, features]
        new = {"set": torch.full_like(f, value), "scale": f * value, "add": f + value}[mode]
        torch.testing.assert_close(y, x + (new - f) @ dirs, atol=1e-5, rtol=1e-5)


def test_feature_values_per_feature_and_input_scale(chat, unsteered):
    sae = make_sae("standard")
    sae.cfg.input_scale = 2.0
    got = steered_residual(chat, PROMPTS[:2], FeatureSteer(sae, [4, 9], "set", [1.0, -2.0]))
    for x, y in zip(unsteered, got):
        f = sae.encode(x)[:, [4, 9]]
        expected = x + (torch.tensor([1.0, -2.0]) - f) @ (sae.W_dec[[4, 9]] / 2.0)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_keep_error_false_replaces_the_residual_by_the_reconstruction(chat, unsteered):
    sae = make_sae("topk")
    got = steered_residual(chat, PROMPTS[:2], FeatureSteer(sae, [7], "set", 3.0, keep_error=False))
    for x, y in zip(unsteered, got):
        f = sae.encode(x)
        f[:, 7] = 3.0
        torch.testing.assert_close(y, sae.decode(f), atol=1e-5, rtol=1e-5)


def test_actadd_adds_the_vector_at_the_selected_positions_only(chat, unsteered):
    d = torch.randn(chat.d_model)
    got = steered_residual(chat, PROMPTS, ActAdd(d, LAYER, 3.0, positions=[0, -1]))
    for x, y in zip(unsteered, got):
        expected = x.clone()
        expected[[0, -1]] += 3.0 * d
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    unit = steered_residual(chat, PROMPTS[:1], ActAdd(d, LAYER, 2.0, normalize=True))[0]
    torch.testing.assert_close(unit, unsteered[0] + 2.0 * d / d.norm(), atol=1e-5, rtol=1e-5)


def test_ablation_at_one_layer_matches_the_projection(chat, unsteered):
    d = torch.randn(chat.d_model)
    u = d / d.norm()
    got = steered_residual(chat, PROMPTS, DirectionAblation(d, layers=[LAYER]))
    for x, y in zip(unsteered, got):
        torch.testing.assert_close(y, x - (x @ u)[:, None] * u, atol=1e-5, rtol=1e-5)


def test_ablation_at_every_layer_removes_the_direction_everywhere(chat):
    d = torch.randn(chat.d_model)
    u = d / d.norm()
    layers = ["embed", *range(chat.n_layers)]
    got = chat.residual(PROMPTS, layers, positions="all", interventions=DirectionAblation(d), progress=False)
    plain = chat.residual(PROMPTS, layers, positions="all", progress=False)
    for layer in layers:
        for x, y in zip(plain[layer], got[layer]):
            assert (x @ u).abs().max() > 1e-2
            assert (y @ u).abs().max() < 1e-4


def test_direction_clamp_sets_the_projection_relative_to_the_bias(chat, unsteered):
    d, b = torch.randn(chat.d_model), torch.randn(chat.d_model)
    u = d / d.norm()
    got = steered_residual(chat, PROMPTS, DirectionClamp(d, LAYER, -1.25, bias=b))
    for x, y in zip(unsteered, got):
        torch.testing.assert_close((y - b) @ u, torch.full((x.shape[0],), -1.25), atol=1e-4, rtol=0)
        torch.testing.assert_close(y - (y @ u)[:, None] * u, x - (x @ u)[:, None] * u, atol=1e-5, rtol=1e-5)


def test_clamp_from_an_sae_feature_uses_its_decoder_row_and_b_dec(chat, unsteered):
    sae = make_sae("jumprelu")
    got = steered_residual(chat, PROMPTS[:2], DirectionClamp.from_sae_feature(sae, 11, 4.0))
    u = sae.W_dec[11] / sae.W_dec[11].norm()
    for y in got:
        torch.testing.assert_close((y - sae.b_dec) @ u, torch.full((y.shape[0],), 4.0), atol=1e-4, rtol=0)


def test_interventions_compose_in_order(chat, unsteered):
    d1, d2 = torch.randn(chat.d_model), torch.randn(chat.d_model)
    sae = make_sae("standard")
    combo = [ActAdd(d1, LAYER, 2.0), FeatureSteer(sae, [5], "add", 1.5), ActAdd(d2, LAYER, -1.0)]
    got = steered_residual(chat, PROMPTS[:2], combo)
    for x, y in zip(unsteered, got):
        torch.testing.assert_close(y, x + 2.0 * d1 + 1.5 * sae.W_dec[5] - d2, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- positions
def test_position_masks_follow_prompt_and_generated_tokens():
    # row 0: 2 padding, 3 prompt tokens, then 1 generated; row 1: 5 prompt tokens, then 1 generated
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    prefill = ForwardContext(mask[:, :5], torch.tensor([3, 5]), 0, torch.arange(2), 0, "prefill")
    decode = ForwardContext(mask, torch.tensor([3, 5]), 5, torch.arange(2), 0, "decode")
    assert position_mask(prefill, "all").tolist() == [[False, False, True, True, True], [True] * 5]
    assert position_mask(prefill, "generated").sum() == 0
    assert position_mask(prefill, (0, -1)).tolist() == [
        [False, False, True, False, True],
        [True, False, False, False, True],
    ]
    assert position_mask(decode, "generated").tolist() == [[True], [True]]
    assert position_mask(decode, "prompt").tolist() == [[False], [False]]
    assert position_mask(decode, (-1,)).tolist() == [[False], [False]]


def test_generated_positions_leave_the_prompt_and_first_token_unchanged(chat):
    d = torch.randn(chat.d_model) * 20
    base = chat.generate(PROMPTS, max_new_tokens=6, progress=False).token_ids
    gen = chat.generate(
        PROMPTS, max_new_tokens=6, interventions=ActAdd(d, 2, 1.0, positions="generated"), progress=False
    )
    assert [ids[0] for ids in gen.token_ids] == [ids[0] for ids in base]
    assert gen.token_ids != base
    assert torch.equal(
        chat.next_token_logits(PROMPTS, interventions=ActAdd(d, 2, 1.0, positions="generated")),
        chat.next_token_logits(PROMPTS),
    )


# ---------------------------------------------------------------------- KV cache and batching
def mixed_steering(chat):
    gen = torch.Generator().manual_seed(3)
    sae = make_sae("jumprelu")
    d_gate = torch.randn(chat.d_model, generator=gen)
    scores = (
        Conditional(ActAdd(torch.randn(chat.d_model, generator=gen) * 30, 2, 1.0), DirectionGate(d_gate, 0), 0.0)
        .decisions(chat, PROMPTS)
        .scores
    )
    threshold = float(scores.median())
    return Steering(
        [
            FeatureSteer(sae, [1, 2, 3], "set", 6.0, positions="prompt"),
            FeatureSteer(make_sae("topk", seed=2, layer=2), [9], "scale", -3.0),
            DirectionAblation(torch.randn(chat.d_model, generator=gen), positions="generated"),
            ActAdd(torch.randn(chat.d_model, generator=gen) * 4, 3, 1.0, positions=[-1, -2]),
            Conditional(
                ActAdd(torch.randn(chat.d_model, generator=gen) * 30, 2, 1.0), DirectionGate(d_gate, 0), threshold
            ),
        ]
    )


def test_kv_cached_steered_generation_matches_full_recompute(chat):
    steering = mixed_steering(chat)
    plain = chat.generate(PROMPTS, max_new_tokens=8, batch_size=6, progress=False).token_ids
    gen = chat.generate(PROMPTS, max_new_tokens=8, batch_size=6, interventions=steering, progress=False).token_ids
    assert gen != plain
    for prompt, ids in zip(PROMPTS, gen):
        assert ids == naive_steered_greedy(chat, prompt, steering, len(ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steered_greedy_does_not_depend_on_batch_size_or_padding(dtype):
    chat = tiny_chat_model("qwen2", seed=1, dtype=dtype)
    steering = mixed_steering(chat)
    runs = [  # batch 1 has no padding; larger batches pad the shorter prompts on the left
        chat.generate(PROMPTS, max_new_tokens=8, batch_size=b, interventions=steering, progress=False).token_ids
        for b in (1, 4, 6)
    ]
    assert all(r == runs[0] for r in runs[1:])


# ---------------------------------------------------------------------- hook lifetime
def test_hooks_are_removed_after_the_block_and_on_errors(chat):
    d = torch.randn(chat.d_model)
    with steer(chat, [ActAdd(d, 1, 5.0), DirectionAblation(d)]) as s:
        assert chat.hooks.active == 1 + chat.n_layers + 1
        assert isinstance(s, Steering)
    assert chat.hooks.active == 0
    with pytest.raises(ValueError, match="inside"), steer(chat, ActAdd(d, 1, 5.0)):
        raise ValueError("inside")
    assert chat.hooks.active == 0 and all(not layer._forward_hooks for layer in chat.layers)


def test_hooks_are_removed_when_generation_raises(chat):
    d = torch.randn(chat.d_model)

    class Explode:
        def hooks(self, model):
            def fn(hidden, ctx):
                if ctx.phase == "decode":
                    raise RuntimeError("mid-generation failure")

            return [(3, fn)]

    with pytest.raises(RuntimeError, match="mid-generation"), steer(chat, DirectionAblation(d)):
        chat.generate(PROMPTS, max_new_tokens=4, interventions=Explode(), progress=False)
    assert chat.hooks.active == 0
    with pytest.raises(RuntimeError, match="mid-generation"):
        chat.generate(PROMPTS, max_new_tokens=4, interventions=[ActAdd(d, 1, 1.0), Explode()], progress=False)
    assert chat.hooks.active == 0 and not chat.embed._forward_hooks


def test_steer_block_equals_the_interventions_argument(chat):
    d = torch.randn(chat.d_model) * 10
    act = ActAdd(d, 2, 1.0)
    with steer(chat, act):
        inside = chat.generate(PROMPTS, max_new_tokens=5, progress=False).token_ids
        inside_logits = chat.next_token_logits(PROMPTS)
    assert inside == chat.generate(PROMPTS, max_new_tokens=5, interventions=act, progress=False).token_ids
    assert torch.equal(inside_logits, chat.next_token_logits(PROMPTS, interventions=act))


# ---------------------------------------------------------------------- errors
def test_feature_index_out_of_range(chat):
    with pytest.raises(RefusalScopeError, match="feature index 256 is out of range for an SAE with d_sae=256"):
        FeatureSteer(make_sae(), [3, 256], "set", 1.0)


def test_layer_the_sae_was_not_trained_on(chat):
    with pytest.raises(RefusalScopeError, match="the SAE was trained on layer 1 .*not layer 2") as err:
        FeatureSteer(make_sae(layer=1), [3], "set", 1.0, layer=2)
    assert "use an SAE trained on layer 2" in err.value.fix


def test_sae_for_another_width_of_model(chat):
    steering = FeatureSteer(make_sae(d_in=32), [3], "set", 1.0)
    with (
        pytest.raises(RefusalScopeError, match="SAE d_in=32 does not match the model's d_model=64"),
        steer(chat, steering),
    ):
        pass
    with pytest.raises(RefusalScopeError, match="d_in=32"):
        chat.generate(PROMPTS[:1], max_new_tokens=2, interventions=steering, progress=False)
    assert chat.hooks.active == 0


def test_unknown_position_keyword():
    with pytest.raises(RefusalScopeError, match="unknown position keyword 'middle'") as err:
        ActAdd(torch.ones(64), 1, positions="middle")
    assert "'all', 'prompt', 'generated'" in err.value.fix
    with pytest.raises(RefusalScopeError, match="not an integer"):
        ActAdd(torch.ones(64), 1, positions=[1.5])


def test_other_bad_arguments(chat):
    sae = make_sae()
    with pytest.raises(RefusalScopeError, match="unknown feature mode 'clamp'"):
        FeatureSteer(sae, [1], "clamp", 1.0)
    with pytest.raises(RefusalScopeError, match="2 values for 3 features"):
        FeatureSteer(sae, [1, 2, 3], "set", [1.0, 2.0])
    with pytest.raises(RefusalScopeError, match="layer 9 is out of range"), steer(chat, ActAdd(torch.ones(64), 9)):
        pass
    with (
        pytest.raises(RefusalScopeError, match="has 10 entries but tiny-llama has d_model=64"),
        steer(chat, DirectionAblation(torch.ones(10))),
    ):
        pass
    with pytest.raises(RefusalScopeError, match="zero vector"):
        DirectionAblation(torch.zeros(64))
    no_layer = SAE.random(SAEConfig(d_in=64, d_sae=32, architecture="standard"))
    with pytest.raises(RefusalScopeError, match="does not record which layer"):
        FeatureSteer(no_layer, [1], "set", 1.0)
    assert FeatureSteer(no_layer, [1], "set", 1.0, layer=2).layer == 2


def test_describe_is_readable(chat):
    steering = Steering(
        [
            FeatureSteer(make_sae(), [3, 4], "scale", -3.0),
            DirectionAblation(torch.ones(64)),
            ActAdd(torch.ones(64), 2, 4.0),
        ]
    )
    text = steering.describe()
    assert "layer 1: SAE latents [3, 4] scaled by -3 at all tokens (jumprelu 64→256)" in text
    assert "ablate a direction" in text and "every layer" in text
    assert "layer 2: add 4 × direction" in text


def test_shared_prefix_prefill_gives_the_same_steered_replies(chat):
    """Position-wise interventions let ChatModel compute a prefix common to all prompts
    once; gates and end-relative positions switch that off. Either way, same replies."""
    sae = make_sae("jumprelu")
    gen = torch.Generator().manual_seed(5)
    safe = Steering(
        [
            FeatureSteer(sae, [1, 2], "set", 6.0, positions="prompt"),
            ActAdd(torch.randn(64, generator=gen) * 5, 2, 1.0, positions=[0, 3]),
        ]
    )
    unsafe = [
        ActAdd(torch.randn(64, generator=gen) * 5, 2, 1.0, positions=[-1]),
        Conditional(ActAdd(torch.randn(64, generator=gen) * 5, 2, 1.0), DirectionGate(torch.ones(64), 0), 0.0),
    ]
    assert safe.prefix_safe and not any(i.prefix_safe for i in unsafe)
    system = "You are a helpful assistant. Answer in one short sentence."
    tokens = chat.encode_prompts(PROMPTS, system)
    with steer(chat, safe):
        assert chat.shared_prefix(tokens) > 0
    with steer(chat, unsafe):
        assert chat.shared_prefix(tokens) == 0
    for steering in (safe, Steering(unsafe)):
        shared = chat.generate(PROMPTS, max_new_tokens=6, system=system, interventions=steering, progress=False)
        chat.share_prefix = False
        try:
            whole = chat.generate(PROMPTS, max_new_tokens=6, system=system, interventions=steering, progress=False)
        finally:
            chat.share_prefix = True
        assert shared.token_ids == whole.token_ids
