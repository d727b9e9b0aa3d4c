"""Remember the lower decoder layers' work, so configurations that differ only above them share it.

A sweep runs the same prompts under several steering configurations. Every configuration
of the quick profile first changes the residual stream at layer 14 (ActAdd) or 16 (SAE
latents, the gate's read): below that, every configuration computes exactly the same
thing, prompt by prompt, forward by forward. `LayerMemo` makes that work happen once.

While it is active (`ChatModel.share_lower_layers(upto)`), every forward of the model is
keyed by what the lower layers see: the input ids, the attention mask, the position ids
and, when a KV cache holds earlier tokens, a fingerprint of that history (the cached keys
and values of layers 0 and `upto`, which are functions of the whole history below).
The first forward with a key runs normally and records, for layers 0..`upto`, the keys
and values it appended to the cache and the output of layer `upto` (before any hook at
that point). A later forward with the same key skips those layers: each appends its
recorded keys and values to the cache, layer `upto` returns its recorded output, and the
hooks attached at `upto` and above run as usual. The result is bit-identical to running
every layer (the skipped layers are deterministic functions of the key; tested).

It steps aside (runs every layer) whenever skipping could be wrong or is unsupported: a
hook attached below `upto` or at the embedding, gradients enabled (attribution needs the
graph), a forward given embeddings instead of ids or asked for every hidden state, a cache
whose lower layers are not plain `DynamicLayer`s (sliding-window or static caches), or a
decoder layer that returns a tuple (older transformers). Entries are kept up to
`max_bytes` (least recently used dropped first); `clear()` drops them all, e.g. when a
sweep moves to the next chunk of items.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import RefusalScopeError

if TYPE_CHECKING:
    from .hooks import HookManager


@dataclass
class _Entry:
    output: torch.Tensor  # [B, T, d] output of layer `upto`, before hooks
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer 0..upto: the keys/values appended
    nbytes: int = 0


@dataclass
class _Flight:
    """The forward in progress: its key, the entry it reuses (hit) or the one it records."""

    key: bytes
    hit: _Entry | None
    recorded: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    with_cache: bool = False
    ok: bool = True


@dataclass
class MemoStats:
    """How much work the memo saved: forwards served from it, forwards that ran every
    layer and recorded, forwards it stepped aside for, and decoder-layer calls skipped."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    layers_skipped: int = 0

    def __str__(self) -> str:
        return (
            f"{self.hits} forwards reused the lower layers, {self.misses} recorded them, "
            f"{self.bypassed} ran without the memo; {self.layers_skipped} decoder-layer calls skipped"
        )


def _digest(h: Any, tensor: torch.Tensor | None) -> None:
    if tensor is None:
        h.update(b"none")
        return
    t = tensor.detach()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    t = t.contiguous().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bytes read as int16
        t = t.view(torch.int16)
    h.update(t.numpy().tobytes())


class LayerMemo:
    """Shares decoder layers 0..`upto` between forwards with identical inputs (see module doc).

    `model` is the transformers model a ChatModel calls, `layers` its decoder layers and
    `hooks` the ChatModel's HookManager (`ChatModel.share_lower_layers` passes all three)."""

    def __init__(
        self, model: torch.nn.Module, layers: torch.nn.ModuleList, hooks: HookManager, upto: int, max_bytes: int = 2**30
    ):
        if isinstance(upto, bool) or not isinstance(upto, int) or not 0 <= upto < len(layers):
            raise RefusalScopeError(
                f"cannot share layers up to {upto!r}: the model has {len(layers)} decoder layers",
                f"pass a layer in [0, {len(layers) - 1}]",
            )
        self.model = model
        self.layers = layers
        self.hooks = hooks
        self.upto = upto
        self.max_bytes = int(max_bytes)
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.stats = MemoStats()
        self._flight: _Flight | None = None
        self._bytes = 0
        self._undo: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ install
    def __enter__(self) -> LayerMemo:
        if self._undo:
            raise RefusalScopeError("this LayerMemo is already active", "use one `with` block at a time")
        model = self.model
        pre = model.register_forward_pre_hook(self._start, with_kwargs=True)
        post = model.register_forward_hook(self._end, always_call=True)
        self._undo += [pre.remove, post.remove]
        for index in range(self.upto + 1):
            layer = self.layers[index]
            original = layer.forward
            layer.forward = self._wrap(index, original)

            def restore(layer: torch.nn.Module = layer) -> None:
                del layer.forward  # the instance attribute: the class's forward is back

            self._undo.append(restore)
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        self._flight = None
        self.clear()

    def clear(self) -> None:
        """Drop every entry (the statistics stay)."""
        self.entries.clear()
        self._bytes = 0

    # ------------------------------------------------------------------ keys
    def _usable_cache(self, cache: Any) -> bool:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        return layers is not None and all(type(layer) is DynamicLayer for layer in layers[: self.upto + 1])

    def _key(self, kwargs: dict[str, Any]) -> bytes | None:
        """The forward's key, or None when the memo must step aside for it."""
        if torch.is_grad_enabled() or kwargs.get("input_ids") is None or kwargs.get("inputs_embeds") is not None:
            return None
        if kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
            return None
        hooked = self.hooks.points
        if any(p == "embed" or (isinstance(p, int) and p < self.upto) for p in hooked):
            return None
        h = hashlib.blake2b(digest_size=20)
        h.update(f"upto={self.upto}".encode())
        for name in ("input_ids", "attention_mask", "position_ids"):
            h.update(name.encode())
            _digest(h, kwargs.get(name))
        cache = kwargs.get("past_key_values")
        if cache is not None:
            if not self._usable_cache(cache):
                return None
            if cache.get_seq_length() > 0:
                for index in sorted({0, self.upto}):
                    layer = cache.layers[index]
                    _digest(h, layer.keys)
                    _digest(h, layer.values)
        return h.digest()

    def _start(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        key = None if args else self._key(kwargs)  # ChatModel passes everything by keyword
        if key is None:
            self._flight = None
            self.stats.bypassed += 1
            return
        hit = self.entries.get(key)
        cache = kwargs.get("past_key_values")
        wants_cache = cache is not None or bool(kwargs.get("use_cache", getattr(module.config, "use_cache", False)))
        if hit is not None and wants_cache and hit.kv is None:
            hit = None  # recorded without a cache: run again, and record the keys and values this time
        if hit is not None:
            self.entries.move_to_end(key)
        self._flight = _Flight(key, hit)

    def _end(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        flight, self._flight = self._flight, None
        if flight is None:
            return
        if flight.hit is not None:
            self.stats.hits += 1
        else:
            self.stats.misses += 1

    # ------------------------------------------------------------------ layers
    def _wrap(self, index: int, original: Callable[..., Any]) -> Callable[..., Any]:
        last = index == self.upto

        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            flight = self._flight
            if flight is None or not flight.ok:
                return original(hidden_states, *args, **kwargs)
            cache = kwargs.get("past_key_values")
            if flight.hit is not None:
                entry = flight.hit
                if cache is not None:
                    assert entry.kv is not None  # _start drops hits recorded without a cache
                    keys, values = entry.kv[index]
                    cache.update(keys, values, index)
                self.stats.layers_skipped += 1
                return entry.output if last else hidden_states
            out = original(hidden_states, *args, **kwargs)
            if not isinstance(out, torch.Tensor):
                flight.ok = False  # a layer that returns a tuple: not supported, record nothing
                return out
            if index == 0:
                flight.with_cache = cache is not None
            if flight.with_cache:
                if cache is None:
                    flight.ok = False
                    return out
                n = hidden_states.shape[1]
                layer = cache.layers[index]
                flight.recorded.append((layer.keys[..., -n:, :].clone(), layer.values[..., -n:, :].clone()))
            if last:
                self._store(flight, out)
            return out

        return forward

    def _store(self, flight: _Flight, out: torch.Tensor) -> None:
        kv = flight.recorded if flight.with_cache else None
        if kv is not None and len(kv) != self.upto + 1:
            return
        size = out.numel() * out.element_size() + sum(
            k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv or ()
        )
        if size > self.max_bytes:
            return
        old = self.entries.pop(flight.key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self.entries[flight.key] = _Entry(out.detach().clone(), kv, size)
        self._bytes += size
        while self._bytes > self.max_bytes and self.entries:
            _, dropped = self.entries.popitem(last=False)
            self._bytes -= dropped.nbytes
