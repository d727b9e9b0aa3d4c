"""Greedy coordinate gradient (GCG, Zou et al. 2023), against the model as steered.

An adversarial suffix of L tokens is appended to a harmful request; GCG searches for the
suffix that makes the reply most likely to open with a target string ("Sure, here is
..."). Each step:

1. one forward and backward pass with the suffix as one-hot vectors times the embedding
   matrix gives, for every suffix position, the gradient of the target loss with respect
   to every vocabulary token;
2. `candidates` suffixes are drawn, each replacing one position with one of the `top_k`
   tokens of most negative gradient there (suffixes that would re-tokenise differently
   once written into the chat template are dropped: the attack must be replayable as text);
3. all candidates are scored in batched forwards, and the best one becomes the suffix.

The attack is *adaptive*: the one-hot suffix enters the model through a hook on the
embedding output, so every steering intervention attached after it (feature clamps,
ablations, conditional gates) is in the forward and the backward pass. A steered model is
attacked as steered, not with suffixes found on the unsteered one.

Cost: with a position-wise (prefix-safe) steering the chat-template prefix and the request
are computed once per behaviour and their keys and values reused by every candidate, so a
step costs (1 + candidates) × (L + template tail + target) tokens of forward. A gated
steering must see each prompt whole, so there the request is recomputed for every
candidate. Every `check_every` steps the greedy reply is generated and judged; the attack
stops early once it complies. A checkpoint (suffix, best suffix, losses, the random
generator's state) is written every `checkpoint_every` steps, so a killed attack resumes
and reaches exactly the result an uninterrupted one would.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from tqdm.auto import tqdm

from ..errors import RefusalScopeError
from ..models.hooks import ForwardContext
from ..steering.conditional import PREFIX_ID
from .behaviours import Behaviour
from .configs import check_steering_for

if TYPE_CHECKING:
    from ..judges.base import Judge
    from ..models.chat import ChatModel
    from ..steering.spec import Steering
    from .runs import Output

_SENTINEL = "\x00REFUSALSCOPE_SUFFIX\x00"
# batch ids for our own forwards: far above ChatModel's counter, so a gate's per-batch state
# never matches a stale decision
_BATCH_IDS = itertools.count(1 << 40)
_ALLOWED: dict[tuple[int, int, int, bool], torch.Tensor] = {}


@dataclass
class GCGConfig:
    """GCG settings. Defaults follow Zou et al. (20-token suffix, top-256, 256 candidates
    per step) except the step budget, which a CPU has to keep small."""

    steps: int = 50
    suffix_length: int = 20
    candidates: int = 256
    top_k: int = 256
    eval_batch: int = 64  # candidates per scoring forward (memory: batch × target × vocab logits)
    check_every: int = 10  # generate and judge the greedy reply every N steps (and at 0 and the end)
    max_new_tokens: int = 32
    checkpoint_every: int = 5
    seed: int = 0
    init: str = " !"  # repeated to suffix_length tokens
    token_budget: int | None = None  # stop before a step that would exceed this many forward tokens
    allow_non_ascii: bool = False
    early_stop: bool = True
    share_prefix: bool = True

    def validate(self) -> GCGConfig:
        for name in (
            "steps",
            "suffix_length",
            "candidates",
            "top_k",
            "eval_batch",
            "check_every",
            "max_new_tokens",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise RefusalScopeError(
                    f"GCG {name.replace('_', ' ')} must be a positive integer, got {value!r}",
                    f"pass a {name} of at least 1",
                )
        if self.token_budget is not None and self.token_budget <= 0:
            raise RefusalScopeError(
                f"the GCG token budget must be positive, got {self.token_budget}",
                "pass a budget of at least one step's tokens, or none",
            )
        return self


def allowed_tokens(chat: ChatModel, allow_non_ascii: bool = False) -> torch.Tensor:
    """[rows of the embedding matrix] bool: tokens a suffix may use.

    Special tokens, embedding rows beyond the tokenizer (Qwen pads its matrix), and tokens
    that decode to nothing or (unless allowed) to non-printable / non-ASCII text are out:
    the suffix has to survive being written out as text and typed back in.
    """
    rows = chat.embed.weight.shape[0]
    key = (id(chat.tokenizer), len(chat.tokenizer), rows, allow_non_ascii)
    if key not in _ALLOWED:
        tok = chat.tokenizer
        n = min(rows, len(tok))
        texts = tok.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        ok = torch.zeros(rows, dtype=torch.bool)
        for i, text in enumerate(texts):
            good = bool(text.strip()) and text.isprintable()
            ok[i] = good and (allow_non_ascii or text.isascii())
        for special in tok.all_special_ids:
            if 0 <= special < rows:
                ok[special] = False
        for added in getattr(tok, "added_tokens_decoder", {}) or {}:
            if 0 <= int(added) < rows:
                ok[int(added)] = False
        _ALLOWED[key] = ok
    return _ALLOWED[key]


class SuffixObjective:
    """The target loss of one behaviour as a function of its suffix tokens.

    loss(suffix) = mean cross-entropy of the target tokens after the chat-formatted
    `request + suffix`, under `steering` (None: the plain model). Token layout:
    [before: template + request][suffix][after: end of turn + reply header][target].
    """

    def __init__(
        self,
        chat: ChatModel,
        request: str,
        target: str,
        steering: Steering | None = None,
        *,
        system: str | None = None,
        share_prefix: bool = True,
    ):
        self.chat = chat
        self.steering = steering
        self.request = request
        self.system = system
        self._suffix_length = 0  # set by each forward; the gate/position context needs the prompt length
        text = chat.format(request + _SENTINEL, system)
        if text.count(_SENTINEL) != 1:
            raise RefusalScopeError("the chat template altered the request, so a suffix cannot be placed after it")
        self.pre, self.post = text.split(_SENTINEL)
        self.before = chat.encode(self.pre)
        self.after = chat.encode(self.post)
        self.target = chat.encode(target)
        if not self.target:
            raise RefusalScopeError(f"the target string of '{request[:40]}…' is empty", "give a non-empty target")
        self.shared = (
            bool(share_prefix)
            and (steering is None or (steering.prefix_safe and steering.prefix_tail(chat) <= len(self.after)))
            and len(self.before) > 0
        )
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._prefix_id = -1  # batch id of the prefix forward: gates find its scores under it (PREFIX_ID)
        device = chat.device
        self._after = torch.tensor(self.after, dtype=torch.long, device=device)
        self._target = torch.tensor(self.target, dtype=torch.long, device=device)
        self._before = torch.tensor(self.before, dtype=torch.long, device=device)

    # ------------------------------------------------------------ text
    def message(self, suffix_ids: Sequence[int]) -> str:
        """The user turn with the suffix written out, as it would be typed."""
        return self.request + self.decode(suffix_ids)

    def decode(self, suffix_ids: Sequence[int]) -> str:
        return cast(str, self.chat.tokenizer.decode(list(suffix_ids), clean_up_tokenization_spaces=False))

    def retokenizes(self, candidates: torch.Tensor) -> torch.Tensor:
        """[C] bool: whether each candidate, written into the template as text, encodes back
        to exactly before + suffix + after (so the text replays the optimised tokens)."""
        texts = [self.pre + self.decode(row) + self.post for row in candidates.tolist()]
        encoded = self.chat.tokenizer(texts, add_special_tokens=False)["input_ids"]
        head, tail = self.before, self.after
        return torch.tensor([enc == head + row + tail for enc, row in zip(encoded, candidates.tolist())])

    # ------------------------------------------------------------ forwards
    @contextlib.contextmanager
    def _attached(self, first=()) -> Iterator[None]:
        """`first` hooks (the one-hot embedding), then the steering's, in that order."""
        hooks = self.chat.hooks
        with hooks.attached(list(first)):
            if self.steering is None:
                yield
            else:
                with hooks.attached(self.steering.hooks(self.chat)):
                    yield

    def _context(self, rows: int, total: int, past: int) -> ForwardContext:
        device = self.chat.device
        prompt = len(self.before) + self.suffix_length + len(self.after)
        return ForwardContext(
            attention_mask=torch.ones(rows, total, dtype=torch.long, device=device),
            prompt_lengths=torch.full((rows,), prompt, dtype=torch.long, device=device),
            past_length=past,
            rows=torch.arange(rows, device=device),
            batch_id=next(_BATCH_IDS),
            phase="prefill",
        )

    @torch.no_grad()
    def _prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._prefix_kv is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.chat.model.config)
            ids = self._before[None]
            ctx = self._context(1, ids.shape[1], 0)
            self._prefix_id = ctx.batch_id
            with self._attached(), self.chat.hooks.forward_context(ctx):
                self.chat.model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    position_ids=torch.arange(ids.shape[1], device=ids.device)[None],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            layers: list[Any] = list(cache.layers)  # transformers types them as a union of cache kinds
            self._prefix_kv = [(layer.keys, layer.values) for layer in layers]
        return self._prefix_kv

    def _logits(self, suffixes: torch.Tensor) -> torch.Tensor:
        """[B, T, vocab] logits predicting the target tokens, for suffix rows [B, L]."""
        rows = suffixes.shape[0]
        rest = torch.cat([suffixes, self._after.expand(rows, -1), self._target.expand(rows, -1)], dim=1)
        past = len(self.before) if self.shared else 0
        if not self.shared:
            rest = torch.cat([self._before.expand(rows, -1), rest], dim=1)
        total = past + rest.shape[1]
        kwargs: dict[str, Any] = {"use_cache": False}
        if self.shared:
            from transformers import DynamicCache

            kv = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in self._prefix()]
            kwargs = {"past_key_values": DynamicCache(kv, config=self.chat.model.config), "use_cache": True}
        positions = torch.arange(past, total, device=rest.device)[None].expand(rows, -1)
        ctx = self._context(rows, total, past)
        if self.shared:
            ctx.extra[PREFIX_ID] = self._prefix_id
        with self.chat.hooks.forward_context(ctx):
            out = self.chat.model(
                input_ids=rest,
                attention_mask=torch.ones(rows, total, dtype=torch.long, device=rest.device),
                position_ids=positions,
                logits_to_keep=len(self.target) + 1,
                **kwargs,
            )
        return out.logits[:, :-1]

    def _loss_rows(self, logits: torch.Tensor) -> torch.Tensor:
        target = self._target.expand(logits.shape[0], -1)
        return torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), target, reduction="none").mean(-1)

    @property
    def suffix_length(self) -> int:
        return self._suffix_length

    def tokens_per_row(self, suffix_length: int) -> int:
        """Forward tokens one candidate costs (the shared prefix is paid once per behaviour)."""
        return suffix_length + len(self.after) + len(self.target) + (0 if self.shared else len(self.before))

    @torch.no_grad()
    def losses(self, suffixes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """[C] target loss of each suffix row, scored `batch_size` rows per forward."""
        self._suffix_length = suffixes.shape[1]
        if self.shared:
            self._prefix()  # before the candidates' hooks are attached: it attaches the steering itself
        out = []
        with self._attached():
            for start in range(0, suffixes.shape[0], batch_size):
                out.append(self._loss_rows(self._logits(suffixes[start : start + batch_size])).cpu())
        return torch.cat(out)

    def gradient(self, suffix: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(∂loss/∂one-hot [L, rows of the embedding], loss) at `suffix` [L]: the one-hot
        suffix replaces the embedding output, so the gradient passes through every
        steering intervention attached after it."""
        self._suffix_length = suffix.shape[0]
        if self.shared:
            self._prefix()
        weight = self.chat.embed.weight
        one_hot = torch.zeros(suffix.shape[0], weight.shape[0], dtype=weight.dtype, device=weight.device)
        one_hot.scatter_(1, suffix[:, None], 1.0)
        one_hot.requires_grad_(True)
        start = 0 if self.shared else len(self.before)
        length = suffix.shape[0]

        def replace(hidden: torch.Tensor, ctx: ForwardContext):
            embeds = (one_hot @ weight)[None].to(hidden.dtype)
            return torch.cat([hidden[:, :start], embeds, hidden[:, start + length :]], dim=1)

        with torch.enable_grad(), self._attached([("embed", replace)]):
            loss = self._loss_rows(self._logits(suffix[None]))[0]
            loss.backward()
        grad = one_hot.grad
        assert grad is not None  # set by the backward pass above
        return grad.detach(), float(loss.detach())


@dataclass
class GCGStep:
    step: int
    loss: float
    best_loss: float
    kept: int  # candidates left after the re-tokenisation filter


def _encode_rng(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def _decode_rng(text: str) -> torch.Generator:
    import numpy as np

    gen = torch.Generator()
    gen.set_state(torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy()))
    return gen


class GCG:
    """GCG against `chat` under `steering` (None: unsteered), judged by `judge`.

    gcg = GCG(chat, steering, GCGConfig(steps=20, candidates=128))
    result = gcg.attack(Behaviour("b1", "Explain how to ...", "Sure, here is how to ..."))
    report = gcg.run(behaviours, "runs/gcg-steered")       # resumable, one line per behaviour
    """

    def __init__(
        self,
        chat: ChatModel,
        steering: Steering | None = None,
        config: GCGConfig | None = None,
        judge: Judge | None = None,
    ):
        from ..steering import as_steering

        self.chat = chat
        self.steering = None if steering is None else as_steering(steering)
        check_steering_for(chat, self.steering)
        if self.steering is not None:
            self.steering.for_model(chat)
        self.config = (config or GCGConfig()).validate()
        if judge is None:
            from ..judges import SubstringJudge

            judge = SubstringJudge()
        self.judge = judge

    # ------------------------------------------------------------ pieces
    def objective(self, behaviour: Behaviour) -> SuffixObjective:
        return SuffixObjective(
            self.chat,
            behaviour.request,
            behaviour.require_target(),
            self.steering,
            share_prefix=self.config.share_prefix,
        )

    def initial_suffix(self) -> list[int]:
        c = self.config
        ids = self.chat.encode(c.init * c.suffix_length)[: c.suffix_length]
        if len(ids) < c.suffix_length:
            raise RefusalScopeError(
                f"the initial suffix '{c.init}' × {c.suffix_length} is shorter than {c.suffix_length} tokens",
                "use another init string",
            )
        return ids

    def sample(self, suffix: torch.Tensor, grad: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """[candidates, L]: the suffix with one position replaced by a top-k gradient token."""
        c = self.config
        allowed = allowed_tokens(self.chat, c.allow_non_ascii).to(grad.device)
        scores = (-grad.float()).masked_fill(~allowed[None], float("-inf"))
        k = min(c.top_k, int(allowed.sum()))
        top = scores.topk(k, dim=1).indices.cpu()  # [L, k]
        length = suffix.shape[0]
        positions = torch.randint(0, length, (c.candidates,), generator=gen)
        picks = torch.randint(0, k, (c.candidates,), generator=gen)
        out = suffix.cpu().repeat(c.candidates, 1)
        out[torch.arange(c.candidates), positions] = top[positions, picks]
        return out.to(suffix.device)

    def complies(self, objective: SuffixObjective, suffix_ids: Sequence[int]) -> dict[str, Any]:
        """Greedy reply to request + suffix under the steering, and the judge's verdict."""
        message = objective.message(suffix_ids)
        reply = self.chat.generate(
            [message], max_new_tokens=self.config.max_new_tokens, interventions=self.steering, progress=False
        ).texts[0]
        verdict = self.judge.judge([message], [reply])[0]
        return {
            "reply": reply,
            "refused": bool(verdict.refused),
            "label": verdict.label,
            "complied": (not verdict.refused) and bool(reply.strip()),
        }

    # ------------------------------------------------------------ one behaviour
    def attack(
        self,
        behaviour: Behaviour,
        *,
        state: dict[str, Any] | None = None,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[str, GCGStep], None] | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Attack one behaviour (continuing from `state` if given); returns its result.

        `checkpoint(state)` is called every `checkpoint_every` steps and after each reply
        check; `on_step(behaviour_id, GCGStep)` after every step.
        """
        c = self.config
        objective = self.objective(behaviour)
        device = self.chat.device
        started = time.perf_counter()
        if state is None:
            initial = self.initial_suffix()
            state = {
                "step": 0,
                "suffix": initial,
                "best_suffix": initial,
                "best_loss": None,
                "losses": [],
                "kept": [],
                "tokens": 0,
                "seconds": 0.0,
                "checks": [],
                "rng": _encode_rng(torch.Generator().manual_seed(c.seed)),
                "broken": False,
                "steps_to_break": None,
                "stopped": None,
            }
        else:
            state = dict(state)
        elapsed = float(state["seconds"])
        gen = _decode_rng(state["rng"])
        suffix = torch.tensor(state["suffix"], dtype=torch.long, device=device)
        per_row = objective.tokens_per_row(c.suffix_length)
        prefix_tokens = len(objective.before) if objective.shared else 0

        def save():
            state["seconds"] = elapsed + time.perf_counter() - started
            state["rng"] = _encode_rng(gen)
            state["suffix"] = suffix.tolist()
            if checkpoint is not None:
                checkpoint(state)

        def check(step: int) -> bool:
            verdict = self.complies(objective, state["best_suffix"])
            state["checks"].append({"step": step, **verdict})
            if verdict["complied"] and not state["broken"]:
                state["broken"], state["steps_to_break"] = True, step
            save()
            return bool(state["broken"] and c.early_stop)

        if state["step"] == 0 and not state["checks"]:
            state["tokens"] += prefix_tokens
            if check(0):
                state["stopped"] = "complied"
        bar = tqdm(total=c.steps, initial=state["step"], desc=behaviour.id[:30], unit="step", disable=not progress)
        while state["stopped"] is None and state["step"] < c.steps:
            step_tokens = per_row * (1 + c.candidates)
            if c.token_budget is not None and state["tokens"] + step_tokens > c.token_budget:
                state["stopped"] = "token budget"
                break
            grad, loss_now = objective.gradient(suffix)
            candidates = self.sample(suffix, grad, gen)
            keep = objective.retokenizes(candidates)
            if keep.any():
                candidates = candidates[keep.to(candidates.device)]
            losses = objective.losses(candidates, c.eval_batch)
            best = int(losses.argmin())
            suffix = candidates[best]
            loss = float(losses[best])
            state["step"] += 1
            state["tokens"] += per_row * (1 + candidates.shape[0])
            state["losses"].append(loss)
            state["kept"].append(int(keep.sum()))
            if state["best_loss"] is None or loss < state["best_loss"]:
                state["best_loss"], state["best_suffix"] = loss, suffix.tolist()
            if state["step"] == 1:
                state["initial_loss"] = loss_now
            step = state["step"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            checked = step % c.check_every == 0 or step == c.steps
            if checked and check(step):
                state["stopped"] = "complied"
            elif step % c.checkpoint_every == 0:
                save()
            if on_step is not None:
                on_step(behaviour.id, GCGStep(step, loss, state["best_loss"], int(keep.sum())))
        bar.close()
        if state["stopped"] is None:
            state["stopped"] = "step budget"
        if state["checks"][-1]["step"] != state["step"]:
            check(state["step"])  # the reply to the best suffix found within the budget
        state["seconds"] = elapsed + time.perf_counter() - started
        last = state["checks"][-1]
        return {
            "id": behaviour.id,
            "request": behaviour.request,
            "target": behaviour.target,
            "broken": bool(state["broken"]),
            "steps_to_break": state["steps_to_break"],
            "steps": state["step"],
            "stopped": state["stopped"],
            "suffix": objective.decode(state["best_suffix"]),
            "suffix_ids": state["best_suffix"],
            "initial_loss": state.get("initial_loss"),
            "best_loss": state["best_loss"],
            "losses": state["losses"],
            "kept": state["kept"],
            "reply": last["reply"],
            "judge_label": last["label"],
            "checks": state["checks"],
            "tokens": state["tokens"],
            "seconds": round(state["seconds"], 3),
        }

    # ------------------------------------------------------------ many behaviours, resumable
    def identity(self) -> dict[str, Any]:
        from ..provenance import package_versions

        info = self.chat.info
        return {
            "attack": "gcg",
            "model": {"name": info.name, "sha256": info.sha256, "dtype": str(self.chat.dtype)},
            "steering": None if self.steering is None else self.steering.id,
            "config": asdict(self.config),
            "judge": getattr(self.judge, "name", type(self.judge).__name__),
            "versions": {k: v for k, v in package_versions().items() if k in ("torch", "transformers")},
        }

    def run(
        self,
        behaviours: Sequence[Behaviour],
        out: Output,
        *,
        progress: bool = True,
        on_step: Callable[[str, GCGStep], None] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Attack every behaviour, one after the other, into `out`; a rerun skips finished
        behaviours and continues the one in flight from its checkpoint. Returns the
        summary (robustness with its interval, steps to break).

        `out` is this configuration's folder (the summary is also written to
        `out/summary.json`), or a results database (`.db` file or open `ResultsStore`),
        where the rows are kept under the configuration's `name` (default: the
        steering's name, else 'unsteered')."""
        import json

        from ..paths import atomic_file
        from .robustness import gcg_robustness
        from .runs import is_store, open_run

        behaviours = list(behaviours)
        if not behaviours:
            raise RefusalScopeError("no behaviours to attack", "pass at least one behaviour")
        for b in behaviours:
            b.require_target()
        if name is None:
            name = "unsteered" if self.steering is None else (self.steering.name or "steered")
        run = open_run(out, name, self.identity())
        try:
            done = run.done()
            todo = [b for b in behaviours if b.id not in done]
            for b in tqdm(todo, desc="gcg behaviours", unit="behaviour", disable=not progress or len(todo) < 2):
                result = self.attack(
                    b,
                    state=run.load_state(b.id),
                    checkpoint=functools.partial(run.save_state, b.id),
                    on_step=on_step,
                    progress=progress,
                )
                run.finish(result)
            finished = {r["id"]: r for r in run.results()}
        finally:
            run.close()
        results = [finished[b.id] for b in behaviours]
        summary = {
            "attack": "gcg",
            **gcg_robustness(results),
            "steering": run.identity["steering"],
            "config": run.identity["config"],
            "model": run.identity["model"],
            "tokens": sum(r["tokens"] for r in results),
            "seconds": sum(r["seconds"] for r in results),
        }
        if not is_store(out):
            with atomic_file(Path(os.fspath(cast("str | os.PathLike[str]", out))) / "summary.json") as handle:
                json.dump(summary, handle, indent=2)
        summary["results"] = results
        return summary
