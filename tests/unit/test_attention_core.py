"""The attention core's precision switch (models/attention.py): fp64 (default, bit-identical
logits whatever the batching) and fp32 (faster, equal within float32 rounding)."""

import pytest
import torch

from refusalscope.errors import RefusalScopeError
from refusalscope.models.attention import (
    ENV,
    attention_core,
    invariant_attention,
    set_attention_core,
)
from refusalscope.testing import MIXED_LENGTH_PROMPTS, tiny_chat_model

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_attention(query, key, value, mask, scale):
    """Grouped-query attention the textbook way: repeat each key/value head per query head."""
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).double()
    v = value.repeat_interleave(groups, dim=1).double()
    scores = query.double() @ k.transpose(2, 3) * scale + mask.double()
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)


@pytest.mark.parametrize("core", ["fp64", "fp32"])
def test_grouped_query_attention_matches_repeated_heads(core):
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, h, 5, 8, generator=g) for h in (6, 2, 2))
    mask = torch.zeros(2, 1, 5, 5)
    mask[0, :, :, :2] = torch.finfo(torch.float32).min  # left padding in row 0
    module = torch.nn.Module()
    module.config = type("Config", (), {"refusalscope_attention": core})()
    out, weights = invariant_attention(module, query, key, value, mask, scaling=8**-0.5)
    assert out.shape == (2, 5, 6, 8) and weights.shape == (2, 6, 5, 5)
    expected = reference_attention(query, key, value, mask, 8**-0.5)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert float(weights[0, :, :, :2].abs().max()) == 0.0  # padded keys get no weight


def test_fp32_core_is_close_to_fp64_and_fp64_is_batch_invariant(monkeypatch):
    chat = tiny_chat_model("qwen2", seed=1)
    prompts = MIXED_LENGTH_PROMPTS
    assert attention_core(chat.model.config) == "fp64"  # default: environment unset, config unset
    one = chat.next_token_logits(prompts, batch_size=1)
    six = chat.next_token_logits(prompts, batch_size=6)
    assert torch.equal(one, six)
    assert set_attention_core(chat.model, "fp32") == "fp32"
    fp32 = chat.next_token_logits(prompts, batch_size=6)
    assert not torch.equal(fp32, six)  # the switch really changes the computation
    assert torch.allclose(fp32, six, atol=1e-4)
    set_attention_core(chat.model, None)  # back to following the environment
    monkeypatch.setenv(ENV, "fp32")
    assert torch.equal(chat.next_token_logits(prompts, batch_size=6), fp32)
    monkeypatch.setenv(ENV, "fp16")
    with pytest.raises(RefusalScopeError, match="unknown .*REFUSALSCOPE_ATTENTION core 'fp16'"):
        chat.next_token_logits(prompts[:1])


def test_unknown_core_is_one_clear_error():
    chat = tiny_chat_model("llama")
    with pytest.raises(RefusalScopeError, match="use one of fp64, fp32"):
        set_attention_core(chat.model, "float64")
