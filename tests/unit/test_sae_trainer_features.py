"""The SAE trainer's training features, each on synthetic data in seconds: the learning-rate
schedule, AuxK reviving dead latents, BatchTopK's batch-level sparsity and the threshold it
hands to inference, and the quick preset's learning rate against the large-run rule."""

import sys
from pathlib import Path

import pytest
import torch

from refusalscope.sae.training import TrainConfig, Trainer, train_sae, training_key

sys.path.insert(0, str(Path(__file__).parent))
from test_sae_training import synthetic_store  # noqa: E402


def centred_rows(n=8000):
    _, x = synthetic_store(n=n)
    return x - x.mean(0)


def test_learning_rate_warms_up_holds_then_decays_to_zero():
    cfg = TrainConfig(d_sae=64, k=4, lr=1e-3, warmup_frac=0.1, decay_start_frac=0.6)
    trainer = Trainer(cfg, 8, {"layer": 0}, total_steps=200)
    lrs = [trainer.lr_at(step) for step in range(200)]
    assert lrs[0] == pytest.approx(1e-3 / 20)  # linear warm-up over the first 10% (20 steps)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:20]))
    assert lrs[19] == pytest.approx(1e-3)
    assert set(lrs[19:120]) == {1e-3}  # flat until 60% of the run
    assert all(a > b for a, b in zip(lrs[120:], lrs[121:]))  # then linearly down ...
    assert lrs[-1] == pytest.approx(1e-3 / 80)  # ... to zero at the last step
    assert lrs[160] == pytest.approx(1e-3 * 40 / 80)


def train_with_starved_latents(aux_coeff: float, steps: int = 120) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    """16 of 96 latents start with encoder columns 100x too small: they never win a TopK slot,
    so the reconstruction loss gives them no gradient at all."""
    x = centred_rows()
    cfg = TrainConfig(d_sae=96, k=4, lr=2e-3, dead_tokens=1000, aux_coeff=aux_coeff, aux_k=16)
    trainer = Trainer(cfg, x.shape[1], {"layer": 0}, total_steps=steps)
    starved = torch.arange(16)
    with torch.no_grad():
        trainer.sae.W_enc[:, starved] *= 0.01
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        trainer.step(x[torch.randint(0, x.shape[0], (256,), generator=g)])
    with torch.no_grad():
        winners = trainer.sae.pre_activations(x).topk(cfg.k, dim=-1).indices
    fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
    fired[winners.flatten()] = True
    return trainer, fired, starved


def test_auxk_revives_dead_latents():
    trainer, fired, starved = train_with_starved_latents(aux_coeff=1 / 32)
    assert bool(fired[starved].all()), f"{int(fired[starved].sum())} of 16 starved latents fire"
    assert float((trainer.tokens_since_fired >= trainer.cfg.dead_tokens).float().mean()) == 0.0


def test_without_auxk_starved_latents_stay_dead():
    trainer, fired, starved = train_with_starved_latents(aux_coeff=0.0)
    assert not bool(fired[starved].any())
    assert bool((trainer.tokens_since_fired[starved] >= trainer.cfg.dead_tokens).all())


def test_batchtopk_keeps_k_times_batch_latents_active_per_batch():
    x = centred_rows(2048)
    cfg = TrainConfig(architecture="batchtopk", d_sae=96, k=4, lr=2e-3)
    trainer = Trainer(cfg, x.shape[1], {"layer": 0}, total_steps=80)
    _, stats = trainer.loss(x[:256])
    # k per token on average over the batch, not exactly k for every token
    assert stats["l0"] * 256 == pytest.approx(4 * 256)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        trainer.step(x[torch.randint(0, x.shape[0], (256,), generator=g)])
    sae = trainer.finished_sae(1.0)
    # at inference one learned threshold replaces the batch: a token's code is its own,
    # and the mean L0 stays near k
    _, f = sae(x)
    l0 = (f > 0).sum(-1).float()
    assert 0.6 * 4 <= float(l0.mean()) <= 1.6 * 4
    assert float(l0.std()) > 0  # per-token sparsity varies, unlike TopK
    _, alone = sae(x[:1])
    torch.testing.assert_close(alone, f[:1])


def test_raw_inputs_train_as_well_as_normalised_ones(tmp_path):
    store, x = synthetic_store(n=8000)
    results = {}
    for normalise in (True, False):
        cfg = TrainConfig(d_sae=192, k=4, epochs=3, batch_size=500, lr=2e-3, normalise_inputs=normalise)
        results[normalise] = train_sae(store, 0, cfg, tmp_path / str(normalise), progress=False)
    assert results[False].sae.cfg.provenance["input_scale"] == 1.0
    assert results[True].sae.cfg.provenance["input_scale"] != 1.0
    for result in results.values():
        assert result.holdout["fvu"] < 0.3, result.holdout


def test_a_changed_training_config_gets_a_new_cache_folder():
    from dataclasses import replace

    from refusalscope.sae.presets import get_preset, sae_folder_name

    quick = get_preset("quick")
    name = sae_folder_name(quick, 16)
    assert name.startswith("layer_16-") and name == sae_folder_name(get_preset("quick"), 16)
    assert sae_folder_name(replace(quick, train=replace(quick.train, lr=1e-3)), 16) != name
    # what the harvest depends on (the corpus) is not part of the SAE's key
    assert sae_folder_name(replace(quick, corpus=replace(quick.corpus, n_text_chunks=1)), 16) == name
    assert training_key(quick.train) in name
