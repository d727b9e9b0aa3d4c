"""The SAE maths, against numbers worked out by hand on tiny sizes, and its invariances."""

from types import SimpleNamespace

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.sae import ARCHITECTURES, SAE, SAEConfig, canonical_architecture

# d_in = 2, d_sae = 3. With x = [3, 1] and b_dec = [1, -1] subtracted first, x' = [2, 2]:
#   pre = x' W_enc + b_enc = [2, 4, 0] + [0, -1, 0.5] = [2, 3, 0.5]
W_ENC = [[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]
B_ENC = [0.0, -1.0, 0.5]
W_DEC = [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]
B_DEC = [1.0, -1.0]
X = [3.0, 1.0]


def hand_sae(arch: str, k: int | None = None, threshold=None, **cfg) -> SAE:
    sae = SAE(SAEConfig(d_in=2, d_sae=3, architecture=arch, k=k, **cfg))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor(W_ENC))
        sae.b_enc.copy_(torch.tensor(B_ENC))
        sae.W_dec.copy_(torch.tensor(W_DEC))
        sae.b_dec.copy_(torch.tensor(B_DEC))
        if threshold is not None:
            sae.threshold.copy_(torch.tensor(threshold))
    return sae


def test_standard_relu_by_hand():
    sae = hand_sae("standard")
    f = sae.encode(torch.tensor(X))
    assert f.tolist() == [2.0, 3.0, 0.5]
    # f W_dec + b_dec = [2 + 1, 3 + 1] + [1, -1]
    assert sae.decode(f).tolist() == [4.0, 3.0]
    recon, latents = sae(torch.tensor([X, X]))
    assert recon.tolist() == [[4.0, 3.0]] * 2 and latents.tolist() == [[2.0, 3.0, 0.5]] * 2


def test_standard_without_b_dec_on_the_input_by_hand():
    sae = hand_sae("standard", apply_b_dec_to_input=False)
    # pre = [3, 1] W_enc + b_enc = [3, 2, -2] + [0, -1, 0.5] = [3, 1, -1.5]
    assert sae.encode(torch.tensor(X)).tolist() == [3.0, 1.0, 0.0]


def test_jumprelu_is_strictly_above_the_threshold_by_hand():
    # pre = [2, 3, 0.5]; 2 is not above 2.5, 3 is not above 3 (strict), 0.5 is above 0.4
    sae = hand_sae("jumprelu", threshold=[2.5, 3.0, 0.4])
    f = sae.encode(torch.tensor(X))
    assert f.tolist() == [0.0, 0.0, 0.5]
    assert sae.decode(f).tolist() == [2.0, 0.0]  # [1, 1] + [1, -1]


def test_topk_keeps_the_k_largest_then_relu_by_hand():
    sae = hand_sae("topk", k=2)
    f = sae.encode(torch.tensor(X))
    assert f.tolist() == [2.0, 3.0, 0.0]
    assert sae.decode(f).tolist() == [3.0, 2.0]
    # x = [0, 0]: x' = [-1, 1], pre = [-1, 2, 2] + b_enc = [-1, 1, 2.5] -> top 2 = {1, 2.5}
    assert sae.encode(torch.tensor([0.0, 0.0])).tolist() == [0.0, 1.0, 2.5]
    # x = [1, -1]: x' = [0, 0], pre = b_enc = [0, -1, 0.5]; top 2 = {0.5, 0}: the ReLU comes after
    assert sae.encode(torch.tensor([1.0, -1.0])).tolist() == [0.0, 0.0, 0.5]


def test_batchtopk_uses_its_threshold_at_inference_by_hand():
    sae = hand_sae("batchtopk", k=1, threshold=[1.0, 1.0, 1.0])
    # per token, independent of the batch: pre = [2, 3, 0.5] -> [2, 3, 0]
    assert sae.encode(torch.tensor([X, [1.0, -1.0]])).tolist() == [[2.0, 3.0, 0.0], [0.0, 0.0, 0.0]]


def test_input_scale_by_hand():
    sae = hand_sae("standard", apply_b_dec_to_input=False, input_scale=2.0)
    # x' = 2 * [1, 0.5] = [2, 1]; pre = [2, 2, -1] + b_enc = [2, 1, -0.5]
    f = sae.encode(torch.tensor([1.0, 0.5]))
    assert f.tolist() == [2.0, 1.0, 0.0]
    # (f W_dec + b_dec) / 2 = ([2, 1] + [1, -1]) / 2
    assert sae.decode(f).tolist() == [1.5, 0.0]
    assert sae.decoder_directions([2]).tolist() == [[1.0, 1.0]]


def random_sae(arch: str, seed: int = 0, d_in: int = 16, d_sae: int = 48, **cfg) -> SAE:
    k = 6 if arch in ("topk", "batchtopk") else None
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k, dtype="float64", **cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            values = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.copy_(values.abs() * 0.5 if name == "threshold" else values)
    return sae


def inputs(d_in: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 7, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encode_subset_equals_the_columns_of_encode(arch):
    sae = random_sae(arch)
    x = inputs()
    full = sae.encode(x)
    assert 0 < (full != 0).float().mean() < 1  # some latents on, some off: the test has teeth
    features = [5, 0, 47, 5, 12]
    torch.testing.assert_close(sae.encode_subset(x, features), full[..., features])
    torch.testing.assert_close(sae.encode_subset(x, torch.arange(48)), full)


def test_encode_subset_of_topk_is_exact_when_latents_tie():
    """Three identical, dominant latents tie for k=2 places: encode keeps exactly two of them,
    and so must encode_subset (comparing with the k-th value would keep all three)."""
    sae = random_sae("topk")
    with torch.no_grad():
        sae.cfg.k = 2
        sae.W_enc[:, 1] = sae.W_enc[:, 0]
        sae.W_enc[:, 2] = sae.W_enc[:, 0]
        sae.b_enc[:3] = 100.0
    x = inputs()
    full = sae.encode(x)
    assert ((full[..., :3] != 0).sum(-1) == 2).all()  # exactly k of the three tied latents survive
    torch.testing.assert_close(sae.encode_subset(x, [0, 1, 2]), full[..., :3])
    assert ((sae.encode_subset(x, list(range(48))) != 0).sum(-1) <= 2).all()


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "batchtopk"])
def test_normalize_decoder_preserves_outputs(arch):
    sae = random_sae(arch)
    x = inputs()
    recon, latents = sae(x)
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(48, dtype=torch.float64))
    new_recon, new_latents = sae(x)
    torch.testing.assert_close(new_recon, recon)
    torch.testing.assert_close((new_latents != 0), (latents != 0))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_fold_input_scale_preserves_every_output(arch, apply_b_dec):
    sae = random_sae(arch, input_scale=3.7, apply_b_dec_to_input=apply_b_dec)
    x = inputs()
    recon, latents = sae(x)
    directions = sae.decoder_directions([1, 4])
    sae.fold_input_scale()
    assert sae.cfg.input_scale == 1.0
    new_recon, new_latents = sae(x)
    torch.testing.assert_close(new_latents, latents)
    torch.testing.assert_close(new_recon, recon)
    torch.testing.assert_close(sae.decoder_directions([1, 4]), directions)


def test_fold_input_scale_is_a_no_op_at_scale_one():
    sae = random_sae("jumprelu")
    before = {k: v.clone() for k, v in sae.state_tensors().items()}
    sae.fold_input_scale()
    assert all(torch.equal(before[k], v) for k, v in sae.state_tensors().items())


def test_check_features_names_the_bad_index():
    sae = random_sae("standard")
    with pytest.raises(RefusalScopeError) as err:
        sae.encode_subset(inputs(), [3, 48])
    assert "feature index 48 is out of range for an SAE with d_sae=48" in err.value.problem
    assert "[0, 47]" in err.value.fix
    with pytest.raises(RefusalScopeError, match="feature index -1"):
        sae.check_features(torch.tensor([-1]))
    sae.check_features(torch.tensor([], dtype=torch.long))  # nothing to check is fine


def fake_chat(d_model: int, n_layers: int = 24, name: str = "qwen-tiny"):
    return SimpleNamespace(d_model=d_model, n_layers=n_layers, info=SimpleNamespace(name=name))


def test_check_model_rejects_a_different_width_and_a_missing_layer():
    sae = random_sae("standard", layer=30, model_name="gemma-2-2b")
    with pytest.raises(RefusalScopeError) as err:
        sae.check_model(fake_chat(896))
    assert "SAE d_in=16 does not match the model's d_model=896 (qwen-tiny)" in err.value.problem
    assert "gemma-2-2b" in err.value.fix
    with pytest.raises(RefusalScopeError, match="reads layer 30, but qwen-tiny has 24 layers"):
        sae.check_model(fake_chat(16))
    sae.cfg.layer = 23
    sae.check_model(fake_chat(16))


def test_check_model_on_a_real_chat_model(tiny_llama):
    random_sae("standard", d_in=tiny_llama.d_model, layer=tiny_llama.n_layers - 1).check_model(tiny_llama)
    with pytest.raises(RefusalScopeError, match=f"d_model={tiny_llama.d_model}"):
        random_sae("standard", d_in=tiny_llama.d_model + 1).check_model(tiny_llama)


def test_config_validation():
    assert canonical_architecture("ReLU") == "standard" and canonical_architecture("batch_topk") == "batchtopk"
    with pytest.raises(RefusalScopeError, match="unknown SAE architecture 'gated'"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    with pytest.raises(RefusalScopeError, match="needs 0 < k <= d_sae, got k=None"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk")
    with pytest.raises(RefusalScopeError, match="got k=9"):
        SAEConfig(d_in=4, d_sae=8, architecture="batchtopk", k=9)
    assert SAEConfig(d_in=4, d_sae=8, architecture="standard", layer=5).hook_name == "blocks.5.hook_resid_post"
