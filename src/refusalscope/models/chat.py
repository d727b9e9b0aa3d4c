"""ChatModel: a causal LM and its tokenizer, seen the way refusal research needs them.

Three operations carry the whole tool: format a request with the model's chat template,
generate a reply (batched, KV-cached, greedy by default, identical whatever the batch
size), and read the residual stream at chosen layers and token positions. Hooks
(`models.hooks`) let later stages change the residual stream during any of these.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union, cast

import torch
from tqdm.auto import tqdm

from ..errors import RefusalScopeError
from .hooks import ForwardContext, HookManager, Point
from .info import ModelInfo

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

    from ..types import CapturePositions, Interventions
    from .hooks import HasHooks, HookFn
    from .layer_memo import LayerMemo

Message = dict[str, str]
Prompt = Union[str, Sequence[Message]]

_LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers")
_NORM_PATHS = ("model.norm", "model.language_model.norm", "language_model.model.norm")
_SENTINEL = "\x00REFUSALSCOPE_INSTRUCTION\x00"


def _get_path(root: torch.nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass
class Batch:
    """Left-padded token batch; `index` maps each row back to the caller's prompt order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    index: list[int]

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(-1)

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class Generation:
    """Result of `ChatModel.generate`, in the order of the prompts given."""

    prompts: list[Prompt]
    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]
    prompt_lengths: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_generated(self) -> int:
        return sum(len(t) for t in self.token_ids)

    def __len__(self) -> int:
        return len(self.texts)


class ChatModel:
    """A chat model plus tokenizer with chat formatting, generation and residual access."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info_overrides: dict[str, Any] | None = None
    ):
        self.model = model
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.layers: torch.nn.ModuleList = self._find(_LAYER_PATHS, "decoder layers")
        self.final_norm: torch.nn.Module = self._find(_NORM_PATHS, "final norm")
        self.embed = cast(torch.nn.Embedding, model.get_input_embeddings())
        self.unembed = cast(torch.nn.Linear, model.get_output_embeddings())
        self.hooks = HookManager(self.layers, self.embed)
        self._batch_counter = itertools.count()
        self._eoi_ids: list[int] | None = None
        self.share_prefix = True
        self.min_shared_prefix = 8
        self._safe_hooks = 0  # hooks attached by prefix-safe interventions (-1: some are not)
        self._prefix_tail = 0  # trailing prompt tokens the attached items need kept out of a shared prefix
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        overrides = dict(info_overrides or {})
        self.info = ModelInfo(
            spec=overrides.pop("spec", getattr(config, "_name_or_path", "model")),
            name=overrides.pop("name", getattr(config, "_name_or_path", "model") or "model"),
            source=overrides.pop("source", "object"),
            path=overrides.pop("path", ""),
            family=overrides.pop("family", config.model_type),
            n_layers=len(self.layers),
            d_model=config.hidden_size,
            dtype=str(self.dtype).replace("torch.", ""),
            sha256=overrides.pop("sha256", None),
            revision=overrides.pop("revision", None),
            extra=overrides,
        )

    # ------------------------------------------------------------------ structure
    def _find(self, paths: Sequence[str], what: str) -> Any:
        for path in paths:
            found = _get_path(self.model, path)
            if found is not None:
                return found
        raise RefusalScopeError(
            f"cannot find the {what} of {type(self.model).__name__}",
            "refusalscope supports Llama, Qwen2/3, Gemma 1/2/3, Mistral and Phi-3 style models",
        )

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.info.d_model

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def final_norm_gain(self) -> torch.Tensor | None:
        """[d_model] float32 per-dimension gain of the final norm, or None if it has none.

        A residual direction's direct effect on the logits is `unembed.weight @ (v * gain)`:
        the norm's rescaling by the token's RMS is shared by every direction, its gain is
        not. Gemma's RMSNorm multiplies by (1 + weight), the others by weight.
        """
        weight = getattr(self.final_norm, "weight", None)
        if weight is None:
            return None
        gain = weight.detach().float()
        return 1 + gain if self.info.family.startswith("gemma") else gain

    def __repr__(self) -> str:
        i = self.info
        return f"ChatModel({i.name}, family={i.family}, layers={i.n_layers}, d_model={i.d_model}, dtype={i.dtype})"

    # ------------------------------------------------------------------ formatting
    def messages(self, prompt: Prompt, system: str | None = None) -> list[Message]:
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = [dict(m) for m in prompt]
            if not messages or any("role" not in m or "content" not in m for m in messages):
                raise RefusalScopeError(
                    "a conversation must be a non-empty list of {'role', 'content'} messages",
                    "pass a string or e.g. [{'role': 'user', 'content': 'Hi'}]",
                )
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return messages

    def format(self, prompt: Prompt, system: str | None = None, add_generation_prompt: bool = True) -> str:
        """Render one request with the tokenizer's chat template, ready for the reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise RefusalScopeError(
                f"the tokenizer of {self.info.name} has no chat template",
                "use a chat/instruct model, or set tokenizer.chat_template before formatting",
            )
        messages = self.messages(prompt, system)
        try:
            return cast(
                str,
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=add_generation_prompt
                ),
            )
        except Exception as exc:  # jinja raises TemplateError for e.g. a system role
            if messages[0]["role"] != "system":
                raise RefusalScopeError(f"the chat template rejected the conversation: {exc}") from exc
            # Templates without a system role (Gemma): fold it into the first user turn.
            merged = [dict(m) for m in messages[1:]]
            merged[0]["content"] = f"{messages[0]['content']}\n\n{merged[0]['content']}"
            return cast(
                str,
                self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=add_generation_prompt),
            )

    def encode(self, text: str) -> list[int]:
        """Token ids of already formatted text (the template supplies BOS where needed)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids (one token's text, for token-level displays, with `[t]`)."""
        return cast(str, self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def encode_prompts(
        self, prompts: Sequence[Prompt], system: str | None = None, chat: bool = True
    ) -> list[list[int]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise RefusalScopeError("no prompts were given", "pass at least one prompt")
        if chat:
            return [self.encode(self.format(p, system)) for p in prompts]
        ids = []
        for p in prompts:
            if not isinstance(p, str):
                raise RefusalScopeError("raw (chat=False) input must be strings")
            ids.append(self.tokenizer(p, add_special_tokens=True)["input_ids"])
        return ids

    @property
    def eoi_ids(self) -> list[int]:
        """The template tokens between the end of the user's instruction and the reply.

        The refusal direction is read at these 'post-instruction' positions: the model has
        seen the whole request there but has not started answering.
        """
        if self._eoi_ids is None:
            text = self.format(_SENTINEL)
            suffix = text.split(_SENTINEL, 1)[1]
            self._eoi_ids = self.encode(suffix)
            probe = self.encode(self.format("Tell me about the sea."))
            if probe[-len(self._eoi_ids) :] != self._eoi_ids:
                raise RefusalScopeError(
                    "could not locate the post-instruction template tokens of this chat template",
                    "pass explicit negative positions (e.g. [-1]) instead of 'post_instruction'",
                )
        return self._eoi_ids

    # ------------------------------------------------------------------ batching
    def pad(self, sequences: Sequence[Sequence[int]], index: Sequence[int] | None = None) -> Batch:
        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if len(seq):
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
        return Batch(ids.to(self.device), mask.to(self.device), list(index or range(len(sequences))))

    def batches(self, token_lists: Sequence[Sequence[int]], batch_size: int, sort: bool = True) -> Iterator[Batch]:
        """Group sequences of similar length (longest first) to waste little on padding."""
        if batch_size < 1:
            raise RefusalScopeError(f"batch_size must be at least 1, got {batch_size}")
        order = (
            sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
            if sort
            else list(range(len(token_lists)))
        )
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield self.pad([token_lists[i] for i in chunk], chunk)

    def new_batch_id(self) -> int:
        """A fresh `ForwardContext.batch_id`: stateful hooks (gates, per-prompt state) reset
        when it changes, so every forward that starts new rows must take a new one."""
        return next(self._batch_counter)

    def _context(
        self, mask: torch.Tensor, prompt_lengths: torch.Tensor, past: int, rows: torch.Tensor, batch_id: int, phase: str
    ) -> ForwardContext:
        return ForwardContext(mask, prompt_lengths, past, rows, batch_id, phase)

    @contextlib.contextmanager
    def attached(self, interventions: Interventions) -> Iterator[None]:
        """Apply interventions (anything with `.hooks(model)`: one, a list, or None) to
        every forward inside the block; their hooks are removed on exit, also on errors.

        Prefer this to `hooks.attached(item.hooks(chat))`: it also records whether every
        attached item is `prefix_safe`, which is what lets generation and first-token
        logits compute a shared chat-template prefix once per batch (`shared_prefix`).
        `steering.steer` adds checks against the model and a spec on top of it.
        """
        if interventions is None:
            yield
            return
        hooks, tail = self._hooks_of(interventions)
        with self._attached_hooks(hooks, tail):
            yield

    def _hooks_of(self, interventions: Interventions) -> tuple[list[tuple[Point, HookFn]], int]:
        """The hooks of `interventions` (built once) and how many trailing prompt tokens a
        shared prefix must leave to them: 0 for position-wise edits, more for gated edits of
        the end of the prompt (`prefix_tail`), -1 when some item is not prefix-safe."""
        if interventions is None:
            return [], 0
        items: list[HasHooks] = (
            list(interventions) if isinstance(interventions, (list, tuple)) else [cast("HasHooks", interventions)]
        )
        hooks: list[tuple[Point, HookFn]] = []
        for item in items:
            hooks.extend(item.hooks(self))
        if not all(getattr(item, "prefix_safe", False) for item in items):
            return hooks, -1
        tails = [int(getattr(item, "prefix_tail", lambda model: 0)(self)) for item in items]
        return hooks, max(tails, default=0)

    @contextlib.contextmanager
    def _attached_hooks(self, hooks: list[tuple[Point, HookFn]], tail: int) -> Iterator[None]:
        previous, previous_tail = self._safe_hooks, self._prefix_tail
        self._safe_hooks = previous + len(hooks) if tail >= 0 and previous >= 0 else -1
        self._prefix_tail = max(previous_tail, tail)
        try:
            with self.hooks.attached(hooks):
                yield
        finally:
            self._safe_hooks, self._prefix_tail = previous, previous_tail

    def share_lower_layers(self, upto: int, max_bytes: int = 2**30) -> LayerMemo:
        """A context manager under which forwards with identical inputs compute decoder
        layers 0..`upto` once (`models.layer_memo`): for runs of several steering
        configurations over the same prompts whose hooks all sit at `upto` or above.

            with chat.share_lower_layers(14) as memo:
                for interventions in configurations:
                    chat.next_token_logits(prompts, interventions=interventions)
            print(memo.stats)

        Results are bit-identical to running every layer; forwards it cannot serve safely
        (a hook below `upto`, gradients on) run every layer as usual."""
        from .layer_memo import LayerMemo

        return LayerMemo(self.model, self.layers, self.hooks, upto, max_bytes)

    # ------------------------------------------------------------------ shared prefixes
    def shared_prefix(self, token_lists: Sequence[Sequence[int]]) -> int:
        """Length of the prefix every request shares, if computing it once is allowed.

        Chat templates put the same tokens in front of every request (Qwen's default
        system prompt is ~20 tokens, often as long as the request itself). Computing them
        once per batch and reusing their keys and values saves up to half of a prefill.
        It is exact (the attention core is invariant to where padding sits), and used
        only while every attached hook belongs to an item that declares itself
        `prefix_safe` (position-wise edits; gates whose edits stay out of the prefix); any
        other hook (captures, tests) turns it off. A gated edit of the end of the prompt
        (`Conditional.prefix_tail`) needs that many trailing tokens of every prompt left
        out of the prefix, which is computed unsteered.
        """
        if not self.share_prefix or len(token_lists) < 2 or self.hooks.active != max(self._safe_hooks, 0):
            return 0
        if self._safe_hooks < 0:
            return 0
        first = token_lists[0]
        limit = min(len(t) for t in token_lists) - max(1, self._prefix_tail)
        n = 0
        while n < limit and all(t[n] == first[n] for t in token_lists):
            n += 1
        return n if n >= self.min_shared_prefix else 0

    def prefill_cache(
        self, ids: Sequence[Sequence[int]] | torch.Tensor, ctx: ForwardContext | None = None
    ) -> DynamicCache:
        """The KV cache of `ids` ([R, P] token ids, every one real: no padding), computed in
        one forward with the hook context `ctx` (default: a fresh prefill context whose
        prompts are longer than `ids`, so hooks treat every token as a prompt token).

        The one place a shared prefix is prefilled: `ChatModel` computes the chat
        template's prefix once per batch with it (then repeats it per row), and direction
        selection once per candidate edit (one row each, `direction_scoring.py`)."""
        from transformers import DynamicCache

        tokens = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise RefusalScopeError(
                f"prefill_cache takes [rows, length] token ids, got shape {tuple(tokens.shape)}",
                "pass a non-empty list of equally long token lists",
            )
        mask = torch.ones_like(tokens)
        if ctx is None:
            rows, length = tokens.shape
            ctx = self._context(
                mask,
                torch.full((rows,), length + 1, device=self.device),
                0,
                torch.arange(rows, device=self.device),
                self.new_batch_id(),
                "prefill",
            )
        cache = DynamicCache(config=self.model.config)
        with self.hooks.forward_context(ctx):
            self.model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=mask.cumsum(-1) - 1,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return cache

    def _prefix_cache(self, prefix: Sequence[int], rows: int, batch_id: int) -> DynamicCache:
        """KV cache of `prefix`, computed once and repeated for `rows` rows."""
        ctx = self._context(
            torch.ones(1, len(prefix), dtype=torch.long, device=self.device),
            torch.tensor([len(prefix) + 1], device=self.device),
            0,
            torch.arange(1, device=self.device),
            batch_id,
            "prefill",
        )
        cache = self.prefill_cache([list(prefix)], ctx)
        cache.batch_repeat_interleave(rows)
        return cache

    def _prefill(
        self, batch: Batch, prefix_len: int, token_lists: Sequence[Sequence[int]], batch_id: int, rows: torch.Tensor
    ) -> tuple[Any, DynamicCache, torch.Tensor, torch.Tensor]:
        """Prompt forward of one batch, reusing a shared prefix when `prefix_len` > 0.

        Returns (output, cache, full attention mask, position ids of the last column)."""
        from transformers import DynamicCache

        if prefix_len == 0:
            cache = DynamicCache(config=self.model.config)
            ctx = self._context(batch.attention_mask, batch.lengths, 0, rows, batch_id, "prefill")
            with self.hooks.forward_context(ctx):
                out = self.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            return out, cache, batch.attention_mask, batch.position_ids[:, -1:]
        cache, suffix, mask, positions = self._prefix_and_suffix(batch, prefix_len, token_lists, batch_id)
        ctx = self._context(mask, mask.sum(-1), prefix_len, rows, batch_id, "prefill")
        out = self.forward_over_cache(suffix.input_ids, mask, positions, cache, ctx)
        return out, cache, mask, positions[:, -1:]

    def forward_over_cache(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        ctx: ForwardContext,
    ) -> Any:
        """One forward of suffix tokens on top of a prefilled KV cache (`prefill_cache`),
        hooks seeing `ctx`; the cache grows by the suffix and only the last position's
        logits are computed. `attention_mask` covers prefix + suffix."""
        with self.hooks.forward_context(ctx):
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )

    def _prefix_and_suffix(
        self, batch: Batch, prefix_len: int, token_lists: Sequence[Sequence[int]], batch_id: int
    ) -> tuple[DynamicCache, Batch, torch.Tensor, torch.Tensor]:
        """The shared prefix's cache (repeated per row) and the left-padded suffixes of a
        batch, with the full attention mask and the suffix tokens' position ids."""
        sequences = [token_lists[i] for i in batch.index]
        cache = self._prefix_cache(sequences[0][:prefix_len], len(sequences), batch_id)
        suffix = self.pad([seq[prefix_len:] for seq in sequences], batch.index)
        ones = torch.ones(len(sequences), prefix_len, dtype=torch.long, device=self.device)
        mask = torch.cat([ones, suffix.attention_mask], dim=1)
        positions = prefix_len + (suffix.attention_mask.cumsum(-1) - 1).clamp(min=0)
        return cache, suffix, mask, positions

    def _run_until_after_prefix(
        self, batch: Batch, prefix_len: int, token_lists: Sequence[Sequence[int]], points: Sequence[Point]
    ) -> tuple[dict[Point, torch.Tensor], torch.Tensor]:
        """`run_until` over the suffixes of a batch after its shared prefix (computed once,
        before the captures are attached); returns the captures ([B, T_suffix, d]) and the
        suffixes' attention mask."""
        batch_id = self.new_batch_id()
        cache, suffix, mask, positions = self._prefix_and_suffix(batch, prefix_len, token_lists, batch_id)
        rows = torch.arange(len(batch.index), device=self.device)
        ctx = self._context(mask, mask.sum(-1), prefix_len, rows, batch_id, "forward")

        def forward() -> None:
            self.forward_over_cache(suffix.input_ids, mask, positions, cache, ctx)

        return self.hooks.run_until(points, forward), suffix.attention_mask

    def _positions_needed(self, positions: CapturePositions) -> int | None:
        """How many trailing tokens a capture at `positions` reads (None: all, or invalid)."""
        if positions == "last":
            return 1
        if positions in ("post_instruction", "eoi"):
            return len(self.eoi_ids)
        if isinstance(positions, str):
            return None
        offsets = list(positions)
        if not offsets or any(not isinstance(o, int) or o >= 0 for o in offsets):
            return None
        return -min(offsets)

    # ------------------------------------------------------------------ forward passes
    def forward(self, batch: Batch, phase: str = "forward", **kwargs: Any) -> Any:
        """One forward pass over a padded batch, with a hook context set up."""
        ctx = self._context(
            batch.attention_mask,
            batch.lengths,
            0,
            torch.arange(len(batch.index), device=self.device),
            self.new_batch_id(),
            phase,
        )
        with self.hooks.forward_context(ctx):
            return self.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
                **kwargs,
            )

    def run_until(self, batch: Batch, points: Sequence[Point], **kwargs: Any) -> dict[Point, torch.Tensor]:
        """Forward `batch` only as far as the deepest of `points` (layer indices or 'embed')
        and return {point: [B, T, d] hidden state} there, after any attached interventions.

        Grad mode is the caller's: under `torch.enable_grad()` the captures are part of the
        graph (attribution); the blocks above the deepest point never run.
        """
        return self.hooks.run_until(points, lambda: self.forward(batch, **kwargs))

    @torch.no_grad()
    def next_token_logits(
        self,
        prompts: Sequence[Prompt],
        batch_size: int = 16,
        system: str | None = None,
        interventions: Interventions = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """[N, vocab] float32 logits for the first token of the reply to each prompt."""
        tokens = self.encode_prompts(prompts, system)
        out = torch.empty(len(tokens), self.unembed.weight.shape[0], dtype=torch.float32)
        with self.attached(interventions):
            shared = self.shared_prefix(tokens)
            for batch in tqdm(list(self.batches(tokens, batch_size)), disable=not progress, desc="first-token logits"):
                rows = torch.arange(len(batch.index), device=self.device)
                output, _, _, _ = self._prefill(batch, shared, tokens, self.new_batch_id(), rows)
                out[batch.index] = output.logits[:, -1].float().cpu()
        return out

    # ------------------------------------------------------------------ generation
    def stop_ids(self) -> set[int]:
        ids: set[int] = set()
        config_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (config_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        return ids

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        max_new_tokens: int = 64,
        batch_size: int = 8,
        *,
        system: str | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        interventions: Interventions = None,
        stop_at_eos: bool = True,
        progress: bool = True,
        on_token: Callable[[int, int], None] | None = None,
    ) -> Generation:
        """Reply to each prompt; greedy unless `do_sample`.

        Rows leave the batch as soon as they emit an end-of-turn token, so short replies
        (refusals, typically) free their compute for the rest. Sampling uses one seeded
        generator per prompt, so sampled replies do not depend on batching either.
        `on_token(prompt_index, token_id)`, if given, is called for every reply token as
        soon as it is chosen (streaming); end-of-turn tokens are not passed.
        """
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
            prompts = [cast(Prompt, prompts)]
        prompts = list(cast("Sequence[Prompt]", prompts))
        if max_new_tokens < 1:
            raise RefusalScopeError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise RefusalScopeError("temperature must be positive when sampling", "use do_sample=False for greedy")
        tokens = self.encode_prompts(prompts, system)
        stop = torch.tensor(sorted(self.stop_ids()) if stop_at_eos else [], dtype=torch.long, device=self.device)
        results: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        started = time.perf_counter()
        bar = tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress)
        produced = 0
        with self.attached(interventions):
            shared = self.shared_prefix(tokens)
            for batch in self.batches(tokens, batch_size):
                produced += self._generate_batch(
                    batch,
                    max_new_tokens,
                    stop,
                    results,
                    reasons,
                    do_sample,
                    temperature,
                    top_p,
                    seed,
                    on_token,
                    shared,
                    tokens,
                )
                bar.update(len(batch.index))
                bar.set_postfix(tok_s=f"{produced / max(time.perf_counter() - started, 1e-9):.1f}")
        bar.close()
        texts = [self.decode(ids, skip_special_tokens=True) for ids in results]
        return Generation(
            prompts=prompts,
            texts=texts,
            token_ids=results,
            finish_reasons=reasons,
            prompt_lengths=[len(t) for t in tokens],
            settings={
                "max_new_tokens": max_new_tokens,
                "do_sample": do_sample,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "system": system,
                "stop_at_eos": stop_at_eos,
            },
            seconds=time.perf_counter() - started,
        )

    def _pick(
        self,
        logits: torch.Tensor,
        rows: torch.Tensor,
        generators: list[torch.Generator] | None,
        do_sample: bool,
        temperature: float,
        top_p: float,
    ) -> torch.Tensor:
        logits = logits.float()
        if not do_sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = probs.sort(-1, descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        assert generators is not None  # sampling always builds them
        picks = [torch.multinomial(probs[i], 1, generator=generators[int(r)]) for i, r in enumerate(rows)]
        return torch.cat(picks)

    def _generate_batch(
        self,
        batch: Batch,
        max_new_tokens: int,
        stop: torch.Tensor,
        results: list[list[int]],
        reasons: list[str],
        do_sample: bool,
        temperature: float,
        top_p: float,
        seed: int,
        on_token: Callable[[int, int], None] | None,
        shared: int,
        token_lists: Sequence[Sequence[int]],
    ) -> int:
        rows = torch.arange(len(batch.index), device=self.device)
        batch_id = self.new_batch_id()
        generators = None
        if do_sample:
            generators = [torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + i) for i in batch.index]
        out, cache, mask, positions = self._prefill(batch, shared, token_lists, batch_id, rows)
        return self._decode(
            out.logits[:, -1],
            cache,
            mask,
            positions,
            batch.index,
            batch_id,
            max_new_tokens,
            stop,
            results,
            reasons,
            lambda logits, rows: self._pick(logits, rows, generators, do_sample, temperature, top_p),
            on_token,
        )

    def _decode(
        self,
        first: torch.Tensor,
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        index: Sequence[int],
        batch_id: int,
        max_new_tokens: int,
        stop: torch.Tensor,
        results: list[list[int]],
        reasons: list[str],
        pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        on_token: Callable[[int, int], None] | None = None,
    ) -> int:
        """Decode after a prefill: `first` [B, vocab] logits of the prompts' last tokens,
        row r's reply goes to results[index[r]]. Rows leave the batch at an end token."""
        rows = torch.arange(len(index), device=self.device)
        prompt_lengths = mask.sum(-1)
        produced = 0
        past = mask.shape[1]
        logits = first
        for step in range(max_new_tokens):
            nxt = pick(logits, rows)
            done = torch.isin(nxt, stop)
            for i, r in enumerate(rows.tolist()):
                original = index[r]
                if done[i]:
                    reasons[original] = "eos"
                else:
                    results[original].append(int(nxt[i]))
                    produced += 1
                    if on_token is not None:
                        on_token(original, int(nxt[i]))
            if step == max_new_tokens - 1:
                break
            if done.any():
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)
                mask, prompt_lengths, positions, rows, nxt = (
                    mask[keep],
                    prompt_lengths[keep],
                    positions[keep],
                    rows[keep],
                    nxt[keep],
                )
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            ctx = self._context(mask, prompt_lengths, past, rows, batch_id, "decode")
            with self.hooks.forward_context(ctx):
                logits = self.model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                ).logits[:, -1]
            past += 1
        return produced

    @torch.no_grad()
    def generate_each(
        self,
        prompts: Sequence[Prompt],
        configurations: Sequence[Interventions],
        max_new_tokens: int = 64,
        batch_size: int = 64,
        *,
        system: str | None = None,
        stop_at_eos: bool = True,
    ) -> list[Generation]:
        """Greedy replies to `prompts` under each of `configurations` (each what
        `interventions=` takes: one intervention, a list, a Steering, or None), as if
        `generate` were called once per configuration, but decoded together.

        A sweep asks for a few replies per configuration (example replies, checks of the
        first-token judge, or every reply when that judge is not used); decoded one
        configuration at a time that is batch 1-16, where a 2-core CPU spends a decode
        step mostly reading the weights. Here each group of prompts is prefilled once per
        configuration, exactly as `generate` does it (with the chat template's shared
        prefix and, inside `share_lower_layers`, the shared lower layers), and then the
        rows of every configuration, up to `batch_size` in all, decode in one batch: the
        caches are joined (left-padded to one width) and each configuration's hooks see
        only their own rows, in the context of their own prefill (so gates keep their
        decisions). The replies equal `generate`'s (tested).
        """
        prompts = list(prompts)
        if max_new_tokens < 1:
            raise RefusalScopeError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        configurations = list(configurations)
        if not configurations:
            return []
        tokens = self.encode_prompts(prompts, system)
        n, n_cfg = len(tokens), len(configurations)
        built = [self._hooks_of(x) for x in configurations]
        stop = torch.tensor(sorted(self.stop_ids()) if stop_at_eos else [], dtype=torch.long, device=self.device)
        results: list[list[int]] = [[] for _ in range(n * n_cfg)]
        reasons = ["length"] * (n * n_cfg)
        started = time.perf_counter()
        for batch in self.batches(tokens, max(1, batch_size // n_cfg)):
            parts = []
            for hooks, tail in built:
                batch_id = self.new_batch_id()
                rows = torch.arange(len(batch.index), device=self.device)
                with self._attached_hooks(hooks, tail):
                    out, cache, mask, positions = self._prefill(
                        batch, self.shared_prefix(tokens), tokens, batch_id, rows
                    )
                parts.append((out.logits[:, -1], cache, mask, positions, batch_id))
            first, cache, mask, positions = _join_prefills([p[:4] for p in parts], self.model.config)
            size = len(batch.index)
            config_of = torch.arange(n_cfg, device=self.device).repeat_interleave(size)
            local_of = torch.arange(size, device=self.device).repeat(n_cfg)
            index = [c * n + i for c in range(n_cfg) for i in batch.index]
            decode_hooks = [
                (point, _own_rows(fn, c, config_of, local_of, parts[c][4]))
                for c, (hooks, _) in enumerate(built)
                for point, fn in hooks
            ]
            with self.hooks.attached(decode_hooks):
                self._decode(
                    first,
                    cache,
                    mask,
                    positions,
                    index,
                    self.new_batch_id(),
                    max_new_tokens,
                    stop,
                    results,
                    reasons,
                    lambda logits, rows: logits.float().argmax(-1),
                )
        seconds = time.perf_counter() - started
        settings = {"max_new_tokens": max_new_tokens, "do_sample": False, "system": system, "stop_at_eos": stop_at_eos}
        out_gens = []
        for c in range(n_cfg):
            ids = results[c * n : (c + 1) * n]
            out_gens.append(
                Generation(
                    prompts=list(prompts),
                    texts=[self.decode(t, skip_special_tokens=True) for t in ids],
                    token_ids=ids,
                    finish_reasons=reasons[c * n : (c + 1) * n],
                    prompt_lengths=[len(t) for t in tokens],
                    settings=dict(settings),
                    seconds=seconds,
                )
            )
        return out_gens

    # ------------------------------------------------------------------ residual stream
    def _select(
        self, hidden: torch.Tensor, mask: torch.Tensor, positions: CapturePositions
    ) -> torch.Tensor | list[torch.Tensor]:
        if positions == "all":
            return [hidden[i, mask[i].bool()] for i in range(hidden.shape[0])]
        if positions == "last":
            return hidden[:, -1]
        if positions in ("post_instruction", "eoi"):
            n = len(self.eoi_ids)
            return hidden[:, -n:]
        if isinstance(positions, str):
            raise RefusalScopeError(
                f"unknown positions '{positions}'",
                "use 'all', 'last', 'post_instruction', or a list of negative offsets such as [-1, -2]",
            )
        offsets = list(positions)
        if any(o >= 0 for o in offsets):
            raise RefusalScopeError(
                f"explicit positions must be negative offsets from the end, got {offsets}",
                "use e.g. [-1] for the last token",
            )
        shortest = int(mask.sum(-1).min())
        if -min(offsets) > shortest:
            raise RefusalScopeError(f"position {min(offsets)} is before the start of a {shortest}-token prompt")
        return hidden[:, offsets]

    @torch.no_grad()
    def iter_residual(
        self,
        prompts: Sequence[Prompt] | None,
        layers: Sequence[Point],
        positions: CapturePositions = "last",
        batch_size: int = 16,
        *,
        system: str | None = None,
        chat: bool = True,
        interventions: Interventions = None,
        progress: bool = True,
        token_lists: Sequence[Sequence[int]] | None = None,
    ) -> Iterator[tuple[list[int], dict[Point, Any]]]:
        """Yield (prompt indices, {layer: activations}) one batch at a time.

        The forward stops right after the deepest requested layer: capturing layer 6 of a
        24-layer model costs a quarter of a forward pass, and the unembedding is skipped.
        When only trailing positions are read ('last', 'post_instruction', negative
        offsets) and every attached intervention is prefix-safe, the chat template's shared
        prefix is computed once per batch (`shared_prefix`; the same activations).
        """
        layers = list(layers)
        if not layers:
            raise RefusalScopeError("no layers were requested", f"pass layers in [0, {self.n_layers - 1}] or 'embed'")
        for layer in layers:
            self.hooks.module(layer)  # validates
        if token_lists is None and prompts is None:
            raise RefusalScopeError("no prompts were given", "pass prompts, or token_lists of already encoded ones")
        tokens = (
            token_lists
            if token_lists is not None
            else self.encode_prompts(cast("Sequence[Prompt]", prompts), system, chat=chat)
        )
        bar = tqdm(total=len(tokens), desc="residual", unit="prompt", disable=not progress)
        needed = self._positions_needed(positions)
        with self.attached(interventions):
            shared = self.shared_prefix(tokens) if needed is not None else 0
            for batch in self.batches(tokens, batch_size):
                suffixes = [len(tokens[i]) - shared for i in batch.index]
                if shared and needed is not None and needed <= min(suffixes):
                    # the positions read all lie after the template's shared prefix: compute it once
                    captured, mask = self._run_until_after_prefix(batch, shared, tokens, layers)
                else:
                    captured, mask = self.run_until(batch, layers), batch.attention_mask
                selected: dict[Point, Any] = {}
                for point in layers:
                    picked = self._select(captured[point], mask, positions)
                    if isinstance(picked, list):
                        selected[point] = [p.float().cpu() for p in picked]
                    else:
                        selected[point] = picked.float().cpu()
                bar.update(len(batch.index))
                yield batch.index, selected
        bar.close()

    def residual(
        self,
        prompts: Sequence[Prompt],
        layers: Sequence[Point],
        positions: CapturePositions = "last",
        batch_size: int = 16,
        **kwargs: Any,
    ) -> dict[Point, Any]:
        """Residual activations (float32, CPU) after the given blocks, in prompt order.

        Returns {layer: tensor}: [N, d] for 'last', [N, P, d] for 'post_instruction' or an
        explicit offset list, and a list of [T_i, d] tensors (padding removed) for 'all'.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out: dict[Point, Any] = {}
        for index, chunk in self.iter_residual(prompts, layers, positions, batch_size, **kwargs):
            for point, value in chunk.items():
                if isinstance(value, list):
                    store = out.setdefault(point, [None] * len(prompts))
                    for i, v in zip(index, value):
                        store[i] = v
                else:
                    if point not in out:
                        out[point] = torch.empty((len(prompts), *value.shape[1:]), dtype=value.dtype)
                    out[point][index] = value
        return out


def _join_prefills(
    parts: Sequence[tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]], config: Any
) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
    """One batch from several prefills (first logits, cache, attention mask, last position
    ids each): caches and masks left-padded with masked zeros to the widest, rows in order."""
    from transformers import DynamicCache

    width = max(mask.shape[1] for _, _, mask, _ in parts)

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - t.shape[dim]
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    joined = DynamicCache(config=config)
    for layer in range(len(parts[0][1].layers)):
        stored = [cast(Any, p[1].layers[layer]) for p in parts]
        keys = torch.cat([pad(s.keys, 2) for s in stored])
        values = torch.cat([pad(s.values, 2) for s in stored])
        joined.update(keys, values, layer)
    first = torch.cat([p[0] for p in parts])
    mask = torch.cat([pad(p[2], 1) for p in parts])
    positions = torch.cat([p[3] for p in parts])
    return first, joined, mask, positions


def _own_rows(fn: HookFn, config: int, config_of: torch.Tensor, local_of: torch.Tensor, batch_id: int) -> HookFn:
    """`fn` applied to the rows of one configuration only, in the context of its own prefill
    (its rows numbered as they were there, its batch id), as if decoding alone."""

    def run(hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor | None:
        own = (config_of[ctx.rows] == config).nonzero().squeeze(-1)
        if own.numel() == 0:
            return None
        sub = ForwardContext(
            ctx.attention_mask[own],
            ctx.prompt_lengths[own],
            ctx.past_length,
            local_of[ctx.rows[own]],
            batch_id,
            ctx.phase,
        )
        new = fn(hidden[own], sub)
        if new is None:
            return None
        out = hidden.clone()
        out[own] = new
        return out

    return run
