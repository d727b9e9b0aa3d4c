"""ChatModel.prefill_cache: the one public way to prefill a prefix's KV cache (used by
generation's shared prefix and by direction selection)."""

import pytest
import torch

from refusalscope.errors import RefusalScopeError
from refusalscope.testing import MIXED_LENGTH_PROMPTS

TINY_CHAT = dict(family="qwen2", seed=7)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_prefix_cache_then_suffix_equals_one_full_forward(chat):
    ids = chat.encode_prompts(MIXED_LENGTH_PROMPTS[1:2])[0]
    cut = len(ids) // 2
    cache = chat.prefill_cache([ids[:cut], ids[:cut]])
    assert cache.get_seq_length() == cut
    suffix = torch.tensor([ids[cut:]] * 2)
    positions = torch.arange(cut, len(ids))[None].repeat(2, 1)
    out = chat.model(
        input_ids=suffix,
        attention_mask=torch.ones(2, len(ids), dtype=torch.long),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    ).logits[:, -1]
    full = chat.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    assert torch.equal(out[0], full) and torch.equal(out[1], full)


def test_shared_prefix_generation_still_matches_no_sharing(chat):
    prompts, system = MIXED_LENGTH_PROMPTS, "You are a careful and helpful assistant."
    assert chat.shared_prefix(chat.encode_prompts(prompts, system)) > 8  # the system prompt and template
    shared = chat.next_token_logits(prompts, batch_size=3, system=system)
    chat.share_prefix = False
    try:
        plain = chat.next_token_logits(prompts, batch_size=3, system=system)
    finally:
        chat.share_prefix = True
    assert torch.equal(shared, plain)


def test_bad_shapes_are_one_clear_error(chat):
    with pytest.raises(RefusalScopeError, match="rows, length"):
        chat.prefill_cache([[]])
    with pytest.raises(RefusalScopeError, match="rows, length"):
        chat.prefill_cache(torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("positions", ["last", "post_instruction", [-1, -4], [-30]])
def test_residual_reads_after_a_shared_prefix_equal_full_forwards(chat, positions):
    from refusalscope.steering import ActAdd

    prompts, system = MIXED_LENGTH_PROMPTS, "You are a careful and helpful assistant."
    steer = ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0)), 1, 2.0)
    calls = []
    original = type(chat)._run_until_after_prefix

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    type(chat)._run_until_after_prefix = spy
    try:
        shared = chat.residual(
            prompts, [1, 3], positions, batch_size=4, system=system, interventions=steer, progress=False
        )
    finally:
        type(chat)._run_until_after_prefix = original
    chat.share_prefix = False
    try:
        plain = chat.residual(
            prompts, [1, 3], positions, batch_size=4, system=system, interventions=steer, progress=False
        )
    finally:
        chat.share_prefix = True
    for layer in (1, 3):
        assert torch.equal(shared[layer], plain[layer])
    if positions == [-30]:
        assert len(calls) < 2  # it reaches into the prefix of the shorter prompts: their batch runs whole
    else:
        assert len(calls) == 2  # both batches used the shared prefix
