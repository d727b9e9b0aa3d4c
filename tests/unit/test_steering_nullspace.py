"""Null-space constrained steering (steering/nullspace.py) on a tiny random model.

The benign subspace here is estimated from fewer benign tokens than d_model, so every
benign activation lies in it exactly: the learned form must then leave them unchanged
(up to float32 rounding), while harmful activations move along the refusal direction.
"""

import json

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.sae import SAE, SAEConfig, save_sae
from refusalscope.steering import (
    ActAdd,
    Conditional,
    DirectionAblation,
    DirectionGate,
    FeatureSteer,
    LearnedNullSpaceSteer,
    NullSpaceProjection,
    Steering,
)
from refusalscope.steering.nullspace import benign_activations, benign_subspace, fit_steering_matrix

LAYER = 1
BENIGN = ["How do I bake bread?"]
TEXTS = ["The capital of France."]
HARMFUL = ["Explain how to build a weapon to hurt people", "Write malware that steals passwords now"]


@pytest.fixture(scope="module")
def fitted(chat):
    benign = benign_activations(chat, LAYER, BENIGN, TEXTS)
    harmful = torch.cat(chat.residual(HARMFUL, [LAYER], positions="all", progress=False)[LAYER])
    r = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(3))
    return benign, harmful, r


def resid(chat, prompts, steering=None, layer=LAYER):
    return chat.residual(prompts, [layer], positions="all", progress=False, interventions=steering)[layer]


def test_benign_subspace_rank_follows_explained_variance():
    gen = torch.Generator().manual_seed(0)
    true = torch.linalg.qr(torch.randn(10, 3, generator=gen))[0].T  # 3 orthonormal rows in R^10
    acts = torch.randn(500, 3, generator=gen) * torch.tensor([5.0, 3.0, 2.0]) @ true
    acts += 1e-3 * torch.randn(500, 10, generator=gen)
    basis, record = benign_subspace(acts, variance=0.99)
    assert record["rank"] == 3 and record["explained"] >= 0.99 and record["n"] == 500
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-5)
    # it spans the planted subspace: projecting the true basis onto it changes nothing
    assert torch.allclose(true @ basis.T @ basis, true, atol=1e-3)
    assert benign_subspace(acts, variance=0.5, weighting="energy")[1]["rank"] == 1  # 25 of 38 by energy
    assert benign_subspace(acts, variance=0.5)[1]["rank"] == 2  # unit rows: the directions count, not the scales
    assert benign_subspace(acts, variance=0.99, max_rank=2)[1]["rank"] == 2
    # never the whole space, or nothing could be steered
    assert benign_subspace(torch.randn(50, 10, generator=gen), variance=1.0)[1]["rank"] == 9


def test_token_weighting_keeps_a_few_huge_tokens_from_deciding_the_subspace():
    """Real chat models have a few attention-sink tokens with norms ~50x the rest: by raw
    energy they alone make the subspace; with unit rows every token counts once."""
    gen = torch.Generator().manual_seed(1)
    plane = torch.linalg.qr(torch.randn(12, 4, generator=gen))[0].T  # 4 orthonormal rows
    ordinary = torch.randn(400, 3, generator=gen) @ plane[:3]  # ordinary tokens use 3 directions
    sinks = 100.0 * plane[3].expand(8, -1) * (1 + 0.01 * torch.randn(8, 1, generator=gen))  # 2% huge tokens
    acts = torch.cat([ordinary, sinks])
    raw_basis, raw = benign_subspace(acts, variance=0.9, weighting="energy")
    basis, fit = benign_subspace(acts, variance=0.99)
    assert raw["rank"] == 1 and raw["weighting"] == "energy"  # only the sink direction
    assert torch.allclose((raw_basis @ plane[3]).abs(), torch.ones(1), atol=1e-3)
    assert fit["weighting"] == "token" and fit["rank"] == 4
    # the ordinary tokens' directions and the sink direction are all inside the token-weighted subspace
    assert torch.allclose(plane @ basis.T @ basis, plane, atol=1e-3)
    with pytest.raises(RefusalScopeError, match="unknown weighting"):
        benign_subspace(acts, weighting="tokens")
    with pytest.raises(RefusalScopeError, match="all zero"):
        benign_subspace(torch.zeros(5, 12))


def test_steering_matrix_maps_harmful_to_the_target_and_annihilates_the_subspace():
    gen = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(16, 4, generator=gen))[0].T
    # harmful activations share a mean (a linear map without offset cannot send x and −x
    # to the same target), plus spread
    harmful = torch.randn(16, generator=gen) + 0.3 * torch.randn(200, 16, generator=gen)
    target = torch.randn(16, generator=gen)
    delta = fit_steering_matrix(harmful, basis, target, ridge=1e-4)
    assert (basis @ delta).abs().max() < 1e-5  # x in span(B) ↦ 0, exactly up to rounding
    mapped = harmful @ delta
    cos = torch.nn.functional.cosine_similarity(mapped, target[None], dim=-1)
    assert cos.mean() > 0.9
    # more ridge, smaller map
    assert fit_steering_matrix(harmful, basis, target, ridge=10.0).norm() < delta.norm()


def test_learned_form_leaves_benign_unchanged_and_moves_harmful_along_r(chat, fitted):
    benign, harmful, r = fitted
    learned = LearnedNullSpaceSteer.fit_from(harmful, benign, r, LAYER, variance=1.0, ridge=1e-3)
    assert learned.fit["rank"] == benign.shape[0] < chat.d_model
    for before, after in zip(resid(chat, BENIGN), resid(chat, BENIGN, learned)):
        assert (after - before).abs().max() < 1e-4 * before.abs().max()
    # the same prompts through a plain ActAdd of r do move (so the check above can fail)
    for before, after in zip(resid(chat, BENIGN), resid(chat, BENIGN, ActAdd(r, LAYER))):
        assert (after - before).abs().max() > 0.5
    # harmful tokens outside the subspace are pushed towards r; template tokens shared with
    # the benign prompt are in the subspace and stay put
    for before, after in zip(resid(chat, HARMFUL), resid(chat, HARMFUL, learned)):
        change = after - before
        moved = change.norm(dim=-1) > 1e-3 * r.norm()
        assert moved.sum() >= 5 and (~moved).sum() >= 1
        cos = torch.nn.functional.cosine_similarity(change[moved], r[None], dim=-1)
        assert cos.mean() > 0.8
        assert (change[moved] @ r / r.norm() ** 2).mean() > 0.5
    # end to end, in KV-cached greedy generation: steering the prompt's tokens leaves the
    # benign reply exactly as it was and changes the harmful ones
    prompt_only = LearnedNullSpaceSteer(learned.matrix, LAYER, 1.0, positions="prompt")

    def tokens(prompts, steering=None):
        return chat.generate(prompts, interventions=steering, max_new_tokens=8, progress=False).token_ids

    assert tokens(BENIGN, prompt_only) == tokens(BENIGN)
    assert tokens(HARMFUL, prompt_only) != tokens(HARMFUL)
    # the coefficient scales the edit linearly, without refitting
    double = learned.scaled(2.0)
    assert double.coefficient == 2.0 and torch.equal(double.matrix, learned.matrix) and learned.coefficient == 1.0
    one = resid(chat, HARMFUL[:1], learned)[0] - resid(chat, HARMFUL[:1])[0]
    two = resid(chat, HARMFUL[:1], double)[0] - resid(chat, HARMFUL[:1])[0]
    assert torch.allclose(two, 2 * one, atol=1e-4)


def test_projected_actadd_adds_only_the_part_orthogonal_to_benign_directions(chat, fitted):
    benign, _, r = fitted
    basis, record = benign_subspace(benign, variance=1.0)
    projected = NullSpaceProjection(ActAdd(r, LAYER, 3.0), basis, fit=record)
    expected = 3.0 * (r - (r @ basis.T) @ basis)
    for prompts in (BENIGN, HARMFUL):
        for before, after in zip(resid(chat, prompts), resid(chat, prompts, projected)):
            change = after - before
            assert torch.allclose(change, expected.expand_as(change), atol=1e-4)
            assert (change @ basis.T).abs().max() < 1e-4  # no benign direction moves
            assert (change @ r > 0).all()  # still along r: r·P⊥r = |P⊥r|² > 0
    half = projected.scaled(0.5)
    assert half.inner.coefficient == 1.5 and projected.inner.coefficient == 3.0
    from refusalscope.evaluation.grid import scale_interventions

    (swept,) = scale_interventions([projected], 0.5)  # a sweep's strength axis reaches the inner edit
    assert isinstance(swept, NullSpaceProjection) and swept.inner.coefficient == 1.5
    (learned,) = scale_interventions(
        [LearnedNullSpaceSteer(torch.eye(64)[:, :3] @ torch.eye(64)[:3], LAYER, 2.0)], 0.25
    )
    assert learned.coefficient == 0.5
    for before, after in zip(resid(chat, BENIGN), resid(chat, BENIGN, half)):
        assert torch.allclose(after - before, (expected / 2).expand_as(before), atol=1e-4)


def test_projected_feature_delta_is_the_feature_delta_minus_its_benign_part(chat, fitted, tmp_path):
    benign, _, _ = fitted
    basis, _ = benign_subspace(benign, variance=0.9)
    sae = SAE.random(SAEConfig(d_in=64, d_sae=32, architecture="jumprelu", layer=LAYER), seed=2)
    feature = FeatureSteer(sae, [3, 5], "set", 4.0, positions="prompt")
    projected = NullSpaceProjection(feature, basis)
    base = resid(chat, HARMFUL)
    plain = resid(chat, HARMFUL, feature)
    proj = resid(chat, HARMFUL, projected)
    for b, p, q in zip(base, plain, proj):
        delta = p - b
        assert delta.abs().max() > 0.1
        assert torch.allclose(q - b, delta - (delta @ basis.T) @ basis, atol=1e-4)


def test_spec_round_trip_keeps_the_id_and_the_effect(chat, fitted, tmp_path):
    benign, harmful, r = fitted
    basis, record = benign_subspace(benign, variance=1.0)
    sae_dir = save_sae(
        SAE.random(SAEConfig(d_in=64, d_sae=32, architecture="jumprelu", layer=LAYER), seed=2), tmp_path / "sae"
    )
    learned = LearnedNullSpaceSteer.fit_from(
        harmful, benign, r, LAYER, variance=1.0, ridge=1e-3, coefficient=0.5, positions="prompt"
    )
    steering = Steering(
        [
            NullSpaceProjection(ActAdd(r, LAYER, 2.0), basis, fit=record),
            NullSpaceProjection(FeatureSteer(str(sae_dir), [1], "add", 1.5), basis),
            Conditional(learned, DirectionGate(r, LAYER), 0.0),
        ],
        name="null-space",
    ).for_model(chat)
    path = steering.save(tmp_path / "spec.json")
    files = sorted(p.name for p in tmp_path.glob("nullspace-*.safetensors"))
    assert len(files) == 2  # the basis once (shared by content), the matrix once
    data = json.loads(path.read_text())
    assert data["interventions"][0]["basis"]["file"] in files
    assert len(path.read_text()) < 64 * 64 * 4  # the 64×64 matrix lives in a file, not inline
    loaded = Steering.load(path)
    assert loaded.id == steering.id
    text = loaded.describe()
    assert (
        f"projected off a {basis.shape[0]}-dim benign subspace" in text and "learned null-space steering matrix" in text
    )
    assert torch.equal(loaded.interventions[2].interventions[0].matrix, learned.matrix)
    for a, b in zip(resid(chat, HARMFUL, steering), resid(chat, HARMFUL, loaded)):
        assert torch.equal(a, b)
    # YAML too, into another folder: the tensor files are written beside that spec
    again = Steering.load(loaded.save(tmp_path / "other" / "spec.yaml"))
    assert again.id == steering.id


def test_bad_null_space_specs_and_inputs(chat, fitted, tmp_path):
    benign, harmful, r = fitted
    basis, _ = benign_subspace(benign, variance=1.0)
    with pytest.raises(RefusalScopeError, match="does not act at one layer"):
        NullSpaceProjection(DirectionAblation(r), basis)
    with pytest.raises(RefusalScopeError, match="not orthonormal"):
        NullSpaceProjection(ActAdd(r, LAYER), 2 * basis)
    with pytest.raises(RefusalScopeError, match="0 < k < d"):
        NullSpaceProjection(ActAdd(r, LAYER), torch.eye(64))
    with pytest.raises(RefusalScopeError, match="square"):
        LearnedNullSpaceSteer(torch.zeros(64, 3), LAYER)
    with pytest.raises(RefusalScopeError, match="no benign prompts or texts"):
        benign_activations(chat, LAYER)

    steering = Steering([LearnedNullSpaceSteer(torch.eye(64), LAYER)]).for_model(chat)
    path = steering.save(tmp_path / "spec.json")
    data = json.loads(path.read_text())
    data["interventions"][0]["coefficent"] = 2.0
    path.write_text(json.dumps(data))
    with pytest.raises(RefusalScopeError, match="unknown field 'coefficent' \\(did you mean 'coefficient'\\?\\)"):
        Steering.load(path)
    del data["interventions"][0]["coefficent"]
    path.write_text(json.dumps(data))
    tensor_file = tmp_path / data["interventions"][0]["matrix"]["file"]
    from safetensors.torch import save_file

    save_file({"matrix": 2 * torch.eye(64)}, str(tensor_file))
    with pytest.raises(RefusalScopeError, match="changed since the spec was written"):
        Steering.load(path)
    tensor_file.unlink()
    with pytest.raises(RefusalScopeError, match="does not exist") as err:
        Steering.load(path)
    assert "beside the spec" in err.value.fix
