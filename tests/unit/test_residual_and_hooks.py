"""Residual capture and the hook mechanism on tiny random models."""

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.testing import tiny_chat_model

PROMPTS = ["Hello there", "Write a poem about the sea and the sky, please", "How do I bake bread?"]


def reference_hidden(chat, prompt):
    ids = torch.tensor([chat.encode(chat.format(prompt))])
    return chat.model(input_ids=ids, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "mistral", "phi3"])
def test_residual_matches_hidden_states_of_unpadded_runs(family):
    chat = tiny_chat_model(family)
    layers = ["embed", 0, 2]
    got = chat.residual(PROMPTS, layers, positions="all", batch_size=3, progress=False)
    for i, prompt in enumerate(PROMPTS):
        ref = reference_hidden(chat, prompt)
        # hidden_states[0] is the (possibly scaled) embedding output; [l + 1] is after block l
        expected = {"embed": ref[0], 0: ref[1], 2: ref[3]}
        for layer in layers:
            if family == "gemma2" and layer == "embed":
                continue  # Gemma scales embeddings by sqrt(d) inside the model, after embed_tokens
            torch.testing.assert_close(got[layer][i], expected[layer][0], rtol=1e-5, atol=1e-5)


def test_position_selections_have_documented_shapes(tiny_llama):
    chat = tiny_llama
    n_eoi = len(chat.eoi_ids)
    all_ = chat.residual(PROMPTS, [1], positions="all", progress=False)[1]
    last = chat.residual(PROMPTS, [1], positions="last", progress=False)[1]
    eoi = chat.residual(PROMPTS, [1], positions="post_instruction", progress=False)[1]
    offs = chat.residual(PROMPTS, [1], positions=[-2, -1], progress=False)[1]
    assert [t.shape[0] for t in all_] == [len(chat.encode(chat.format(p))) for p in PROMPTS]
    assert last.shape == (3, chat.d_model) and last.dtype == torch.float32
    assert eoi.shape == (3, n_eoi, chat.d_model)
    assert offs.shape == (3, 2, chat.d_model)
    for i in range(3):
        torch.testing.assert_close(last[i], all_[i][-1])
        torch.testing.assert_close(eoi[i], all_[i][-n_eoi:])
        torch.testing.assert_close(offs[i, 1], all_[i][-1])


def test_post_instruction_tokens_are_the_template_suffix(tiny_llama):
    suffix = tiny_llama.tokenizer.decode(tiny_llama.eoi_ids)
    assert suffix == "<|im_end|>\n<|im_start|>assistant\n"


def test_capture_stops_after_the_deepest_layer(tiny_llama):
    calls = []
    handle = tiny_llama.layers[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny_llama.residual(PROMPTS, [1], progress=False)
        assert calls == []
        tiny_llama.residual(PROMPTS, [3], progress=False)
        assert len(calls) == 1
    finally:
        handle.remove()


def test_residual_streams_in_batches(tiny_llama):
    seen = [idx for idx, _ in tiny_llama.iter_residual(PROMPTS * 4, [0], batch_size=5, progress=False)]
    assert [len(i) for i in seen] == [5, 5, 2]
    assert sorted(sum(seen, [])) == list(range(12))


def test_hooks_change_the_output_and_are_removed(tiny_llama):
    chat = tiny_llama
    base = chat.next_token_logits(PROMPTS)
    shift = torch.randn(chat.d_model) * 5

    def add(hidden, ctx):
        return hidden + shift

    with chat.hooks.attached([(1, add)]):
        assert chat.hooks.active == 1
        steered = chat.next_token_logits(PROMPTS)
    assert chat.hooks.active == 0
    assert not torch.allclose(base, steered)
    torch.testing.assert_close(chat.next_token_logits(PROMPTS), base)


def test_hooks_are_removed_when_the_body_raises(tiny_llama):
    chat = tiny_llama
    with pytest.raises(ZeroDivisionError):
        with chat.hooks.attached([(0, lambda h, c: h * 2), ("embed", lambda h, c: None)]):
            raise ZeroDivisionError("in the body")
    assert chat.hooks.active == 0
    assert all(not layer._forward_hooks for layer in chat.layers)
    assert not chat.embed._forward_hooks


def test_hooks_are_removed_when_generation_raises(tiny_llama):
    chat = tiny_llama

    class Boom:
        def hooks(self, model):
            def fn(hidden, ctx):
                if ctx.phase == "decode":
                    raise RuntimeError("boom")

            return [(2, fn)]

    with pytest.raises(RuntimeError, match="boom"):
        chat.generate(PROMPTS, max_new_tokens=4, interventions=Boom(), progress=False)
    assert chat.hooks.active == 0 and not chat.layers[2]._forward_hooks


def test_forward_context_marks_prompt_and_generated_tokens(tiny_llama):
    chat = tiny_llama
    seen = []

    class Recorder:
        def hooks(self, model):
            def fn(hidden, ctx):
                seen.append((ctx.phase, ctx.is_prompt().clone(), ctx.is_generated().clone(), ctx.token_index().clone()))

            return [(0, fn)]

    chat.generate(PROMPTS, max_new_tokens=3, batch_size=3, interventions=Recorder(), progress=False)
    lengths = sorted((len(chat.encode(chat.format(p))) for p in PROMPTS), reverse=True)
    phase, prompt, generated, index = seen[0]
    assert phase == "prefill"
    assert prompt.sum(-1).tolist() == lengths and not generated.any()
    assert index[:, -1].tolist() == [n - 1 for n in lengths]
    for phase, prompt, generated, _index in seen[1:]:
        assert phase == "decode" and generated.all() and not prompt.any()
    assert seen[-1][3][:, 0].tolist() == [n + 1 for n in lengths]


def test_bad_layers_and_positions_give_clear_errors(tiny_llama):
    with pytest.raises(RefusalScopeError, match="layer 7 is out of range: this model has 4"):
        tiny_llama.residual(PROMPTS, [7], progress=False)
    with pytest.raises(RefusalScopeError, match="unknown positions 'middle'"):
        tiny_llama.residual(PROMPTS, [1], positions="middle", progress=False)
    with pytest.raises(RefusalScopeError, match="no prompts"):
        tiny_llama.residual([], [1], progress=False)
    with pytest.raises(RefusalScopeError, match="negative offsets"):
        tiny_llama.residual(PROMPTS, [1], positions=[0], progress=False)
