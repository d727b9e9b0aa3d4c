"""LayerMemo (ChatModel.share_lower_layers): configurations that steer only above a layer
share the layers below it, with results bit-identical to running every layer."""

import pytest
import torch

from refusalscope.errors import RefusalScopeError
from refusalscope.models.continuation import continuation_logprobs
from refusalscope.steering import ActAdd, Conditional, DirectionGate
from refusalscope.testing import MIXED_LENGTH_PROMPTS

TINY_CHAT = dict(family="qwen2", seed=5, n_layers=6)
pytestmark = pytest.mark.usefixtures("one_thread")


def configurations(chat):
    """The unsteered model and three steered ones whose first hook point is layer 3."""
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(chat.d_model, generator=g) * 4
    gate = DirectionGate(torch.randn(chat.d_model, generator=g), 3)
    return [
        None,
        ActAdd(vec, 3, 1.0),
        ActAdd(vec, 4, -2.0),
        Conditional([ActAdd(vec, 3, 2.0)], gate, threshold=0.0),
    ]


def run_all(chat, prompts):
    out = []
    for cfg in configurations(chat):
        logits = chat.next_token_logits(prompts, batch_size=3, interventions=cfg)
        gen = chat.generate(prompts, max_new_tokens=5, batch_size=3, interventions=cfg, progress=False)
        requests = [(chat.encode_prompts([p])[0], [[5, 6, 7], [9]]) for p in prompts]
        scores = continuation_logprobs(chat, requests, cfg, batch_size=3)
        out.append((logits, gen.token_ids, scores))
    return out


def test_sharing_is_bit_identical_and_skips_the_lower_layers(chat):
    prompts = MIXED_LENGTH_PROMPTS[:5]
    plain = run_all(chat, prompts)
    with chat.share_lower_layers(3) as memo:
        shared = run_all(chat, prompts)
    for (l0, g0, s0), (l1, g1, s1) in zip(plain, shared):
        assert torch.equal(l0, l1)
        assert g0 == g1
        assert s0 == s1
    stats = memo.stats
    assert stats.hits > 0 and stats.misses > 0
    assert stats.layers_skipped == 4 * stats.hits  # layers 0..3 of every reused forward
    assert not memo.entries  # cleared on exit
    # the steering did something, so the configurations' logits really differ
    assert not torch.equal(plain[0][0], plain[1][0])


def test_the_model_is_restored_after_the_block(chat):
    forwards = [layer.forward for layer in chat.layers]
    with chat.share_lower_layers(2):
        pass
    assert [layer.forward for layer in chat.layers] == forwards
    assert all("forward" not in vars(layer) for layer in chat.layers)


def test_a_hook_below_the_shared_layers_turns_sharing_off(chat):
    prompts = MIXED_LENGTH_PROMPTS[:4]
    vec = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)) * 4
    low = ActAdd(vec, 1, 1.0)
    expected = chat.next_token_logits(prompts, interventions=low)
    with chat.share_lower_layers(3) as memo:
        chat.next_token_logits(prompts)  # records the unsteered lower layers
        got = chat.next_token_logits(prompts, interventions=low)
    assert torch.equal(got, expected)
    assert memo.stats.bypassed > 0


def test_gradients_turn_sharing_off(chat):
    batch = chat.pad(chat.encode_prompts(MIXED_LENGTH_PROMPTS[:2]))
    with chat.share_lower_layers(3) as memo, torch.enable_grad():
        chat.forward(batch)
        chat.forward(batch)
    assert memo.stats.hits == 0 and memo.stats.bypassed == 2


def test_entries_are_bounded(chat):
    with chat.share_lower_layers(3, max_bytes=1) as memo:
        chat.next_token_logits(MIXED_LENGTH_PROMPTS[:3])
        assert not memo.entries


def test_bad_layer_is_one_clear_error(chat):
    with pytest.raises(RefusalScopeError, match="decoder layers"):
        chat.share_lower_layers(chat.n_layers)
