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
