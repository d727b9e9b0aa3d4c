"""Generation on tiny random models: batching, KV cache, stopping, sampling."""

import pytest
import torch

from refusalscope.testing import MIXED_LENGTH_PROMPTS, tiny_chat_model

PROMPTS = MIXED_LENGTH_PROMPTS


def naive_greedy(chat, prompt, n):
    """Reference: recompute the whole sequence at every step, no cache, no padding."""
    ids = chat.encode(chat.format(prompt))
    out = []
    for _ in range(n):
        logits = chat.model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.float().argmax()))
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_is_identical_whatever_the_batch_size(family):
    chat = tiny_chat_model(family)
    runs = [chat.generate(PROMPTS, max_new_tokens=12, batch_size=b, progress=False).token_ids for b in (1, 2, 4, 6)]
    assert all(r == runs[0] for r in runs[1:])
    assert max(len(ids) for ids in runs[0]) == 12


def test_bf16_greedy_is_identical_whatever_the_batch_size():
    chat = tiny_chat_model("qwen2", dtype=torch.bfloat16)
    one = chat.generate(PROMPTS, max_new_tokens=10, batch_size=1, progress=False).token_ids
    six = chat.generate(PROMPTS, max_new_tokens=10, batch_size=6, progress=False).token_ids
    assert one == six


def test_kv_cached_generation_matches_full_recompute(tiny_llama):
    gen = tiny_llama.generate(PROMPTS[:3], max_new_tokens=8, batch_size=3, progress=False)
    for prompt, ids in zip(PROMPTS[:3], gen.token_ids):
        assert ids == naive_greedy(tiny_llama, prompt, 8)


def test_rows_stop_at_eos_and_others_continue(tiny_llama):
    chat = tiny_llama
    eos = chat.tokenizer.eos_token_id
    prompt_lengths = [len(chat.encode(chat.format(p))) for p in PROMPTS]
    state = {"force": False}

    def steer_eos(module, args, output):
        ctx = chat.hooks.context
        output[:, -1, eos] = -1e4  # no natural stops: the random model may emit EOS anywhere
        if state["force"] and ctx.phase == "decode" and ctx.past_length == max(prompt_lengths) + 1:
            # third reply token (prefill gives the first): odd-length prompts emit EOS
            odd = (ctx.prompt_lengths % 2 == 1).nonzero().squeeze(-1)
            output[odd, -1, eos] = 1e4
        return output

    handle = chat.unembed.register_forward_hook(steer_eos)
    try:
        free = chat.generate(PROMPTS, max_new_tokens=6, batch_size=6, progress=False)
        state["force"] = True
        gen = chat.generate(PROMPTS, max_new_tokens=6, batch_size=6, progress=False)
    finally:
        handle.remove()
    assert any(n % 2 for n in prompt_lengths) and any(n % 2 == 0 for n in prompt_lengths)
    for n, ids, reason, ref in zip(prompt_lengths, gen.token_ids, gen.finish_reasons, free.token_ids):
        assert len(ref) == 6
        if n % 2:
            assert reason == "eos" and ids == ref[:2]
        else:
            assert reason == "length" and ids == ref
    assert eos not in sum(gen.token_ids, [])


def test_sampling_is_seeded_and_batch_invariant(tiny_qwen):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, progress=False)
    a = tiny_qwen.generate(PROMPTS, batch_size=2, seed=3, **kw).token_ids
    b = tiny_qwen.generate(PROMPTS, batch_size=6, seed=3, **kw).token_ids
    c = tiny_qwen.generate(PROMPTS, batch_size=6, seed=4, **kw).token_ids
    greedy = tiny_qwen.generate(PROMPTS, batch_size=6, max_new_tokens=10, progress=False).token_ids
    assert a == b
    assert a != c
    assert a != greedy


def test_texts_decode_token_ids_and_keep_prompt_order(tiny_llama):
    gen = tiny_llama.generate(PROMPTS, max_new_tokens=5, batch_size=4, progress=False)
    single = tiny_llama.generate(PROMPTS[4], max_new_tokens=5, progress=False)
    assert gen.texts[4] == single.texts[0]
    assert gen.texts[1] == tiny_llama.tokenizer.decode(gen.token_ids[1], skip_special_tokens=True)
    assert gen.prompts == PROMPTS and len(gen) == len(PROMPTS)
