"""Device placement for models spread over several devices (device_map): every hook's
tensors, SAEs and gates live on the device of the layer they hook. Checked on a CPU by
moving one decoder layer to PyTorch's "meta" device: a hook at that layer receives meta
tensors, and meta and CPU tensors do not mix, so an intervention that built its tensors on
"the model's device" (the CPU) fails there, while one that follows its layer works."""

from __future__ import annotations

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.models.hooks import ForwardContext
from refusalscope.models.placement import OnDevice, at_layer, layer_device, resolve_device
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import ActAdd, Conditional, DirectionAblation, DirectionGate, FeatureGate, FeatureSteer
from refusalscope.testing import save_tiny_model, tiny_chat_model

META = torch.device("meta")


@pytest.fixture
def split_model():
    """A tiny model whose decoder layer 2 lives on another device ("meta")."""
    chat = tiny_chat_model("llama", n_layers=4)
    chat.hooks.module(2).to(META)
    return chat


def run_hook(fn, device, d_model):
    hidden = torch.ones(2, 3, d_model, device=device)
    return fn(hidden, ForwardContext.dense(2, 3))  # the context (masks, rows) stays on the CPU


def test_layer_device_and_the_view_of_the_model_from_a_layer(split_model):
    chat = split_model
    assert layer_device(chat, 2) == META and layer_device(chat, 1).type == "cpu"
    assert layer_device(chat, "embed").type == "cpu"
    assert at_layer(chat, 1) is chat  # on the model's own device: the model itself
    view = at_layer(chat, 2)
    assert isinstance(view, OnDevice) and view.device == META
    assert view.n_layers == chat.n_layers and view.hooks is chat.hooks  # everything else is the model's


def test_interventions_build_their_tensors_on_the_layer_they_hook(split_model):
    chat = split_model
    d = chat.d_model
    direction = torch.randn(d, generator=torch.Generator().manual_seed(0))
    sae = SAE.random(SAEConfig(d_in=d, d_sae=32, architecture="standard", layer=2), seed=0)
    for item in (
        ActAdd(direction, 2, 3.0),
        FeatureSteer(sae, [1, 5], "set", 2.0),  # encodes through a float32 view of the SAE on the layer's device
        FeatureSteer(sae, [1, 5], "scale", 2.0, keep_error=False),  # full reconstruction: the SAE itself follows
    ):
        ((point, fn),) = item.hooks(chat)
        assert run_hook(fn, META, d).device == META, item.describe()
    # one intervention over every layer: each hook on its own layer's device
    hooks = DirectionAblation(direction).hooks(chat)
    assert [p for p, _ in hooks] == ["embed", 0, 1, 2, 3]
    for point, fn in hooks:
        device = layer_device(chat, point)
        assert run_hook(fn, device, d).device == device
    # the same ActAdd built against the model's first device cannot act on layer 2: what the placement prevents
    shift = ActAdd(direction, 2, 3.0).delta_fn(chat)
    with pytest.raises(RuntimeError, match="device"):
        shift(torch.ones(6, d, device=META)) + torch.ones(6, d, device=META)


def test_gates_score_on_the_device_of_the_layer_they_read(split_model, monkeypatch):
    chat = split_model
    d = chat.d_model
    sae = SAE.random(SAEConfig(d_in=d, d_sae=32, architecture="standard", layer=2), seed=1)
    direction = torch.randn(d, generator=torch.Generator().manual_seed(1))
    seen = []
    for gate in (DirectionGate(direction, 2), FeatureGate(sae, 3)):
        score = gate.scorer(at_layer(chat, 2))
        assert score(torch.ones(2, 3, d, device=META)).device == META
        real = type(gate).scorer

        def recorded(self, model, real=real):
            seen.append(model.device)
            return real(self, model)

        monkeypatch.setattr(type(gate), "scorer", recorded)
        Conditional(ActAdd(direction, 3, 1.0), gate, 0.0).hooks(chat)
    assert seen == [META, META]  # each gate built for layer 2's device (the steering it gates: layer 3's, the CPU)


def test_devices_by_name_and_device_map_through_accelerate(tmp_path):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RefusalScopeError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RefusalScopeError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    from refusalscope.models import load_model

    folder = save_tiny_model(tiny_chat_model("llama", n_layers=4), tmp_path / "model")
    plain = load_model(str(folder), dtype="float32", device="auto", progress=False)
    mapped = load_model(str(folder), dtype="float32", device_map="auto", progress=False)  # accelerate places it
    prompts = ["How do I pick a lock?", "Name a colour."]
    torch.testing.assert_close(mapped.next_token_logits(prompts), plain.next_token_logits(prompts))
    direction = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(2))
    steer = ActAdd(direction, 1, 4.0)
    torch.testing.assert_close(
        mapped.next_token_logits(prompts, interventions=steer), plain.next_token_logits(prompts, interventions=steer)
    )
