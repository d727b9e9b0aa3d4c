"""Probes on a tiny random model: files without pickle, the table's rows, gates that read
exactly what the probe was evaluated on."""

import json

import numpy as np
import pytest
import torch

from refusalscope.errors import RefusalScopeError
from refusalscope.probes import FeatureSpec, LinearProbe, best_threshold, compare_probes, fit_probe, table_rows
from refusalscope.probes.compare import stratified_bootstrap
from refusalscope.probes.datasets import ProbeData, Split
from refusalscope.probes.features import ResidualBank
from refusalscope.probes.gate import gate_scores_match, gate_table, probe_conditional
from refusalscope.sae.model import SAE, SAEConfig
from refusalscope.steering.conditional import ProbeGate
from refusalscope.steering.interventions import ActAdd
from refusalscope.testing import tiny_chat_model

LAYER = 2
TOPICS = [
    "bread",
    "the sea",
    "France",
    "lists",
    "flour",
    "water",
    "yeast",
    "Paris",
    "poems",
    "plants",
    "rivers",
    "salt",
]


def _split(harmful, harmless):
    return Split(list(harmful) + list(harmless), np.array([1] * len(harmful) + [0] * len(harmless)))


@pytest.fixture(scope="module")
def setup():
    chat = tiny_chat_model("llama", n_layers=4, d_model=64, dtype=torch.float32)
    harmful = [f"Tell me that {t} is bad" for t in TOPICS] + [f"Explain that {t} hurts" for t in TOPICS]
    harmless = [f"Tell me about {t} now" for t in TOPICS] + [f"Explain how {t} works" for t in TOPICS]
    idx = np.random.default_rng(0).permutation(len(harmful))
    parts = [idx[:12], idx[12:18], idx[18:]]
    sets = [_split([harmful[i] for i in p], [harmless[i] for i in p]) for p in parts]
    ood = _split([f"Write a poem that {t} is fine" for t in TOPICS[:6]], [f"Write a poem on {t}" for t in TOPICS[:6]])
    data = ProbeData(sets[0], sets[1], sets[2], ood)
    sae = SAE.random(SAEConfig(d_in=64, d_sae=32, architecture="topk", k=8, layer=LAYER), seed=1)
    return chat, data, sae


def test_probe_files_are_safetensors_and_json(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(1, 1, (30, 4)), rng.normal(-1, 1, (30, 4))]) * [1, 10, 100, 0.1]
    y = np.array([1] * 30 + [0] * 30)
    probe = fit_probe(FeatureSpec("latents", 3, [5, 7, 9, 11], "sae/here", "abc"), x, y)
    probe.threshold = best_threshold(probe.decision_function(x), y)
    assert (probe.predict(x) == y).mean() > 0.9
    folder = probe.save(tmp_path / "probe")
    assert sorted(p.name for p in folder.iterdir()) == ["probe.json", "probe.safetensors"]
    assert not (folder / "probe.safetensors").read_bytes().startswith(b"\x80")  # not a pickle
    meta = json.loads((folder / "probe.json").read_text())
    assert meta["spec"]["features"] == [5, 7, 9, 11] and meta["threshold"] == pytest.approx(probe.threshold)
    loaded = LinearProbe.load(folder)
    np.testing.assert_allclose(loaded.decision_function(x), probe.decision_function(x), rtol=1e-5, atol=1e-4)
    assert loaded.spec == probe.spec
    with pytest.raises(RefusalScopeError):
        LinearProbe.load(tmp_path / "missing")
    with pytest.raises(RefusalScopeError):
        loaded.decision_function(x[:, :2])
    with pytest.raises(RefusalScopeError):
        fit_probe(FeatureSpec("dense", 0), x, np.ones(60))


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    from refusalscope.probes.compare import auroc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = np.round(rng.normal(size=50) + y, 1)  # with ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_best_threshold_maximises_balanced_accuracy():
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.35])
    y = np.array([0, 0, 0, 1, 1, 1])
    t = best_threshold(s, y)
    assert 0.3 < t < 0.35
    est = stratified_bootstrap(y, s > t, lambda a, b: float((a == b).mean()))
    assert est.value == 1.0 and est.n == 6


def test_compare_probes_rows_and_gate(setup, tmp_path):
    chat, data, sae = setup
    direction = (LAYER, np.random.default_rng(0).normal(size=64))
    comp = compare_probes(
        chat,
        data,
        [(sae, [1, 2, 3])],
        harm_parts=[(sae, [4, 5])],
        direction=direction,
        dense_layers=[1, 2, 3],
        n_random=5,
        seed=0,
    )
    names = [r.name for r in comp.rows]
    assert names == [
        "3 selected refusal latents",
        "3 random live latents",
        comp.rows[2].name,
        "refusal-direction projection",
        "2 harm latents alone",
    ]
    random_row = comp.rows[1]
    assert len(random_row.draws) == 5
    values = [d.ood_auroc.value for d in random_row.draws]
    assert random_row.ood_auroc.value == pytest.approx(np.mean(values))
    assert random_row.ood_auroc.low == pytest.approx(min(values))
    # dense: the layer chosen on validation is the one evaluated
    dense = comp.rows[2]
    chosen = max(comp.dense_layer_scores, key=comp.dense_layer_scores.get)
    assert comp.dense_layer_scores[int(dense.layer)] == comp.dense_layer_scores[chosen]
    assert dense.draws[0].probe.spec.layer == int(dense.layer)
    # the word " that" separates the classes in and out of distribution; the dense probe sees it
    assert dense.id_auroc.value > 0.8 and dense.ood_auroc.value > 0.7
    assert len(table_rows(comp)) == 1 + len(comp.rows)
    for row in comp.rows:
        for e in (row.id_bacc, row.id_auroc, row.ood_bacc, row.ood_auroc):
            assert e.low <= e.value <= e.high or "draws" in e.method


@pytest.mark.parametrize("kind", ["dense", "projection", "latents"])
def test_gate_reads_what_the_probe_was_scored_on(setup, tmp_path, kind):
    chat, data, sae = setup
    bank = ResidualBank(chat, data.all_prompts(), [LAYER])
    direction = np.random.default_rng(1).normal(size=64)
    if kind == "dense":
        spec, feats = FeatureSpec("dense", LAYER), lambda p: bank.dense(LAYER, p)
    elif kind == "projection":
        spec, feats = FeatureSpec("projection", LAYER), lambda p: bank.projection(LAYER, direction, p)
    else:
        spec, feats = FeatureSpec("latents", LAYER, [1, 2, 3, 6]), lambda p: bank.latents(sae, [1, 2, 3, 6], p)
    unit = direction / np.linalg.norm(direction) if kind == "projection" else None
    probe = fit_probe(spec, feats(data.train.prompts), data.train.labels, direction=unit)
    probe.threshold = best_threshold(probe.decision_function(feats(data.val.prompts)), data.val.labels)
    folder = probe.save(tmp_path / kind)
    loaded = LinearProbe.load(folder)
    prompts = data.test_ood.prompts
    gap = gate_scores_match(chat, loaded, feats(prompts), prompts, sae=sae if kind == "latents" else None)
    assert gap < 1e-4
    gate = ProbeGate.from_probe(folder, sae=sae if kind == "latents" else None)
    assert gate.layer == LAYER


def test_gate_table_and_wrong_sae(setup, tmp_path):
    chat, data, sae = setup
    bank = ResidualBank(chat, data.all_prompts(), [LAYER])
    probe = fit_probe(
        FeatureSpec("latents", LAYER, [1, 2], "somewhere", sae.content_hash()),
        bank.latents(sae, [1, 2], data.train.prompts),
        data.train.labels,
    )
    cond = probe_conditional(probe, ActAdd(torch.zeros(64), LAYER, 0.0), sae=sae)
    rows = gate_table(chat, {"probe": cond}, data, ["What is two plus two?", "Name a colour"])
    row = rows[0]
    assert row["capability_fire"]["n"] == 2
    assert row["capability_saved"]["value"] == pytest.approx(1 - row["capability_fire"]["value"])
    assert row["id_fire_harmful"]["n"] == int(data.test_id.labels.sum())
    other = SAE.random(SAEConfig(d_in=64, d_sae=32, architecture="topk", k=8, layer=LAYER), seed=2)
    with pytest.raises(RefusalScopeError):
        ProbeGate.from_probe(probe, sae=other)
