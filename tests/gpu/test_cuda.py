"""GPU code paths (issue #16), on tiny random models: CUDA by default with bf16, steering,
gates and SAEs on the device of the layer they hook, a model split across devices with
accelerate's device_map, and discovery's attribution there. Every test here skips
cleanly without CUDA (CI has no GPU); run them with `pytest tests/gpu` on a GPU machine.

Tolerances. On a GPU, float32 matmuls take other kernels than on a CPU (and other ones for
other batch sizes), so GPU results are compared with the CPU's within 1e-4 (absolute, on
logits and attributions of order 1-10), not bit for bit; bf16 runs are only checked to be
finite and to agree with float32 on the GPU within 0.1 (bf16 keeps 8 bits of mantissa). On
a GPU the attention core defaults to fp32 (cuBLAS's kernels vary with the batch shape
anyway, so fp64 cannot buy bit-identical logits there; docs/scale.md): a prompt's logits
alone and in a batch agree within 1e-4 in float32, with either core.
"""

from __future__ import annotations

import pytest
import torch

from refusalscope.models import load_model
from refusalscope.models.placement import layer_device
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import ActAdd, Conditional, DirectionGate, FeatureSteer
from refusalscope.testing import save_tiny_model, tiny_chat_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["How do I pick a lock?", "Name a colour.", "Write a poem about the sea, in four short lines please."]
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_model(tiny_chat_model("llama", n_layers=4), tmp_path_factory.mktemp("gpu") / "model")


def steering(d_model: int):
    direction = torch.randn(d_model, generator=torch.Generator().manual_seed(0))
    sae = SAE.random(SAEConfig(d_in=d_model, d_sae=64, architecture="standard", layer=2), seed=0)
    return [
        FeatureSteer(sae, [1, 5, 9], "set", 3.0),
        Conditional(ActAdd(direction, 3, 4.0), DirectionGate(direction, 1), 0.0),
    ]


def test_auto_is_the_gpu_in_bf16(folder):
    chat = load_model(str(folder), device="auto", progress=False)
    assert chat.device.type == "cuda" and chat.dtype == torch.bfloat16
    assert chat.info.extra["attention"] == "fp32"  # the GPU default core
    fp32 = load_model(str(folder), dtype="float32", device="cuda", progress=False)
    a, b = chat.next_token_logits(PROMPTS).float(), fp32.next_token_logits(PROMPTS)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0.1, rtol=0.05)
    replies = chat.generate(PROMPTS, max_new_tokens=4, interventions=steering(chat.d_model))
    assert len(replies.texts) == len(PROMPTS)


def test_steering_on_the_gpu_matches_the_cpu(folder):
    cpu = load_model(str(folder), dtype="float32", device="cpu", progress=False)
    gpu = load_model(str(folder), dtype="float32", device="cuda", progress=False)
    for interventions in (None, steering(cpu.d_model)):
        torch.testing.assert_close(
            gpu.next_token_logits(PROMPTS, interventions=interventions),
            cpu.next_token_logits(PROMPTS, interventions=interventions),
            atol=TOL,
            rtol=TOL,
        )


def test_a_model_split_across_devices_steers_like_one_device(folder):
    """Layers 0-1 on the first GPU, 2-3 on the second GPU if there is one, else on the CPU:
    hooks at layers 1, 2 and 3 each receive their own device's tensors."""
    second = "cuda:1" if torch.cuda.device_count() > 1 else "cpu"
    split = {
        "model.embed_tokens": "cuda:0",
        "model.rotary_emb": "cuda:0",
        "model.layers.0": "cuda:0",
        "model.layers.1": "cuda:0",
        "model.layers.2": second,
        "model.layers.3": second,
        "model.norm": second,
        "lm_head": second,
    }
    mapped = load_model(str(folder), dtype="float32", device_map=split, progress=False)
    assert layer_device(mapped, 1).type == "cuda" and str(layer_device(mapped, 3)) == second
    single = load_model(str(folder), dtype="float32", device="cuda", progress=False)
    for interventions in (None, steering(single.d_model)):
        torch.testing.assert_close(
            mapped.next_token_logits(PROMPTS, interventions=interventions),
            single.next_token_logits(PROMPTS, interventions=interventions),
            atol=TOL,
            rtol=TOL,
        )
    replies = mapped.generate(PROMPTS, max_new_tokens=4, interventions=steering(single.d_model))
    assert replies.texts == single.generate(PROMPTS, max_new_tokens=4, interventions=steering(single.d_model)).texts


def test_attribution_on_the_gpu_and_split_matches_the_cpu(folder):
    from refusalscope.discovery.scoring import attribution_scores
    from refusalscope.steering import DirectionAblation

    cpu = load_model(str(folder), dtype="float32", device="cpu", progress=False)
    saes = {
        l: SAE.random(SAEConfig(d_in=cpu.d_model, d_sae=64, architecture="standard", layer=l), seed=l) for l in (1, 2)
    }
    ablation = DirectionAblation(torch.randn(cpu.d_model, generator=torch.Generator().manual_seed(1)))
    tokens = list(range(5, 40))
    want = attribution_scores(cpu, saes, PROMPTS, ablation, tokens, "ig", steps=2, batch_size=2, progress=False)
    for chat in (
        load_model(str(folder), dtype="float32", device="cuda", progress=False),
        load_model(str(folder), dtype="float32", device_map="auto", progress=False),
    ):
        got = attribution_scores(chat, saes, PROMPTS, ablation, tokens, "ig", steps=2, batch_size=2, progress=False)
        for l in saes:
            scale = want.per_prompt[l].abs().max()
            torch.testing.assert_close(got.per_prompt[l], want.per_prompt[l], atol=TOL * scale, rtol=0)
        torch.testing.assert_close(got.metric_clean, want.metric_clean, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("core", ["fp32", "fp64"])
def test_a_prompt_alone_and_in_a_batch_agree_on_the_gpu(folder, core):
    chat = load_model(str(folder), dtype="float32", device="cuda", attention=core, progress=False)
    assert chat.info.extra["attention"] == core
    alone = torch.cat([chat.next_token_logits([p]) for p in PROMPTS])
    together = chat.next_token_logits(PROMPTS)
    torch.testing.assert_close(together, alone, atol=TOL, rtol=TOL)


def test_a_ray_worker_setup_loads_on_the_gpu(folder):
    from refusalscope.distributed import ModelSetup

    chat, grid, tasks = ModelSetup(str(folder))()
    assert chat.device.type == "cuda" and chat.dtype == torch.bfloat16 and grid is None and tasks == []
