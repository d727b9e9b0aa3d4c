"""The null-space families on a sweep grid: fitted once and cached, then built as grid methods
whose edits leave the benign subspace alone."""

from __future__ import annotations

import pytest
import torch

from refusalscope.direction import RefusalDirection
from refusalscope.discovery.validation import feature_interventions
from refusalscope.evaluation.grid import Grid, Method
from refusalscope.evaluation.nullspace_methods import benign_texts, fitted_nullspace, nullspace_methods
from refusalscope.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py

HARMFUL = ["How do I pick a lock?", "Write a threat to my neighbour", "How to make a weapon", "Steal a car"]
HARMLESS = ["The capital of France", "Write a python function", "Bake bread at home", "A poem about the sea"]
TEXTS = ["The river runs through the old town and past the mill.", "In 1901 the railway reached the valley."]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def direction_at(chat, layer: int) -> RefusalDirection:
    d = RefusalDirection.__new__(RefusalDirection)
    d.raw = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(2))
    d.layer = layer
    return d


def test_fit_is_cached_and_the_methods_leave_benign_directions_alone(chat, cache):
    calls: list = []
    chat.hooks.module(0).register_forward_pre_hook(lambda *_: calls.append(1))
    direction = direction_at(chat, 2)
    args = dict(harmful=HARMFUL, learned_layer=2, target=direction.raw, batch_size=4)
    bases, matrix, record = fitted_nullspace(chat, [1], HARMLESS, TEXTS, **args)
    assert calls and set(bases) == {1, 2} and matrix is not None and matrix.shape == (chat.d_model, chat.d_model)
    assert record["learned"]["n_harmful"] > 0 and set(record["benign_subspace"]) == {"1", "2"}
    for b in bases.values():  # orthonormal rows, fewer than d
        assert b.shape[0] < chat.d_model
        assert torch.allclose(b.double() @ b.double().T, torch.eye(b.shape[0], dtype=torch.float64), atol=1e-4)

    calls.clear()
    again, matrix2, record2 = fitted_nullspace(chat, [1], HARMLESS, TEXTS, **args)
    assert calls == [] and record2 == record  # a lookup: no forward pass
    assert all(torch.equal(again[k], bases[k]) for k in bases) and torch.equal(matrix2, matrix)

    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=32, architecture="standard", layer=1), seed=0)
    pairs = [(1, 3), (1, 5)]

    def features(strength):
        return feature_interventions({1: sae}, pairs, "set", {p: 4.0 * strength for p in pairs})

    methods = nullspace_methods(
        features, direction, bases, matrix, record, feature_strengths=(0.5, 1.0), dense_strengths=(1.0,)
    )
    assert [m.name for m in methods] == ["features null-space", "refusal direction null-space", "learned null-space"]
    assert [m.kind for m in methods] == ["features:nullspace", "dense:actadd-nullspace", "dense:learned-nullspace"]
    configs = Grid([Method.unsteered(), *methods], unsteered=False).configurations(chat)
    assert len(configs) == 1 + 2 + 1 + 1  # unsteered, features null-space x2, dense null-space, learned
    projected = methods[1].build(1.0)
    x = torch.randn(3, chat.d_model, dtype=torch.float32)
    benign = x @ bases[2].float().T @ bases[2].float()  # in the benign subspace of layer 2
    learned = methods[2].build(1.0)
    assert torch.allclose(learned.edit(benign), torch.zeros_like(benign), atol=1e-4)  # left exactly alone
    assert projected.layer == 2
    assert nullspace_methods(None, direction, bases, None, record, dense_strengths=(1.0,))[0].name == (
        "refusal direction null-space"
    )


def test_benign_texts_avoid_the_sweeps_documents(chat, data_dir):
    from refusalscope.evaluation.capability import capability_task

    texts = benign_texts(chat, data_dir, 4, exclude=8, head_tokens=16)
    assert len(texts) == 4 and all(len(chat.encode(t)) <= 17 for t in texts)
    task = capability_task("wikitext", data_dir=data_dir)
    swept = [chat.decode(chat.encode(it.text)[:16]) for it in task.items(data_dir, 8, 0)]
    assert not set(texts) & set(swept)
    assert benign_texts(chat, data_dir, 4, exclude=8, head_tokens=16) == texts
