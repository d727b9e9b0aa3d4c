"""Where a model's parts live: the device a run asks for, and the device of each layer.

On one device every hook sees the residual stream where the model's first parameter is.
A model larger than one GPU is spread over several by accelerate (`load_model(...,
device_map="auto")`): then layer 20 may run on cuda:1 while the embedding sits on cuda:0,
and a hook on layer 20 receives cuda:1 tensors. Interventions, gates and SAEs therefore
place their tensors on the device of the layer they hook (`layer_device`), not on "the
model's device"; accelerate moves the residual stream between layers itself.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import RefusalScopeError


def resolve_device(device: str | torch.device = "auto") -> str:
    """'auto' is the first CUDA GPU when one is visible, else the CPU; anything else is
    checked to be a device torch knows (and a GPU that exists)."""
    text = str(device)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise RefusalScopeError(f"unknown device '{text}'", "use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise RefusalScopeError(f"device '{text}' asked for, but no CUDA GPU is visible", "use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise RefusalScopeError(
                f"device '{text}' asked for, but only {torch.cuda.device_count()} GPU(s) are visible",
                "use cuda:0 … cuda:N-1, or device_map='auto' to spread the model over all of them",
            )
    return text


def layer_device(model: Any, point: int | str) -> torch.device:
    """The device of the parameters of decoder layer `point` ("embed": the embedding) of a
    ChatModel: where a hook on that layer receives the residual stream."""
    module = model.hooks.module(point)
    for param in module.parameters():
        return param.device
    return model.device  # a layer without parameters: it runs where its input is


class OnDevice:
    """A model as one of its layers sees it: the same object in every respect but `.device`,
    which is that layer's. Interventions and gates build their tensors with
    `.to(model.device)`; handed this view, they build them where the layer runs."""

    def __init__(self, whole: Any, device: torch.device):
        self.whole = whole
        self.device = device

    def __getattr__(self, name: str) -> Any:
        return getattr(self.whole, name)


def at_layer(model: Any, point: int | str) -> Any:
    """`model`, or a view of it whose `.device` is that of layer `point` when the layers are
    spread over several devices (device_map); on one device, the model itself."""
    device = layer_device(model, point)
    return model if device == model.device else OnDevice(model, device)
