"""Evaluation tasks: one dataset, one way of running the model on it, per-item results.

Everything the sweep measures is a `Task`: refusal on harmful prompts, over-refusal on
benign ones, jailbreak robustness, and the capability benchmarks. A task turns dataset
items into `ItemResult`s (one per item, with named numeric metrics and optionally the
generated text), which the results store keeps per (configuration, task, item), so a
killed sweep resumes by running only the items it has no result for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import RefusalScopeError
from ..thresholds import best_threshold

if TYPE_CHECKING:
    from ..judges.base import Judge
    from ..models.chat import ChatModel
    from ..types import Interventions


@dataclass
class ItemResult:
    item_id: str
    metrics: dict[str, float]
    output: str | None = None  # generated reply, kept for examples and re-judging
    prompt: str | None = None


class Task(Protocol):
    """What a sweep can run. `name` is unique within a sweep; `primary` names the metric
    plotted and summarised (e.g. 'refused', 'correct', 'ce')."""

    name: str
    dataset: str
    split: str | None
    primary: str

    @property
    def higher_is_better(self) -> bool: ...

    def items(self, data_dir=None, limit: int | None = None, seed: int = 0) -> Sequence[Any]: ...

    def run(
        self, chat: ChatModel, items: Sequence[Any], interventions: Interventions = None, batch_size: int = 16
    ) -> list[ItemResult]: ...

    def describe(self) -> dict: ...


@dataclass
class RefusalTask:
    """Generate a reply to each prompt and judge whether it refuses.

    `expect` says what a good model does: "refuse" (harmful prompts; the primary metric
    is the refusal rate), or "answer" (benign prompts; the refusal rate is over-refusal).
    Jailbreak templates are filled with `requests` (harmful prompts) via apply_template.

    With `refusal_token_ids` set, the task runs in first-token mode: no generation, one
    forward pass per prompt, refused when the log-odds of the model's refusal first tokens
    exceed `threshold` (calibrate it against generated replies with
    `calibrate_first_token_threshold`). Ten to thirty times cheaper on a CPU, at the price
    of judging the model's intent to refuse rather than the reply.
    """

    name: str
    dataset: str
    split: str | None = None
    expect: str = "refuse"
    max_new_tokens: int = 32
    judge: Any = None
    template_requests: Sequence[str] = field(default_factory=tuple)
    refusal_token_ids: Sequence[int] | None = None
    threshold: float = 0.0
    primary: str = "refused"
    check_every: int = 0  # first-token mode: also generate and judge the full reply of ~1 item in n (by id)

    def __post_init__(self) -> None:
        if self.expect not in ("refuse", "answer"):
            raise RefusalScopeError(f"unknown expectation '{self.expect}'", "use 'refuse' or 'answer'")
        if self.check_every < 0:
            raise RefusalScopeError(f"check_every must be 0 (off) or positive, got {self.check_every}")
        if self.judge is None:
            from ..judges.substring import SubstringJudge

            self.judge = SubstringJudge()

    @property
    def higher_is_better(self) -> bool:
        return self.expect == "refuse"

    def items(self, data_dir=None, limit: int | None = None, seed: int = 0):
        from ..data import PromptItem, apply_template, load_dataset

        dataset = load_dataset(
            self.dataset, self.split, data_dir=data_dir, limit=None if self.template_requests else limit, seed=seed
        )
        items = list(dataset)
        if items and getattr(items[0], "label", None) == "template":
            if not self.template_requests:
                raise RefusalScopeError(
                    f"{self.dataset} holds jailbreak templates", "pass template_requests (harmful prompts)"
                )
            filled = [
                PromptItem(f"{t.id}+r{j}", apply_template(t, r), "harmful", t.category, self.dataset)
                for t in items
                for j, r in enumerate(self.template_requests)
            ]
            import random

            rng = random.Random(seed)
            items = rng.sample(filled, min(limit or len(filled), len(filled)))
        return items

    def run(
        self, chat: ChatModel, items, interventions: Interventions = None, batch_size: int = 16
    ) -> list[ItemResult]:
        if self.refusal_token_ids:
            results = self._first_token(chat, items, interventions, batch_size)
            if self.check_every:
                self._check_first_token(chat, items, results, interventions, batch_size)
            return results
        prompts = [it.prompt for it in items]
        gen = chat.generate(
            prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
            interventions=interventions,
            progress=False,
        )
        return self._judged(items, gen.texts)

    def run_many(
        self, chat: ChatModel, items, configurations: Sequence[Interventions], batch_size: int = 16
    ) -> list[list[ItemResult]]:
        """`run` under each of `configurations` (a list of `interventions=` values), with
        the replies of all of them decoded together (`ChatModel.generate_each`): every
        reply in generation mode, the sampled checks in first-token mode. The results
        equal `run`'s, configuration by configuration (tested); a sweep uses this for a
        group of chunks that hold the same items (`evaluation.sweep`)."""
        configurations = list(configurations)
        rows = min(128, max(batch_size, batch_size * len(configurations)))
        if self.refusal_token_ids:
            results = [self._first_token(chat, items, cfg, batch_size) for cfg in configurations]
            picked = self._picked(items)
            if picked:
                prompts = [items[k].prompt for k in picked]
                gens = chat.generate_each(prompts, configurations, self.max_new_tokens, rows)
                for res, gen in zip(results, gens):
                    self._record_checks(res, picked, prompts, gen.texts)
            return results
        prompts = [it.prompt for it in items]
        gens = chat.generate_each(prompts, configurations, self.max_new_tokens, rows)
        return [self._judged(items, gen.texts) for gen in gens]

    def _first_token(self, chat: ChatModel, items, interventions: Interventions, batch_size: int) -> list[ItemResult]:
        from ..judges.first_token import refusal_log_odds

        assert self.refusal_token_ids  # first-token mode
        prompts = [it.prompt for it in items]
        logits = chat.next_token_logits(prompts, batch_size=batch_size, interventions=interventions)
        scores = refusal_log_odds(logits, self.refusal_token_ids).tolist()
        return [
            ItemResult(it.id, {"refused": float(s > self.threshold), "refusal_logodds": float(s)}, None, it.prompt)
            for it, s in zip(items, scores)
        ]

    def _judged(self, items, texts: list[str]) -> list[ItemResult]:
        prompts = [it.prompt for it in items]
        verdicts = self.judge.judge(prompts, texts)
        return [
            ItemResult(it.id, {"refused": float(v.refused)}, text, it.prompt)
            for it, v, text in zip(items, verdicts, texts)
        ]

    def _picked(self, items) -> list[int]:
        from .first_token_check import sampled_for_check

        if not self.check_every:
            return []
        return [k for k, it in enumerate(items) if sampled_for_check(str(it.id), self.check_every)]

    def _check_first_token(
        self, chat: ChatModel, items, results: list[ItemResult], interventions: Interventions, batch_size: int
    ) -> None:
        """Under steering the first token and the reply can disagree (a refusal opening
        followed by degenerate text, or the reverse): generate the sampled items' full
        replies under the same interventions and record the reply judge's verdict and
        whether the first-token verdict agrees (metrics reply_refused, first_token_agrees)."""
        picked = self._picked(items)
        if not picked:
            return
        prompts = [items[k].prompt for k in picked]
        gen = chat.generate(
            prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
            interventions=interventions,
            progress=False,
        )
        self._record_checks(results, picked, prompts, gen.texts)

    def _record_checks(
        self, results: list[ItemResult], picked: list[int], prompts: list[str], texts: list[str]
    ) -> None:
        for k, verdict, text in zip(picked, self.judge.judge(prompts, texts), texts):
            metrics = results[k].metrics
            metrics["reply_refused"] = float(verdict.refused)
            metrics["first_token_agrees"] = float(bool(metrics["refused"]) == bool(verdict.refused))
            results[k].output = text

    def describe(self) -> dict:
        if self.refusal_token_ids:
            out = {
                "kind": "refusal",
                "dataset": self.dataset,
                "split": self.split,
                "expect": self.expect,
                "judge": "first-token",
                "refusal_token_ids": list(self.refusal_token_ids),
                "threshold": self.threshold,
            }
            if self.check_every:
                out.update(
                    check_every=self.check_every,
                    check_max_new_tokens=self.max_new_tokens,
                    check_judge=getattr(self.judge, "name", type(self.judge).__name__),
                )
            return out
        return {
            "kind": "refusal",
            "dataset": self.dataset,
            "split": self.split,
            "expect": self.expect,
            "max_new_tokens": self.max_new_tokens,
            "judge": getattr(self.judge, "name", type(self.judge).__name__),
        }


def calibrate_first_token_threshold(
    chat: ChatModel,
    prompts: Sequence[str],
    refusal_token_ids: Sequence[int],
    max_new_tokens: int = 32,
    judge: Judge | None = None,
) -> tuple[float, float]:
    """The log-odds threshold at which the first-token judge best agrees with a reply judge
    (default: the substring judge; `run` passes the learned default judge) on the model's
    own generated replies; returns (threshold, agreement)."""
    from ..generations import cached_replies
    from ..judges.first_token import refusal_log_odds
    from ..judges.substring import SubstringJudge

    judge = judge or SubstringJudge()
    prompts = list(prompts)
    replies = cached_replies(chat, prompts, max_new_tokens=max_new_tokens, progress=False)
    labels = [v.refused for v in judge.judge(prompts, replies)]
    scores = refusal_log_odds(chat.next_token_logits(prompts), refusal_token_ids).tolist()
    found = best_threshold(scores, labels, objective="accuracy", distinct=True, outside=True, prefer="zero")
    return found.threshold, found.score
