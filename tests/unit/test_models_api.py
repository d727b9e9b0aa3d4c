"""ChatModel's public operations for other packages: attaching interventions, fresh batch
ids, forwards that stop at a layer (`run_until` / `StopForward`), the final-norm gain of
the direct logit path, and the KV-cached continuation engine's helpers; on tiny models."""

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.models import ModelInfo, StopForward
from refusalscope.models.continuation import prefill_groups, select_cache
from refusalscope.models.hooks import deepest_point
from refusalscope.steering import ActAdd
from refusalscope.testing import tiny_chat_model

PROMPTS = ["Hello there", "Write a poem about the sea and the sky, please", "How do I bake bread?"]


def push(chat, layer=1, scale=8.0):
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(5))
    return ActAdd(direction / direction.norm(), layer, scale)


def full_hidden(chat, batch):
    """Reference: hidden states of a complete forward (hidden_states[l + 1] is after block l),
    from an identical copy of `chat`: `output_hidden_states` leaves transformers' own capture
    hooks on the blocks, which the session fixture must not keep."""
    twin = tiny_chat_model("llama")
    torch.testing.assert_close(twin.embed.weight, chat.embed.weight)
    return twin.forward(batch, output_hidden_states=True).hidden_states


# ------------------------------------------------------------------ run_until
def test_run_until_returns_the_full_forward_hidden_states_and_skips_deeper_blocks(tiny_llama):
    chat = tiny_llama
    batch = next(chat.batches(chat.encode_prompts(PROMPTS), 3))
    ran = []
    handle = chat.layers[3].register_forward_hook(lambda *a: ran.append(3))
    try:
        got = chat.run_until(batch, [2, 0, "embed", 0])
    finally:
        handle.remove()
    assert ran == []  # block 3 never ran
    assert sorted(got, key=str) == [0, 2, "embed"]
    ref = full_hidden(chat, batch)
    torch.testing.assert_close(got[0], ref[1])
    torch.testing.assert_close(got[2], ref[3])
    torch.testing.assert_close(got["embed"], ref[0])
    assert chat.hooks.active == 0  # its capture hooks are gone once it returns


def test_run_until_sees_attached_interventions_and_keeps_the_graph(tiny_llama):
    chat = tiny_llama
    batch = next(chat.batches(chat.encode_prompts(PROMPTS), 3))
    plain = chat.run_until(batch, [2])[2]
    with chat.attached(push(chat)):
        steered = chat.run_until(batch, [2])[2]
    assert (steered - plain).abs().max() > 1e-3
    leaf = {}

    def make_leaf(hidden, ctx):
        leaf["x"] = hidden.detach().requires_grad_(True)
        return leaf["x"]

    with torch.enable_grad(), chat.hooks.attached([(0, make_leaf)]):
        out = chat.run_until(batch, [2])[2]
        out.sum().backward()
    assert leaf["x"].grad is not None and leaf["x"].grad.abs().sum() > 0


def test_run_until_rejects_no_points_and_unknown_points(tiny_llama):
    batch = next(tiny_llama.batches(tiny_llama.encode_prompts(PROMPTS[:1]), 1))
    with pytest.raises(RefusalScopeError, match="no hook points"):
        tiny_llama.run_until(batch, [])
    with pytest.raises(RefusalScopeError, match="out of range"):
        tiny_llama.run_until(batch, [7])
    assert tiny_llama.hooks.active == 0


def test_a_hook_may_stop_a_forward_itself(tiny_llama):
    chat = tiny_llama
    batch = next(chat.batches(chat.encode_prompts(PROMPTS), 3))
    seen = []

    def stop(hidden, ctx):
        seen.append(hidden.shape)
        raise StopForward

    with chat.hooks.attached([(1, stop)]):
        with pytest.raises(StopForward):
            chat.forward(batch)
    assert len(seen) == 1 and chat.hooks.active == 0


def test_deepest_point_orders_embed_before_every_layer():
    assert deepest_point(["embed", 3, 1]) == 3
    assert deepest_point(["embed"]) == "embed"
    assert deepest_point([0]) == 0


# ------------------------------------------------------------------ attached / batch ids
def test_attached_interventions_change_replies_and_are_removed_afterwards(tiny_llama):
    chat = tiny_llama
    before = chat.next_token_logits(PROMPTS)
    with chat.attached([push(chat, scale=30.0)]):
        assert chat.hooks.active == 1
        during = chat.next_token_logits(PROMPTS)
    assert chat.hooks.active == 0
    assert (during - before).abs().max() > 1e-2
    torch.testing.assert_close(chat.next_token_logits(PROMPTS), before)
    with chat.attached(None):
        assert chat.hooks.active == 0


def test_attached_records_whether_every_item_is_prefix_safe(tiny_llama):
    chat = tiny_llama
    tokens = [[1] * 10 + [5, 6], [1] * 10 + [7]]
    assert chat.shared_prefix(tokens) == 10

    class Opaque:  # declares nothing: may depend on absolute positions
        def hooks(self, model):
            return [(1, lambda hidden, ctx: None)]

    with chat.attached(push(chat)):
        assert chat.shared_prefix(tokens) == 10
        with chat.attached(Opaque()):
            assert chat.shared_prefix(tokens) == 0
        assert chat.shared_prefix(tokens) == 10
    with chat.hooks.attached([(1, lambda hidden, ctx: None)]):  # a bare hook turns sharing off too
        assert chat.shared_prefix(tokens) == 0


def test_attached_removes_hooks_when_the_body_raises(tiny_llama):
    with pytest.raises(KeyError):
        with tiny_llama.attached(push(tiny_llama)):
            raise KeyError("boom")
    assert tiny_llama.hooks.active == 0


def test_new_batch_ids_are_fresh_and_forwards_take_one(tiny_llama):
    chat = tiny_llama
    a, b = chat.new_batch_id(), chat.new_batch_id()
    assert b > a
    seen = []
    with chat.hooks.attached([(0, lambda hidden, ctx: seen.append(ctx.batch_id))]):
        chat.forward(next(chat.batches(chat.encode_prompts(PROMPTS[:1]), 1)))
    assert seen[0] > b and chat.new_batch_id() > seen[0]


# ------------------------------------------------------------------ final-norm gain
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_final_norm_gain_is_the_weight_and_one_plus_it_for_gemma(family):
    chat = tiny_chat_model(family)
    with torch.no_grad():
        chat.final_norm.weight.copy_(torch.linspace(-0.5, 0.5, chat.d_model))
    gain = chat.final_norm_gain()
    expected = chat.final_norm.weight.float() + (1 if family == "gemma2" else 0)
    torch.testing.assert_close(gain, expected)
    assert gain.dtype == torch.float32 and not gain.requires_grad
    # the gain is what the final norm multiplies a unit-RMS vector by
    x = torch.randn(1, 1, chat.d_model)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(chat.final_norm(x)[0, 0], x[0, 0] * gain, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ continuation helpers
def test_prefill_groups_respect_batch_size_token_budget_and_fill():
    lengths = [10, 50, 12, 48, 11, 49, 9, 100]
    groups = prefill_groups(lengths, batch_size=3, max_tokens=160)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest = lengths[g[0]]
        assert len(g) <= 3 and len(g) * longest <= 160 or len(g) == 1
        assert all(lengths[i] <= longest and lengths[i] >= 0.8 * longest for i in g)
    assert groups[0] == [7]  # 100 tokens: nothing within 80% of it
    with pytest.raises(RefusalScopeError, match="batch_size"):
        prefill_groups(lengths, batch_size=0, max_tokens=100)


def test_select_cache_copies_rows_and_leaves_the_original(tiny_llama):
    from transformers import DynamicCache

    chat = tiny_llama
    batch = next(chat.batches(chat.encode_prompts(PROMPTS), 3))
    cache = DynamicCache(config=chat.model.config)
    with torch.no_grad():
        chat.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            past_key_values=cache,
            use_cache=True,
        )
    keys = [layer.keys.clone() for layer in cache.layers]
    sub = select_cache(cache, torch.tensor([2, 0, 2]))
    for layer, original, before in zip(sub.layers, cache.layers, keys):
        torch.testing.assert_close(original.keys, before)
        torch.testing.assert_close(layer.keys, before[[2, 0, 2]])


def test_model_info_lives_in_its_own_module():
    import refusalscope.models.info as info_module
    import refusalscope.models.loading as loading

    assert ModelInfo is info_module.ModelInfo
    assert not hasattr(loading, "ModelInfo")
    info = ModelInfo("default", "m", "local", "/x", "llama", 2, 8, "float32", sha256="ab" * 32)
    assert info.id == "m@" + "ab" * 6 and info.to_dict()["d_model"] == 8
