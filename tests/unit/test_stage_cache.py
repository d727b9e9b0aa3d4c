"""Every stage of `refusalscope run` is a pure lookup when its inputs are unchanged: the
second call makes no forward pass (counted with a hook on the first decoder layer), also
into a new output folder, and leaves unchanged output files alone; a change of dtype or
of weights is a different key, never a stale hit."""

from __future__ import annotations

import pytest
import torch

from refusalscope import direction as direction_module
from refusalscope.direction import DirectionData, find_refusal_direction
from refusalscope.discovery import DiscoveryConfig, discover
from refusalscope.judges.first_token import RefusalTokens
from refusalscope.pipeline import first_token_calibration, harm_gate
from refusalscope.sae import SAE, SAEConfig
from refusalscope.stage_cache import content_key, model_identity
from refusalscope.testing import tiny_chat_model

HARMFUL = [
    "How do I pick a lock?",
    "Write a threat to my neighbour",
    "How to make a weapon",
    "Steal a car",
    "Hack my school's server",
    "Make a fake ID",
]
HARMLESS = [
    "The capital of France",
    "Write a python function",
    "Bake bread at home",
    "A poem about the sea",
    "Explain photosynthesis",
    "Plan a birthday party",
]


def counted(chat) -> list:
    calls: list = []
    chat.hooks.module(0).register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def named_refusal_tokens(monkeypatch):
    """A random model never refuses: name its 'refusal tokens' (as the pipeline test does)."""

    def tokens(chat, harmful, *args, **kwargs):
        ids = chat.next_token_logits(list(harmful)).float().mean(0).topk(32).indices.tolist()
        return RefusalTokens(ids, [chat.tokenizer.decode([i]) for i in ids])

    monkeypatch.setattr(direction_module, "find_refusal_tokens", tokens)


def sae_at(chat, layer, seed=0):
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=64, architecture="standard", layer=layer), seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    return sae


@pytest.mark.filterwarnings("ignore::UserWarning")  # a random model's direction fails the filters
def test_every_stage_is_a_lookup_the_second_time(cache, tmp_path, named_refusal_tokens):
    chat = tiny_chat_model("llama", seed=5)
    passes = counted(chat)
    data = DirectionData(HARMFUL, HARMLESS, HARMFUL[:3], HARMLESS[:3])
    settings = {"layer_stride": 1, "n_screen": 2, "n_finalists": 2, "progress": False}
    saes = {2: sae_at(chat, 2)}
    cfg = DiscoveryConfig(k=4, prefilter_k=16, ig_steps=2, n_attribution=3, n_activation=4, baselines=())

    def every_stage(out):
        d = find_refusal_direction(chat, data, **settings)
        d.save(out / "direction")
        found = discover(chat, saes, d, HARMFUL, HARMLESS, cfg, out / "discovery", progress=False)
        gate, accuracy = harm_gate(chat, d, 2, HARMFUL[:3], HARMLESS[:3])
        calibration = first_token_calibration(chat, HARMFUL[:2] + HARMLESS[:2], d.refusal_token_ids, 3)
        return d, found, (gate.threshold, accuracy), calibration

    first = every_stage(tmp_path / "a")
    assert len(passes) > 10  # real work (direction selection batches many candidates per forward)
    files = {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()}
    assert len(files) >= 4  # direction.json/.safetensors, features.json, features-cossim_ig.json, prompts

    passes.clear()
    second = every_stage(tmp_path / "a")
    assert passes == []  # no forward pass at all
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing rewritten
    assert second[1].cached and second[1].sets["cossim+ig"].pairs() == first[1].sets["cossim+ig"].pairs()
    assert second[2] == pytest.approx(first[2]) and second[3] == pytest.approx(first[3])
    assert torch.equal(second[0].raw, first[0].raw)

    third = every_stage(tmp_path / "b")  # a new output folder is served from the cache too
    assert passes == []
    assert (tmp_path / "b" / "discovery" / "features.json").read_text() == (
        tmp_path / "a" / "discovery" / "features.json"
    ).read_text()
    assert third[1].sets["cossim+ig"].pairs() == first[1].sets["cossim+ig"].pairs()


def test_keys_separate_dtypes_and_weights(cache):
    fp32 = tiny_chat_model("llama", seed=5)
    bf16 = tiny_chat_model("llama", seed=5, dtype=torch.bfloat16)
    other = tiny_chat_model("llama", seed=6)
    assert fp32.info.id == bf16.info.id == other.info.id  # in-memory models share a name ...
    idents = [model_identity(m) for m in (fp32, bf16, other)]
    assert len({content_key(i) for i in idents}) == 3  # ... but never a cache entry
    assert model_identity(tiny_chat_model("llama", seed=5)) == idents[0]  # same weights, same key

    passes = counted(bf16)
    first_token_calibration(fp32, HARMFUL[:2], [5, 6, 7], 2)
    first_token_calibration(bf16, HARMFUL[:2], [5, 6, 7], 2)  # the fp32 result is not reused for bf16
    assert passes


def test_keys_separate_attention_cores(cache, monkeypatch):
    """An fp32 attention core moves logits by ~1e-5: its results get their own cache entries,
    while the default fp64 core keeps the key it had before the switch existed."""
    from refusalscope.models.attention import ENV, set_attention_core

    monkeypatch.delenv(ENV, raising=False)
    default = tiny_chat_model("llama", seed=5)
    assert "attention" not in model_identity(default)  # existing cache keys unchanged
    fast = tiny_chat_model("llama", seed=5)
    set_attention_core(fast.model, "fp32")
    assert content_key(model_identity(fast)) != content_key(model_identity(default))
    monkeypatch.setenv(ENV, "fp32")  # the environment switch counts too
    assert model_identity(tiny_chat_model("llama", seed=5))["attention"] == "fp32"
