"""Residual-stream hooks: the one mechanism that capture, steering and attribution share.

A hook is `fn(hidden, ctx) -> hidden | None` attached to a *point*: an integer `l` for the
residual stream after decoder block `l` (SAELens' `blocks.l.hook_resid_post`) or
`"embed"` for the token embeddings. `ctx` (a `ForwardContext`) tells the hook which rows
are padding, which tokens belong to the prompt and which were generated, and which row of
the original batch each current row is, so that interventions can target positions and
keep per-prompt state across KV-cached decoding steps.

Hooks are attached for the duration of a `with` block and removed on exit, including
when the body raises. `HookManager.run_until` captures the hidden states at given points
and ends the forward after the deepest of them (raising and catching `StopForward`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import torch

from ..errors import RefusalScopeError

Point = Union[int, str]
HookFn = Callable[[torch.Tensor, "ForwardContext"], "torch.Tensor | None"]


@dataclass
class ForwardContext:
    """What a hook may need to know about the forward pass in flight.

    attention_mask: [B, past + T], 1 for real tokens (prompt or generated), 0 for padding.
    prompt_lengths: [B], number of real prompt tokens in each row.
    past_length: how many (padded) positions the KV cache already holds.
    rows: [B], index of each current row in the batch as it was first built; rows drop
        out of the batch when they finish, so stateful hooks key their state by this.
    batch_id: changes whenever a new batch starts, so stateful hooks know to reset.
    phase: "prefill" (prompt tokens), "decode" (one generated token per row) or "forward"
        (a plain forward over given text).
    """

    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    past_length: int
    rows: torch.Tensor
    batch_id: int
    phase: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def dense(cls, batch: int, length: int, device: torch.device | str = "cpu") -> "ForwardContext":
        """Context for a forward the ChatModel did not set up itself: all tokens real."""
        return cls(
            attention_mask=torch.ones(batch, length, dtype=torch.long, device=device),
            prompt_lengths=torch.full((batch,), length, dtype=torch.long, device=device),
            past_length=0,
            rows=torch.arange(batch, device=device),
            batch_id=-1,
            phase="forward",
        )

    @property
    def chunk_mask(self) -> torch.Tensor:
        """[B, T] real-token mask of the tokens in this forward."""
        return self.attention_mask[:, self.past_length :]

    def token_index(self) -> torch.Tensor:
        """[B, T] index of each token of this chunk within its row's real tokens (0-based)."""
        before = self.attention_mask[:, : self.past_length].sum(-1, keepdim=True)
        return before + self.chunk_mask.cumsum(-1) - 1

    def is_prompt(self) -> torch.Tensor:
        """[B, T] True for real prompt tokens."""
        idx = self.token_index()
        return (self.chunk_mask > 0) & (idx < self.prompt_lengths[:, None])

    def is_generated(self) -> torch.Tensor:
        """[B, T] True for tokens the model generated."""
        idx = self.token_index()
        return (self.chunk_mask > 0) & (idx >= self.prompt_lengths[:, None])


class HasHooks(Protocol):
    """Anything that contributes residual hooks: an intervention, a capture, a gate."""

    def hooks(self, model: Any) -> list[tuple[Point, HookFn]]: ...


class StopForward(Exception):
    """Raised by a hook to end a forward pass early.

    Once the deepest point a measurement needs has run, the remaining blocks and the
    unembedding are wasted work: capturing layer 6 of a 24-layer model costs a quarter of
    a forward. `HookManager.run_until` raises and catches it for you; a hook that raises
    it itself must be run inside `try: ... except StopForward:` around the forward.
    """


def deepest_point(points: Iterable[Point]) -> Point:
    """The point a forward reaches last: the highest layer, or 'embed' if only that."""
    layers = [p for p in points if isinstance(p, int)]
    return max(layers) if layers else "embed"


def _split_output(output: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(output, torch.Tensor):
        return output, None
    return output[0], output


def _join_output(hidden: torch.Tensor, original: Any) -> Any:
    if original is None:
        return hidden
    return (hidden, *original[1:])


class HookManager:
    """Owns the hooks of one ChatModel and the context of the forward in flight."""

    def __init__(self, layers: torch.nn.ModuleList, embed: torch.nn.Module):
        self.layers = layers
        self.embed = embed
        self.context: ForwardContext | None = None
        self._fns: dict[Point, list[HookFn]] = {}
        self._handles: dict[Point, torch.utils.hooks.RemovableHandle] = {}

    def module(self, point: Point) -> torch.nn.Module:
        if point == "embed":
            return self.embed
        if isinstance(point, bool) or not isinstance(point, int):
            raise RefusalScopeError(
                f"hook point {point!r} is neither a layer index nor 'embed'",
                f"use an integer in [0, {len(self.layers) - 1}] or 'embed'",
            )
        if not 0 <= point < len(self.layers):
            raise RefusalScopeError(
                f"layer {point} is out of range: this model has {len(self.layers)} decoder layers",
                f"use a layer in [0, {len(self.layers) - 1}]",
            )
        return self.layers[point]

    def _dispatch(self, point: Point) -> Callable[..., Any]:
        def run(module: torch.nn.Module, args: Any, output: Any) -> Any:
            hidden, original = _split_output(output)
            ctx = self.context or ForwardContext.dense(hidden.shape[0], hidden.shape[1], hidden.device)
            changed = False
            for fn in list(self._fns.get(point, ())):
                new = fn(hidden, ctx)
                if new is not None:
                    hidden = new
                    changed = True
            return _join_output(hidden, original) if changed else None

        return run

    def add(self, point: Point, fn: HookFn) -> Callable[[], None]:
        module = self.module(point)
        self._fns.setdefault(point, []).append(fn)
        if point not in self._handles:
            self._handles[point] = module.register_forward_hook(self._dispatch(point))

        def remove() -> None:
            fns = self._fns.get(point, [])
            if fn in fns:
                fns.remove(fn)
            if not fns and point in self._handles:
                self._handles.pop(point).remove()
                self._fns.pop(point, None)

        return remove

    @contextlib.contextmanager
    def attached(self, hooks: Iterable[tuple[Point, HookFn]]) -> Iterator[None]:
        removers = []
        try:
            for point, fn in hooks:
                removers.append(self.add(point, fn))
            yield
        finally:
            for remove in reversed(removers):
                remove()

    def run_until(self, points: Iterable[Point], forward: Callable[[], object]) -> dict[Point, torch.Tensor]:
        """Run `forward()` only as far as the deepest of `points`; return {point: hidden}.

        Each value is the [B, T, d] hidden state as the hooks attached *before* this call
        (interventions, splices) left it, still part of the autograd graph when gradients
        are on. The forward's own result is discarded: it stops before the logits.
        """
        wanted = list(dict.fromkeys(points))
        if not wanted:
            raise RefusalScopeError("no hook points to capture", "pass at least one layer index or 'embed'")
        deepest = deepest_point(wanted)
        captured: dict[Point, torch.Tensor] = {}

        def capture(point: Point) -> HookFn:
            def fn(hidden: torch.Tensor, ctx: ForwardContext) -> None:
                captured[point] = hidden
                if point == deepest:
                    raise StopForward

            return fn

        with self.attached([(p, capture(p)) for p in wanted]):
            try:
                forward()
            except StopForward:
                pass
        return captured

    @property
    def points(self) -> list[Point]:
        """The points that have at least one hook function attached right now."""
        return [p for p, fns in self._fns.items() if fns]

    @property
    def active(self) -> int:
        """Number of hook functions currently attached (0 outside any `with` block)."""
        return sum(len(v) for v in self._fns.values())

    @contextlib.contextmanager
    def forward_context(self, ctx: ForwardContext) -> Iterator[None]:
        previous = self.context
        self.context = ctx
        try:
            yield
        finally:
            self.context = previous
