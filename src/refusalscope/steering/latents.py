"""SAE latents inside steering hooks: `SAE.encode_subset`, in float32, on the model's device.

Feature steering and the feature and probe gates all read a few latents of an SAE at every
forward. They all go through `latents_fn`, which calls the SAE's own `encode_subset` (the
one implementation, exact for TopK, ties included) on a *steering view* of the SAE:

- float32 whatever the SAE is stored in (steering maths is float32, as it always was);
- on the model's device (a copy is made once per device, and remade if the weights change);
- with weights that do not require gradients: GCG differentiates through steering hooks
  with respect to its input, and the SAE's own parameters must stay out of that graph.

On a CPU with a float32 SAE the view shares the SAE's storage, so nothing is copied.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch

from ..sae.model import SAE

__all__ = ["latents_fn", "steering_view"]

_VIEWS: weakref.WeakKeyDictionary[SAE, dict[str, tuple[tuple, SAE]]] = weakref.WeakKeyDictionary()


def steering_view(sae: SAE, device: torch.device | str, dtype: torch.dtype = torch.float32) -> SAE:
    """An SAE with `sae`'s config and weights, float32 (or `dtype`) on `device`, without gradients."""
    device = torch.device(device)
    tensors = sae.state_tensors()  # detached
    stamp = tuple((name, t.data_ptr(), t._version, t.device, t.dtype) for name, t in tensors.items())
    views = _VIEWS.setdefault(sae, {})
    key = str(device) if dtype == torch.float32 else f"{device}/{dtype}"
    hit = views.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.device("meta"):  # no allocation: the weights are assigned below
        view = SAE(sae.cfg)
    view.requires_grad_(False)
    view.load_state_dict({k: v.to(device, dtype) for k, v in tensors.items()}, assign=True)
    views[key] = (stamp, view)
    return view


def latents_fn(sae: SAE, features: Sequence[int], device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [..., d_in] -> the float32 activations of `features` [..., len(features)]."""
    view = steering_view(sae, device)
    index = torch.tensor(list(features), dtype=torch.long)
    view.check_features(index)  # on the CPU: no device round trip to read the bounds
    index = index.to(view.W_enc.device)
    return lambda x: view.encode_subset(x, index)
