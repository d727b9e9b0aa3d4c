"""ChatModel.generate_each: replies under several configurations decoded in one batch equal
one `generate` call per configuration."""

import pytest
import torch

from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering
from refusalscope.testing import MIXED_LENGTH_PROMPTS

TINY_CHAT = dict(family="qwen2", seed=11)
pytestmark = pytest.mark.usefixtures("one_thread")


def configurations(chat):
    g = torch.Generator().manual_seed(3)
    vec = torch.randn(chat.d_model, generator=g) * 6
    gate = DirectionGate(torch.randn(chat.d_model, generator=g), 1)
    return [
        None,
        ActAdd(vec, 2, 1.0),
        Steering([ActAdd(vec, 1, -1.0), ActAdd(vec, 3, 0.5)]),
        Conditional([ActAdd(vec, 2, 2.0)], gate, threshold=0.0),
    ]


@pytest.mark.parametrize("batch_size", [3, 64])
def test_replies_equal_one_generate_per_configuration(chat, batch_size):
    prompts = MIXED_LENGTH_PROMPTS[:4]
    configs = configurations(chat)
    each = chat.generate_each(prompts, configs, max_new_tokens=6, batch_size=batch_size)
    assert len(each) == len(configs)
    for cfg, got in zip(configs, each):
        one = chat.generate(prompts, max_new_tokens=6, batch_size=4, interventions=cfg, progress=False)
        assert got.token_ids == one.token_ids
        assert got.texts == one.texts and got.finish_reasons == one.finish_reasons
    assert len({tuple(map(tuple, g.token_ids)) for g in each}) > 1  # the steering changes the replies
    assert chat.hooks.active == 0


def test_any_hook_sees_only_its_own_rows_and_the_lower_layers_can_be_shared(chat):
    prompts = MIXED_LENGTH_PROMPTS
    seen = []

    class Push:  # a bare HasHooks: no row filter, no prefix safety
        def hooks(self, model):
            def fn(hidden, ctx):
                seen.append((ctx.phase, int(hidden.shape[0])))
                return hidden + 3.0

            return [(2, fn)]

    configs = [None, Push(), ActAdd(torch.ones(chat.d_model), 2, 2.0)]
    with chat.share_lower_layers(2) as memo:
        each = chat.generate_each(prompts, configs, max_new_tokens=5, batch_size=6)  # 2 prompts per batch
    assert memo.stats.hits > 0
    for cfg, got in zip(configs, each):
        seen_before = len(seen)
        one = chat.generate(prompts, max_new_tokens=5, batch_size=6, interventions=cfg, progress=False)
        assert got.token_ids == one.token_ids
        del seen[seen_before:]
    assert max(rows for _, rows in seen) <= 2  # Push never saw another configuration's rows
    assert {phase for phase, _ in seen} == {"prefill", "decode"}
