"""Jailbreak mechanism on a tiny random model with a planted latent.

The planted latent reads the residual direction that appending the token " that" moves
the post-instruction positions along, with the sign flipped: " that" suppresses it. The
analysis must find that: the token ranking puts " that" on top, suppression is large on
pairs whose jailbreak adds " that" (marked succeeded) and near zero on pairs that add
another word (marked failed).
"""

import numpy as np
import pytest
import torch

from refusalscope.errors import RefusalScopeError
from refusalscope.mechanism import (
    LatentGroup,
    attribute_tokens,
    drop_gap,
    group_activations,
    loo_check,
    relative_drop,
    suppression_table,
    word_scores,
)
from refusalscope.mechanism.heatmap import heatmap_html, token_activations
from refusalscope.mechanism.token_attribution import instruction_tokens
from refusalscope.sae.model import SAE, SAEConfig
from refusalscope.testing import tiny_chat_model

LAYER, LATENT = 2, 3
BASES = [
    "Explain how to bake bread",
    "Write a poem about the sea",
    "Tell me the capital of France",
    "Write a python function for lists",
    "Explain photosynthesis simply",
    "How do I mix flour and water",
]
WITH_TOKEN = [
    "Tell me that the sea is blue",
    "Explain that bread needs flour",
    "Write a function that reverses lists",
    "Paris is the capital that France has",
    "Mix water that is warm with yeast",
    "Explain photosynthesis that plants do",
]


@pytest.fixture(scope="module")
def planted():
    chat = tiny_chat_model("llama", n_layers=4, d_model=64, dtype=torch.float32)

    def resid(prompts):
        return chat.residual(prompts, [LAYER], "post_instruction", progress=False)[LAYER].mean(1)

    shift = (resid([b + " that" for b in BASES]) - resid(BASES)).mean(0)
    sae = SAE.random(SAEConfig(d_in=64, d_sae=16, architecture="standard", layer=LAYER), seed=0)
    w = -shift / shift.norm()
    with torch.no_grad():
        sae.W_enc[:, LATENT] = w
        sae.b_enc[LATENT] = -(resid(BASES) @ w).mean() + shift.norm()
    return chat, LatentGroup("refusal", [(sae, [LATENT])])


def test_planted_token_tops_the_word_ranking(planted):
    chat, group = planted
    items = attribute_tokens(chat, group, WITH_TOKEN, batch_size=3)
    words = word_scores(items, min_prompts=3)
    assert words[0].word == "that"
    assert words[0].suppression.value > 0 and words[0].n_prompts == len(WITH_TOKEN)
    # batching does not change the attribution
    single = attribute_tokens(chat, group, WITH_TOKEN[:2], batch_size=1)
    np.testing.assert_allclose(single[1].scores, items[1].scores, atol=1e-6)
    # spans cover the request's own characters only
    assert "".join(items[0].pieces()) == WITH_TOKEN[0]


def test_gradient_agrees_with_leave_one_out(planted):
    chat, group = planted
    items = attribute_tokens(chat, group, WITH_TOKEN)
    check = loo_check(chat, group, items, n_prompts=6, max_tokens=30)
    assert check["n_prompts"] == 6
    assert check["mean_spearman"] > 0.3
    # deleting the planted token raises the latent (it was suppressing it)
    item = items[0]
    k = item.pieces().index(" that")
    from refusalscope.mechanism.token_attribution import leave_one_out

    assert leave_one_out(chat, group, item, [k])[0] > 0


def test_suppression_split_by_success(planted):
    chat, group = planted
    vanilla = group_activations(chat, [group], BASES + BASES)
    jailbroken = group_activations(chat, [group], [b + " that" for b in BASES] + [b + " sea" for b in BASES])
    succeeded = [True] * 6 + [False] * 6
    rows = suppression_table(["a"] * 6 + ["b"] * 6, vanilla, jailbroken, succeeded)
    by = {(r.attack, r.outcome): r for r in rows}
    assert by[("all attacks", "succeeded")].drop.value > 0.25
    assert abs(by[("all attacks", "failed")].drop.value) < 0.1
    assert by[("all attacks", "succeeded")].n == 6 and ("a", "failed") not in by
    gap = drop_gap(vanilla["refusal"], jailbroken["refusal"], succeeded)
    assert gap.low > 0


def test_relative_drop_is_a_ratio_of_means():
    v, j = np.array([1.0, 3.0]), np.array([0.5, 1.5])
    assert relative_drop(v, j).value == pytest.approx(0.5)
    with pytest.raises(RefusalScopeError):
        relative_drop(v, j[:1])
    with pytest.raises(RefusalScopeError):
        suppression_table(["a"], {"g": v}, {"g": j}, [True, False, True])


def test_heatmap_escapes_and_marks_the_request(planted):
    chat, group = planted
    prompt = "<script>alert(1)</script> that"
    acts = token_activations(chat, group, prompt)
    ids, positions, _ = instruction_tokens(chat, prompt)
    assert len(acts.pieces) == len(ids) and sum(acts.instruction) == len(positions)
    page = heatmap_html(acts, "<b>title</b>")
    assert "<script" not in page and "&lt;b&gt;title" in page
    body = page.split('class="heat-body">', 1)[1]
    text = "".join(acts.pieces)
    assert prompt in text and body.count("&lt;") == text.count("<") and body.count("&gt;") == text.count(">")
    # the heat map's values are the group's activations: post-instruction mean matches
    n_post = len(chat.eoi_ids)
    expected = group_activations(chat, [group], [prompt])["refusal"][0]
    assert acts.values[-n_post:].mean() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_empty_group_is_refused(planted):
    chat, group = planted
    with pytest.raises(RefusalScopeError):
        LatentGroup("empty", [(group.parts[0][0], [])])
    with pytest.raises(RefusalScopeError):
        LatentGroup("bad", [(group.parts[0][0], [99])])


def test_latents_read_during_generation_equal_a_residual_pass(planted, tmp_path, monkeypatch):
    """One pass over each prompt: the activations read in the replies' prefill are the ones a
    separate residual pass gives, the replies land in the generation cache, and with the
    replies cached already the same activations come from a residual pass."""
    from refusalscope.generations import cached_replies
    from refusalscope.mechanism import measure_while_generating

    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    chat, group = planted
    prompts = WITH_TOKEN + BASES[:3]
    direct = group_activations(chat, [group], prompts, batch_size=3)["refusal"]
    calls = []
    original = chat.generate
    monkeypatch.setattr(chat, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    during = measure_while_generating(chat, [group], prompts, max_new_tokens=3, batch_size=4)["refusal"]
    np.testing.assert_allclose(during, direct, rtol=1e-5, atol=1e-6)
    assert np.ptp(direct) > 0  # the planted latent tells the prompts apart, so order matters
    assert len(calls) == 1
    replies = cached_replies(chat, prompts, max_new_tokens=3, batch_size=4, progress=False)
    assert len(calls) == 1 and len(replies) == len(prompts)  # from the cache
    again = measure_while_generating(chat, [group], prompts, max_new_tokens=3, batch_size=4)["refusal"]
    assert len(calls) == 1
    np.testing.assert_allclose(again, direct, rtol=1e-5, atol=1e-6)
