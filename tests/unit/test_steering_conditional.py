"""Conditional steering: gates decided on the prompt, remembered across decode steps."""

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import (
    ActAdd,
    Conditional,
    DirectionAblation,
    DirectionGate,
    FeatureGate,
    FeatureSteer,
    ProbeGate,
    steer,
)
from refusalscope.testing import MIXED_LENGTH_PROMPTS

PROMPTS = MIXED_LENGTH_PROMPTS


@pytest.fixture(scope="module")
def push(chat):
    return ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0)) * 30, 2, 1.0)


def median_threshold(gate_obj, chat):
    scores = gate_obj.decisions(chat, PROMPTS).scores
    return float(scores.median())


def test_gated_prompts_get_the_steered_reply_and_the_others_the_plain_one(chat, push):
    gate = DirectionGate(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)), 1)
    cond = Conditional(push, gate, 0.0)
    cond.threshold = median_threshold(cond, chat)
    decided = cond.decisions(chat, PROMPTS)
    assert 0 < int(decided.fired.sum()) < len(PROMPTS)
    plain = chat.generate(PROMPTS, max_new_tokens=8, progress=False).token_ids
    always = chat.generate(PROMPTS, max_new_tokens=8, interventions=push, progress=False).token_ids
    gated = chat.generate(PROMPTS, max_new_tokens=8, batch_size=4, interventions=cond, progress=False).token_ids
    for i, fired in enumerate(decided.fired.tolist()):
        assert gated[i] == (always[i] if fired else plain[i])
        assert always[i] != plain[i]
    assert cond.seen == len(PROMPTS) and cond.fired == int(decided.fired.sum())
    assert cond.fire_rate == pytest.approx(decided.fire_rate)
    cond.reset_stats()
    assert cond.seen == 0


def test_the_decision_survives_rows_leaving_the_batch(chat, push):
    """Rows drop out of a generation batch at EOS; a gated row must stay gated."""
    gate = DirectionGate(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)), 1)
    cond = Conditional(ActAdd(push.direction, 2, 1.0, positions="generated"), gate, 0.0)
    cond.threshold = median_threshold(cond, chat)
    eos = chat.tokenizer.eos_token_id
    state = {"force": False, "decode": 0}

    def steer_eos(module, args, output):  # no natural stops; when forced, batch row 0 stops early
        ctx = chat.hooks.context
        output[..., eos] = -1e4
        if ctx.phase == "decode":
            state["decode"] += 1
            if state["force"] and state["decode"] == 2:
                output[ctx.rows == 0, -1, eos] = 1e4
        return output

    handle = chat.unembed.register_forward_hook(steer_eos)
    try:
        one_by_one = [
            chat.generate([p], max_new_tokens=6, interventions=cond, progress=False).token_ids[0] for p in PROMPTS
        ]
        state.update(force=True, decode=0)
        batch = chat.generate(PROMPTS, max_new_tokens=6, batch_size=6, interventions=cond, progress=False)
    finally:
        handle.remove()
    assert batch.finish_reasons.count("eos") == 1
    for ids, ref, reason in zip(batch.token_ids, one_by_one, batch.finish_reasons):
        assert ids == (ref[: len(ids)] if reason == "eos" else ref)
    assert 0 < cond.fired < cond.seen


def test_feature_gate_reads_the_latent_activation(chat, push):
    sae = SAE.random(SAEConfig(d_in=64, d_sae=128, architecture="standard", layer=1), seed=3)
    gate = FeatureGate(sae, 5)
    cond = Conditional(push, gate, 0.0, reduce="max")
    got = cond.decisions(chat, PROMPTS)
    resid = chat.residual(PROMPTS, [1], positions="all", progress=False)[1]
    expected = torch.stack([sae.encode(x[1:])[:, 5].max() for x in resid])  # position 0 (BOS) skipped
    torch.testing.assert_close(got.scores, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.fired, expected > 0.0)


@pytest.mark.parametrize("reduce", ["max", "mean", "last"])
def test_direction_gate_reductions(chat, push, reduce):
    d = torch.randn(chat.d_model)
    cond = Conditional(push, DirectionGate(d, 0), 0.5, reduce=reduce, skip_first=False)
    got = cond.decisions(chat, PROMPTS)
    resid = chat.residual(PROMPTS, [0], positions="all", progress=False)[0]
    proj = [x @ (d / d.norm()) for x in resid]
    expected = torch.stack([{"max": p.max(), "mean": p.mean(), "last": p[-1]}[reduce] for p in proj])
    torch.testing.assert_close(got.scores, expected, atol=1e-5, rtol=1e-5)


def test_gate_positions_post_instruction(chat, push):
    d = torch.randn(chat.d_model)
    cond = Conditional(push, DirectionGate(d, 0), 0.0, reduce="mean", positions="post_instruction")
    got = cond.decisions(chat, PROMPTS)
    n = len(chat.eoi_ids)
    resid = chat.residual(PROMPTS, [0], positions="post_instruction", progress=False)[0]
    torch.testing.assert_close(got.scores, (resid @ (d / d.norm())).mean(-1), atol=1e-5, rtol=1e-5)
    assert n > 1


def test_probe_gate_from_sklearn_and_over_sae_latents(chat, push):
    from sklearn.linear_model import LogisticRegression

    resid = chat.residual(PROMPTS, [1], positions="last", progress=False)[1]
    labels = [0, 1, 0, 1, 0, 1]
    clf = LogisticRegression(max_iter=500).fit(resid.numpy(), labels)
    cond = Conditional(push, ProbeGate.from_sklearn(clf, 1), 0.0, positions=[-1])
    got = cond.decisions(chat, PROMPTS)
    torch.testing.assert_close(
        got.scores, torch.tensor(clf.decision_function(resid.numpy()), dtype=torch.float32), atol=1e-4, rtol=1e-4
    )
    assert got.fired.tolist() == (clf.predict(resid.numpy()) == 1).tolist()

    sae = SAE.random(SAEConfig(d_in=64, d_sae=128, architecture="standard", layer=1), seed=3)
    w = torch.tensor([1.0, -2.0, 0.5])
    sparse = Conditional(push, ProbeGate(w, -0.1, sae=sae, features=[3, 8, 40]), 0.0, positions=[-1])
    expected = sae.encode(resid)[:, [3, 8, 40]] @ w - 0.1
    torch.testing.assert_close(sparse.decisions(chat, PROMPTS).scores, expected, atol=1e-5, rtol=1e-5)


def test_gate_must_read_at_or_before_the_steered_layer(chat, push):
    late = Conditional(ActAdd(push.direction, 1, 1.0), DirectionGate(torch.ones(64), 2), 0.0)
    with (
        pytest.raises(
            RefusalScopeError, match="the gate reads layer 2 but an intervention it controls already changes layer 1"
        ),
        steer(chat, late),
    ):
        pass
    ablate_all = Conditional(DirectionAblation(torch.ones(64)), DirectionGate(torch.ones(64), 0), 0.0)
    with pytest.raises(RefusalScopeError, match="changes embedding"):
        chat.generate(PROMPTS[:1], max_new_tokens=2, interventions=ablate_all, progress=False)
    # steering only generated tokens may sit before the gate: the decision precedes decoding
    ok = Conditional(ActAdd(push.direction, 0, 1.0, positions="generated"), DirectionGate(torch.ones(64), 3), -1e9)
    chat.generate(PROMPTS[:2], max_new_tokens=3, interventions=ok, progress=False)
    assert ok.fired == 2


def test_same_layer_gate_sees_the_unsteered_residual(chat):
    d = torch.randn(chat.d_model)
    big = ActAdd(d, 1, 1000.0)
    cond = Conditional(big, DirectionGate(d, 1), 0.0)
    plain_scores = cond.decisions(chat, PROMPTS).scores
    cond.threshold = float(plain_scores.median())
    chat.next_token_logits(PROMPTS, interventions=cond)
    assert cond.fired == int((plain_scores > cond.threshold).sum())


def test_bad_gate_arguments(push):
    with pytest.raises(RefusalScopeError, match="unknown gate reduction 'median'"):
        Conditional(push, DirectionGate(torch.ones(64), 0), 0.0, reduce="median")
    with pytest.raises(RefusalScopeError, match="a gate reads prompt tokens only"):
        Conditional(push, DirectionGate(torch.ones(64), 0), 0.0, positions="generated")
    with pytest.raises(RefusalScopeError, match="3 weights for 2 latents"):
        sae = SAE.random(SAEConfig(d_in=64, d_sae=16, architecture="standard", layer=1))
        ProbeGate(torch.ones(3), 0.0, sae=sae, features=[1, 2])


def test_nested_conditionals_and_feature_steering_inside(chat):
    sae = SAE.random(SAEConfig(d_in=64, d_sae=128, architecture="jumprelu", layer=2), seed=4)
    inner = Conditional(FeatureSteer(sae, [1], "set", 50.0), DirectionGate(torch.ones(64), 1), -1e9)
    outer = Conditional(inner, DirectionGate(torch.ones(64), 0), 1e9)  # never fires
    assert torch.equal(chat.next_token_logits(PROMPTS, interventions=outer), chat.next_token_logits(PROMPTS))
    assert outer.fired == 0 and inner.fired == len(PROMPTS)
    assert "only when max over the prompt of projection on a direction at layer 0 > 1e+09" in outer.describe()
