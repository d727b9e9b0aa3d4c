"""The real round trip with SAELens itself, both ways. Skipped where sae_lens is not installed.

sae-lens is not a refusalscope dependency (it pulls transformer-lens, wandb, datasets, …),
so this runs in a throwaway environment that has both packages:

    python3 -m venv /tmp/saelens-venv
    /tmp/saelens-venv/bin/pip install sae-lens torch==2.13.0 pytest   # torch pinned: CPU build
    PYTHONPATH=src /tmp/saelens-venv/bin/python -m pytest -q tests/interop

Each test compares SAELens's own forward pass on a folder with refusalscope's on the
same folder, so it checks the file layout *and* that both read it to the same maths.
"""

import json

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

from refusalscope.sae import SAE, SAEConfig, load_sae, save_sae  # noqa: E402

D_IN, D_SAE = 12, 40


def _randomised(sae_module, seed: int) -> None:
    """Fill every parameter with random values, thresholds small and positive."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae_module.named_parameters():
            values = torch.randn(param.shape, generator=gen) * 0.5
            param.copy_(values.abs() * 0.3 if "threshold" in name else values)


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "arch,k,scale,saelens_class",
    [
        ("standard", None, 1.0, "StandardSAE"),
        ("jumprelu", None, 1.0, "JumpReLUSAE"),
        ("topk", 5, 1.0, "TopKSAE"),
        ("batchtopk", 5, 1.0, "JumpReLUSAE"),
        ("jumprelu", None, 3.5, "JumpReLUSAE"),  # input scale folded into the weights on save
    ],
)
def test_a_folder_saved_here_loads_in_saelens_with_identical_outputs(tmp_path, arch, k, scale, saelens_class):
    cfg = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=arch,
        k=k,
        layer=7,
        model_name="tiny-model",
        input_scale=scale,
    )
    ours = SAE(cfg)
    _randomised(ours, seed=1)
    folder = save_sae(ours, tmp_path / "sae")

    theirs = sae_lens.SAE.load_from_disk(folder)
    assert type(theirs).__name__ == saelens_class
    assert theirs.cfg.metadata.hook_name == "blocks.7.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "tiny-model"
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x))
        torch.testing.assert_close(theirs.decode(ours.encode(x)), ours.decode(ours.encode(x)))
        torch.testing.assert_close(theirs(x), ours(x)[0])


def _saelens_sae(kind: str):
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(model_name="gpt2", hook_name="blocks.3.hook_resid_pre")
    if kind == "standard":
        return StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta))
    if kind == "jumprelu":
        return JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=meta))
    if kind == "topk":
        return TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6, metadata=meta))
    if kind == "topk_rescaled":
        return TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6, rescale_acts_by_decoder_norm=True, metadata=meta))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk", "topk_rescaled"])
def test_a_folder_saved_by_saelens_loads_here_with_identical_outputs(tmp_path, kind):
    theirs = _saelens_sae(kind)
    _randomised(theirs, seed=2)
    theirs.save_model(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    assert ours.cfg.architecture == kind.split("_")[0]
    # blocks.3.hook_resid_pre is the stream leaving block 2
    assert (ours.cfg.layer, ours.cfg.site, ours.cfg.model_name) == (2, "resid_post", "gpt2")
    x = _x(1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x))
        if kind != "topk_rescaled":  # there refusalscope normalises the decoder: same outputs, rescaled codes
            torch.testing.assert_close(ours.encode(x), theirs.encode(x))
            torch.testing.assert_close(ours.state_tensors()["W_enc"], theirs.W_enc.detach())


def test_a_batchtopk_sae_trained_by_saelens_loads_here(tmp_path):
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    trained = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    _randomised(trained, seed=3)
    trained.topk_threshold = torch.tensor(0.2, dtype=torch.double)
    trained.save_inference_model(tmp_path / "sae")  # SAELens serves BatchTopK as JumpReLU
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["architecture"] == "jumprelu"
    served = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    x = _x(2)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), served.encode(x))
        torch.testing.assert_close(ours(x)[0], served(x))


def test_saving_again_after_loading_a_saelens_folder_round_trips(tmp_path):
    theirs = _saelens_sae("jumprelu")
    _randomised(theirs, seed=4)
    theirs.save_model(tmp_path / "a")
    save_sae(load_sae(tmp_path / "a"), tmp_path / "b")
    again = sae_lens.SAE.load_from_disk(tmp_path / "b")
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def _unit_fixtures():
    """The hand-written cfg.json fixtures of tests/unit/test_sae_io.py."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "unit" / "test_sae_io.py"
    spec = importlib.util.spec_from_file_location("sae_io_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURES = _unit_fixtures()


@pytest.mark.parametrize(
    "name,arch",
    [
        ("V6_STANDARD", "standard"),
        ("V6_JUMPRELU", "jumprelu"),
        ("V6_TOPK", "topk"),
        ("V5_STANDARD", "standard"),
        ("V5_JUMPRELU", "jumprelu"),
        ("V5_TOPK", "topk"),
        ("V3_STANDARD", "standard"),
    ],
)
def test_the_unit_test_fixtures_read_the_same_in_saelens(tmp_path, name, arch):
    """The committed unit tests use hand-written cfg.json files; SAELens must read them as we do."""
    folder = FIXTURES.write_saelens(tmp_path / "sae", getattr(FIXTURES, name), FIXTURES.random_tensors(arch, seed=5))
    theirs = sae_lens.SAE.load_from_disk(folder, device="cpu")
    ours = load_sae(folder)
    x = FIXTURES.X
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours(x)[0], theirs(x))
