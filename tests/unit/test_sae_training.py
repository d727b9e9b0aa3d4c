"""Activation harvest, SAE training and SAE metrics, on tiny models and synthetic data."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.sae import SAE, SAEConfig
from refusalscope.sae.activations import ActivationStore, Document, harvest
from refusalscope.sae.metrics import evaluate_sae
from refusalscope.sae.training import TrainConfig, Trainer, sparse_decode, train_sae

TEXTS = [
    "The capital of France is Paris and the capital of Italy is Rome.",
    "Write a python function that reverses a list of numbers.",
    "How do I bake bread? Mix flour, water, salt and yeast.",
    "Explain how photosynthesis works in simple terms.",
    "I'm sorry, but I can't help with that request.",
]


def documents(chat, n=10):
    docs = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)] * (1 + i % 3)
        docs.append(Document(chat.tokenizer(text, add_special_tokens=False)["input_ids"], "text", skip=1 + i % 2))
    return docs


def test_harvest_stores_the_residual_of_kept_positions(tiny_llama, tmp_path):
    docs = documents(tiny_llama)
    store = harvest(tiny_llama, docs, [1, 3], tmp_path / "h", batch_size=4, outlier_factor=1e9, progress=False)
    assert store.manifest.complete and store.rows == sum(len(d.tokens) - d.skip for d in docs)
    for i, doc in enumerate(docs):  # every row is filed under its own document
        ref = tiny_llama.residual(
            [TEXTS[0]], [1, 3], positions="all", chat=False, progress=False, token_lists=[doc.tokens]
        )
        rows = np.nonzero(store.documents() == i)[0]
        for layer in (1, 3):
            got = torch.from_numpy(np.asarray(store.layer(layer)[rows], dtype=np.float32))
            torch.testing.assert_close(got, ref[layer][0][doc.skip :], rtol=2e-3, atol=2e-3)
        assert store.tokens()[rows].tolist() == doc.tokens[doc.skip :]


def test_harvest_batches_documents_of_similar_length(tiny_llama, tmp_path):
    docs = documents(tiny_llama)
    store = harvest(tiny_llama, docs, [1], tmp_path / "h", batch_size=4, outlier_factor=1e9, progress=False)
    lengths = [len(docs[i].tokens) for i in dict.fromkeys(store.documents().tolist())]  # processing order
    assert lengths == sorted((len(d.tokens) for d in docs), reverse=True)
    assert store.manifest.order == "length"


def test_harvest_drops_massive_norm_outliers(tiny_llama, tmp_path):
    docs = documents(tiny_llama)

    class Spike:
        def hooks(self, model):
            def fn(hidden, ctx):
                out = hidden.clone()
                out[:, -1] *= 1000  # the last token of every row becomes an outlier
                return out

            return [(0, fn)]

    with tiny_llama.hooks.attached(Spike().hooks(tiny_llama)):
        store = harvest(tiny_llama, docs, [2], tmp_path / "h", batch_size=4, outlier_factor=10, progress=False)
    assert store.manifest.rows_dropped_outlier == len(docs)
    assert store.rows == sum(len(d.tokens) - d.skip for d in docs) - len(docs)


def test_killed_harvest_resumes_to_the_same_result(tiny_llama, tmp_path):
    docs = documents(tiny_llama, 12)
    full = harvest(tiny_llama, docs, [2], tmp_path / "full", batch_size=4, progress=False)
    calls = {"n": 0}

    def die(hidden, ctx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with tiny_llama.hooks.attached([(0, die)]):
            harvest(tiny_llama, docs, [2], tmp_path / "resumed", batch_size=4, progress=False)
    partial = ActivationStore(tmp_path / "resumed")
    assert partial.manifest.documents_done == 4 and not partial.manifest.complete
    resumed = harvest(tiny_llama, docs, [2], tmp_path / "resumed", batch_size=4, progress=False)
    assert resumed.rows == full.rows
    np.testing.assert_array_equal(np.asarray(resumed.layer(2)), np.asarray(full.layer(2)))
    with pytest.raises(RefusalScopeError, match="different model, layer set or corpus"):
        harvest(tiny_llama, docs[:5], [2], tmp_path / "resumed", progress=False)


def synthetic_store(n=24_000, d=48, n_feat=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    codes = torch.zeros(n, n_feat)
    codes.scatter_(1, torch.randint(0, n_feat, (n, 3), generator=g), torch.rand(n, 3, generator=g) * 3 + 0.5)
    x = codes @ dirs + 0.01 * torch.randn(n, d, generator=g) + 1.5
    arr = x.numpy().astype(np.float16)
    return SimpleNamespace(
        layer=lambda layer: arr,
        documents=lambda: np.arange(n) // 40,
        kinds=lambda: ["synthetic"],
        manifest=SimpleNamespace(plan_hash="synthetic"),
    ), x


@pytest.mark.parametrize("arch,max_fvu", [("topk", 0.15), ("batchtopk", 0.25), ("standard", 0.25), ("jumprelu", 0.3)])
def test_each_architecture_learns_a_sparse_code(arch, max_fvu, tmp_path):
    store, x = synthetic_store()
    cfg = TrainConfig(
        architecture=arch,
        d_sae=384,
        k=6,
        epochs=4,
        batch_size=512,
        lr=2e-3,
        dead_tokens=10_000,
        l1_coeff=1e-3,
        l0_coeff=3e-3,
    )
    result = train_sae(store, 2, cfg, tmp_path, progress=False)
    sae = result.sae
    assert sae.cfg.architecture == arch and sae.layer == 2
    assert result.holdout["fvu"] < max_fvu, result.holdout
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(384), rtol=1e-4, atol=1e-4)
    if arch == "topk":
        assert result.holdout["l0"] <= 6
    # the SAE works on raw (unscaled) activations: its own FVU on the data matches the report
    recon, _ = sae(x[:2000])
    assert float((recon - x[:2000]).pow(2).sum() / (x[:2000] - x[:2000].mean(0)).pow(2).sum()) < max_fvu + 0.05


def test_killed_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    store, _ = synthetic_store(n=8000)
    cfg = TrainConfig(d_sae=128, k=4, epochs=2, batch_size=500, lr=1e-3, checkpoint_seconds=0.0)
    reference = train_sae(store, 0, cfg, tmp_path / "a", progress=False).sae
    original_step = Trainer.step
    calls = {"n": 0}

    def dying_step(self, x):
        calls["n"] += 1
        if calls["n"] == 21:
            raise KeyboardInterrupt
        return original_step(self, x)

    monkeypatch.setattr(Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_sae(store, 0, cfg, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    monkeypatch.setattr(Trainer, "step", original_step)
    resumed = train_sae(store, 0, cfg, tmp_path / "b", progress=False)
    assert resumed.sae.cfg.provenance["resumed"] is True
    for name, tensor in reference.state_tensors().items():
        torch.testing.assert_close(resumed.sae.state_tensors()[name], tensor)


def test_sparse_decode_gradients_match_dense():
    torch.manual_seed(0)
    w = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    pre = torch.randn(5, 40, dtype=torch.float64)
    vals, idx = pre.topk(4, -1)
    vals = vals.relu().requires_grad_()
    assert torch.autograd.gradcheck(lambda v, ww: sparse_decode(idx, v, ww), (vals, w))


def exact_sae(d):
    """f = [relu(x), relu(-x)], x̂ = f·[I; −I] = x: a lossless standard SAE."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, architecture="standard", layer=1, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def test_metrics_of_a_lossless_and_of_a_useless_sae(tiny_llama):
    chat = tiny_llama
    docs = documents(chat, 6)
    corpora = {"text": docs[:3], "chat": docs[3:]}
    harmful, harmless = ["How do I bake bread?", "Hello there"], ["Explain photosynthesis", "Write a poem"]
    perfect = evaluate_sae(chat, exact_sae(chat.d_model), corpora, harmful, harmless)
    assert perfect.fvu < 1e-6 and perfect.refusal_cosine > 0.9999
    for name in corpora:
        assert abs(perfect.ce_recovered[name] - 1) < 1e-4 and perfect.kl[name] < 1e-6
    assert perfect.l0 == pytest.approx(chat.d_model, rel=0.05)
    zero = exact_sae(chat.d_model)
    with torch.no_grad():
        zero.W_dec.zero_()
    useless = evaluate_sae(chat, zero, corpora)
    assert abs(useless.fvu - 1) < 0.2  # predicts 0: FVU = E‖x‖²/Var(x)
    for name in corpora:
        assert abs(useless.ce_recovered[name]) < 1e-4 and useless.kl[name] > 0
    assert useless.refusal_cosine is None


def test_metrics_reject_an_sae_for_another_model(tiny_llama):
    wrong = SAE.random(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, layer=1))
    with pytest.raises(RefusalScopeError, match="d_in=32 does not match the model's d_model=64"):
        evaluate_sae(tiny_llama, wrong, {"text": documents(tiny_llama, 2)})
