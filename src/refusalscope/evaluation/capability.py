"""Capability benchmarks as sweep tasks: what steering refusal costs on ordinary work.

O'Brien et al. find that clamping refusal features raises refusal but lowers MMLU,
GSM8K, TruthfulQA and TriviaQA scores, even on harmless inputs. Each benchmark here is a
`Task` (see `tasks.py`): one `ItemResult` per item with numeric per-item metrics, so a
sweep can store, resume and bootstrap them. Interventions apply to every forward pass.

Multiple choice (MMLU, ARC, TruthfulQA MC1/MC2) is scored by log-likelihood, never by
parsing generations. The prompt is the same for every choice, so each prompt is run once
(batched over items, KV cache kept); the first token of every choice is read from the
prompt's last logits and the remaining choice tokens run from a copy of the cache,
batched over choices. Letter scoring (single-token choices) thus costs one prefill.
That engine is `models.continuation.continuation_logprobs` (it drives the KV cache).

Prompt formats (`chat=True`, the default; few-shot examples are earlier turns):

    letter   user:      The following is a multiple choice question about <subject>.
                        Answer with the letter of the correct option.
                        <question>
                        A. <choice>  ...  D. <choice>
             assistant: scored continuation "A" | "B" | ...
    text     user:      <question>
             assistant: scored continuation "<choice text>"

With `chat=False` the prompt is plain text in lm-evaluation-harness style: letter =
"The following are multiple choice questions (with answers) about <subject>.\\n\\n"
+ shots + "<question>\\nA. ...\\nAnswer:" scored on " A"; text = "Question: <question>\\n
Answer:" scored on " <choice>". Defaults per benchmark (see `capability_tasks`): MMLU by
letter (the standard), ARC and TruthfulQA by answer text (the standard for them, and
above chance even for 135M-parameter models, where letter scoring sits at chance).

Per-item metrics: `correct` (argmax of the summed log-likelihoods hits a true choice),
`correct_norm` (the same with log-likelihood per character of the continuation, as
lm-eval's acc_norm), `p_true` (probability mass of the true choices after normalising
over the choices: TruthfulQA's MC2 score; for one true choice, its normalised
probability) and `choice` (index of the chosen choice in the item's original order).

GSM8K is zero-shot chain of thought by default (an instruction to reason step by step
and end with "The answer is N"; few-shot CoT prompts cost several hundred prompt tokens
per item, too many for a CPU). TriviaQA asks for a short answer. Ordinary-text loss
(WikiText-2, Tiny Shakespeare) is the cross-entropy on each document's first `window`
tokens.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from ..errors import RefusalScopeError
from ..models.continuation import continuation_logprobs
from .tasks import ItemResult

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..types import Interventions

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ============================================================================ multiple choice
def _subject(category: str | None) -> str:
    return category.replace("_", " ").strip() if category else ""


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values)) if math.isfinite(top) else top


def _pool_key(item) -> str:
    return " ".join(item.question.split()).lower()


@dataclass
class MultipleChoiceTask:
    """Log-likelihood multiple choice (MMLU, ARC, TruthfulQA MC1/MC2), zero- or k-shot.

    scoring: "letter" (choices listed with letters; the letter is scored) or "text" (the
        choice's own text is scored as the reply).
    shots: few-shot examples, drawn from `fewshot_split` of the same dataset (the same
        subject first when `same_category`), seeded per item (`fewshot_seed`, item id), so an
        item's prompt does not depend on which other items run; never the item itself nor
        an item with the same question.
    shuffle: present choices in a seeded order per item (TruthfulQA lists the true answer
        first: without a shuffle a letter prompt would always answer A, and ties would
        favour the true answer). Reported `choice` indices are in the original order.
    chat: use the chat template (questions as user turns, answers as assistant turns);
        False gives lm-evaluation-harness style plain-text prompts.
    """

    name: str
    dataset: str
    split: str | None = None
    shots: int = 0
    scoring: str = "letter"
    chat: bool = True
    system: str | None = None
    fewshot_split: str | None = None
    same_category: bool = True
    shuffle: bool = False
    fewshot_seed: int = 1234
    primary: str = "correct"
    data_dir: Any = None
    higher_is_better: bool = True
    _pool: list | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scoring not in ("letter", "text"):
            raise RefusalScopeError(f"unknown scoring '{self.scoring}'", "use 'letter' or 'text'")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise RefusalScopeError(f"shots must be a non-negative integer, got {self.shots!r}")
        if self.shots and not self.fewshot_split:
            raise RefusalScopeError(
                f"{self.name}: {self.shots}-shot prompts need a fewshot_split",
                "name the split the examples come from, e.g. 'dev' for MMLU",
            )
        if self.primary not in ("correct", "correct_norm", "p_true"):
            raise RefusalScopeError(
                f"unknown primary metric '{self.primary}'", "use 'correct', 'correct_norm' or 'p_true'"
            )

    # ------------------------------------------------------------ items and shots
    def items(self, data_dir=None, limit: int | None = None, seed: int = 0):
        from ..data import load_dataset

        if data_dir is not None and self.data_dir is None:
            self.data_dir = data_dir  # the few-shot pool comes from the same folder
        return list(load_dataset(self.dataset, self.split, data_dir=data_dir, limit=limit, seed=seed))

    def fewshot_pool(self) -> list:
        if self._pool is None:
            from ..data import load_dataset

            self._pool = list(load_dataset(self.dataset, self.fewshot_split, data_dir=self.data_dir))
        return self._pool

    def examples(self, item) -> list:
        """The item's few-shot examples (seeded by `fewshot_seed` and the item id)."""
        if not self.shots:
            return []
        key = _pool_key(item)
        pool = [x for x in self.fewshot_pool() if x.id != item.id and _pool_key(x) != key]
        rng = random.Random(f"{self.fewshot_seed}:{item.id}")
        same = [x for x in pool if self.same_category and x.category == item.category]
        rest = [x for x in pool if not (self.same_category and x.category == item.category)]
        picked = rng.sample(same, min(self.shots, len(same)))
        if len(picked) < self.shots:
            picked += rng.sample(rest, min(self.shots - len(picked), len(rest)))
        if len(picked) < self.shots:
            raise RefusalScopeError(
                f"{self.name}: only {len(picked)} few-shot examples available for item {item.id}, {self.shots} asked",
                f"use fewer shots or a larger fewshot_split than '{self.fewshot_split}'",
            )
        return picked

    # ------------------------------------------------------------ prompts
    def _order(self, item) -> list[int]:
        """Indices of the choices in the order shown; empty choices (the TruthfulQA release
        has a few '' answers) are left out, as they cannot be scored."""
        order = [j for j, c in enumerate(item.choices) if str(c).strip()]
        if self.shuffle:
            random.Random(f"{self.fewshot_seed}:shuffle:{item.id}").shuffle(order)
        return order

    def _check(self, item) -> None:
        from ..data import MultipleChoiceItem

        if not isinstance(item, MultipleChoiceItem):
            raise RefusalScopeError(
                f"{self.name} scores multiple-choice items, got a {type(item).__name__} ({getattr(item, 'id', '?')})",
                "pass items from a multiple-choice dataset (mmlu, arc-*, truthfulqa-mc)",
            )
        if len(item.labels) != len(item.choices):
            raise RefusalScopeError(
                f"item {item.id} has {len(item.choices)} choices and {len(item.labels)} labels",
                "give one 0/1 label per choice",
            )
        shown = [j for j, c in enumerate(item.choices) if str(c).strip()]
        if len(shown) < 2:
            raise RefusalScopeError(f"item {item.id} has fewer than two non-empty choices")
        if not any(item.labels[j] for j in shown):
            raise RefusalScopeError(f"item {item.id} has no true (non-empty) choice")
        if self.scoring == "letter" and len(shown) > len(LETTERS):
            raise RefusalScopeError(
                f"item {item.id} has {len(shown)} choices, more than there are letters", "use scoring='text'"
            )

    def _block(self, item, order: list[int]) -> str:
        """The question as shown (user turn, or the plain-text block before 'Answer:')."""
        question = item.question.strip()
        if self.scoring == "text":
            return question if self.chat else f"Question: {question}\nAnswer:"
        lines = [question, *(f"{LETTERS[k]}. {str(item.choices[j]).strip()}" for k, j in enumerate(order))]
        if not self.chat:
            return "\n".join(lines) + "\nAnswer:"
        about = f" about {_subject(item.category)}" if item.category else ""
        head = f"The following is a multiple choice question{about}. Answer with the letter of the correct option."
        return head + "\n\n" + "\n".join(lines)

    def _answer(self, item, order: list[int], k: int) -> str:
        """The continuation for presented choice k (the assistant's reply in chat mode)."""
        text = LETTERS[k] if self.scoring == "letter" else str(item.choices[order[k]]).strip()
        return text if self.chat else " " + text

    def _shot(self, shot) -> tuple[str, str]:
        """A few-shot example as (question block, its first true answer)."""
        self._check(shot)
        order = self._order(shot)
        true_k = next(k for k, j in enumerate(order) if shot.labels[j])
        return self._block(shot, order), self._answer(shot, order, true_k)

    def render(self, chat: ChatModel, item) -> tuple[str, list[str], list[int]]:
        """(context text, continuation texts in presented order, presented order)."""
        self._check(item)
        shots = [self._shot(shot) for shot in self.examples(item)]
        order = self._order(item)
        block = self._block(item, order)
        if self.chat:
            messages = []
            for question, answer in shots:
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            context = chat.format([*messages, {"role": "user", "content": block}], system=self.system)
        else:
            head = ""
            if self.scoring == "letter" and item.category:
                head = (
                    f"The following are multiple choice questions (with answers) about {_subject(item.category)}.\n\n"
                )
            context = head + "".join(f"{question}{answer}\n\n" for question, answer in shots) + block
        return context, [self._answer(item, order, k) for k in range(len(order))], order

    def _encode(self, chat: ChatModel, text: str) -> list[int]:
        return chat.encode(text) if self.chat else chat.tokenizer(text, add_special_tokens=True)["input_ids"]

    def encode(self, chat: ChatModel, item) -> tuple[list[int], list[list[int]], list[int], str, list[str]]:
        """Token ids: (context, continuations in presented order, order, context text, continuation texts).

        Each continuation is tokenized together with the context and split off (as
        lm-eval does), so a merge across the boundary cannot change the context tokens;
        when it would, the continuation is tokenized on its own.
        """
        context, answers, order = self.render(chat, item)
        ctx_ids = self._encode(chat, context)
        conts = []
        for answer in answers:
            whole = self._encode(chat, context + answer)
            if whole[: len(ctx_ids)] == ctx_ids and len(whole) > len(ctx_ids):
                conts.append(whole[len(ctx_ids) :])
            else:
                conts.append(chat.encode(answer))
        return ctx_ids, conts, order, context, answers

    # ------------------------------------------------------------ running
    def run(
        self, chat: ChatModel, items, interventions: Interventions = None, batch_size: int = 16
    ) -> list[ItemResult]:
        encoded = [self.encode(chat, item) for item in items]
        if not encoded:
            return []
        scores = continuation_logprobs(chat, [(e[0], e[1]) for e in encoded], interventions, batch_size)
        results = []
        for item, (_, _, order, _, answers), ll in zip(items, encoded, scores):
            truth = [item.labels[j] for j in order]
            norm = [v / max(len(a), 1) for v, a in zip(ll, answers)]
            best = max(range(len(ll)), key=lambda k: ll[k])
            best_norm = max(range(len(norm)), key=lambda k: norm[k])
            p_true = math.exp(_logsumexp([v for v, t in zip(ll, truth) if t]) - _logsumexp(ll))
            metrics = {
                "correct": float(truth[best]),
                "correct_norm": float(truth[best_norm]),
                "p_true": p_true,
                "choice": float(order[best]),
            }
            results.append(ItemResult(item.id, metrics, str(item.choices[order[best]]), self._block(item, order)))
        return results

    def describe(self) -> dict:
        return {
            "kind": "multiple_choice",
            "dataset": self.dataset,
            "split": self.split,
            "shots": self.shots,
            "scoring": self.scoring,
            "chat": self.chat,
            "system": self.system,
            "fewshot_split": self.fewshot_split if self.shots else None,
            "same_category": self.same_category,
            "shuffle": self.shuffle,
            "fewshot_seed": self.fewshot_seed,
            "primary": self.primary,
        }


# ============================================================================ GSM8K
_NUMBER = re.compile(r"(?<![\d.])-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_FINAL_MARKERS = (
    re.compile(r"####\s*(.*)"),
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"answer\s*(?:is|:)\s*(.*)", re.IGNORECASE),
)


def _canonical(number: str) -> str | None:
    text = number.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a worked solution, canonical ('1,234.50' -> '1234.5').

    Looks, in order, for the number after the last '####', in the last '\\boxed{...}',
    after the last 'answer is' / 'answer:' (after the last '=' on that line, if any), and
    else takes the last number in the text.
    Thousands separators, '$' signs and trailing periods are dropped.
    """
    for marker in _FINAL_MARKERS:
        matches = list(marker.finditer(text))
        if matches:
            tail = matches[-1].group(1).rsplit("=", 1)[-1]  # 'The answer is 125 + 2 = 127' -> 127
            found = _NUMBER.search(tail)
            if found:
                return _canonical(found.group(0))
    numbers = _NUMBER.findall(text)
    return _canonical(numbers[-1]) if numbers else None


def numbers_match(predicted: str | None, gold: str | None) -> bool:
    """Exact numeric equality of two number strings ('18.00' == '18'); None never matches."""
    if predicted is None or gold is None:
        return False
    a, b = _canonical(predicted), _canonical(gold)
    return a is not None and a == b


GSM8K_TEMPLATE = (
    "Solve the following math problem step by step. "
    "End your reply with the final answer on its own line, as 'The answer is N.'\n\n{question}"
)


def _check_template(template: str) -> None:
    if not isinstance(template, str) or "{question}" not in template:
        raise RefusalScopeError(
            f"the prompt template {template!r:.60} has no '{{question}}' placeholder",
            "write where the question goes as {question}",
        )


def _gsm8k_solution(solution: str, final: str) -> str:
    """A GSM8K reference solution as a worked reply: calculator notes out, final line in our format."""
    body = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
    return f"{body}\nThe answer is {final}."


@dataclass
class GSM8KTask:
    """GSM8K by greedy chain of thought; `correct` = the extracted final number equals the answer.

    Zero-shot by default (an instruction to reason step by step and finish with 'The answer
    is N.'); `shots` > 0 adds worked examples from `fewshot_split` (calculator annotations
    removed) as earlier chat turns. Metrics: correct, answered (a number was found),
    truncated (the reply hit max_new_tokens), n_tokens (reply length).
    """

    name: str = "gsm8k"
    dataset: str = "gsm8k"
    split: str | None = "test"
    max_new_tokens: int = 256
    shots: int = 0
    system: str | None = None
    template: str = GSM8K_TEMPLATE
    fewshot_split: str = "train"
    fewshot_seed: int = 1234
    data_dir: Any = None
    primary: str = "correct"
    higher_is_better: bool = True
    _pool: list | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise RefusalScopeError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise RefusalScopeError(f"shots must be a non-negative integer, got {self.shots!r}")
        _check_template(self.template)

    def items(self, data_dir=None, limit: int | None = None, seed: int = 0):
        from ..data import load_dataset

        if data_dir is not None and self.data_dir is None:
            self.data_dir = data_dir
        return list(load_dataset(self.dataset, self.split, data_dir=data_dir, limit=limit, seed=seed))

    def _examples(self, item) -> list:
        if not self.shots:
            return []
        if self._pool is None:
            from ..data import load_dataset

            self._pool = list(load_dataset(self.dataset, self.fewshot_split, data_dir=self.data_dir))
        pool = [x for x in self._pool if x.id != item.id and _pool_key(x) != _pool_key(item)]
        if len(pool) < self.shots:
            raise RefusalScopeError(f"{self.name}: only {len(pool)} few-shot examples in '{self.fewshot_split}'")
        return random.Random(f"{self.fewshot_seed}:{item.id}").sample(pool, self.shots)

    def conversation(self, item) -> list[dict[str, str]]:
        from ..data import QAItem

        if not isinstance(item, QAItem) or not item.answers:
            raise RefusalScopeError(f"{self.name} needs question-answer items with an answer, got {item!r:.80}")
        messages = []
        for shot in self._examples(item):
            solution = shot.meta.get("solution")
            if not solution:
                raise RefusalScopeError(f"few-shot example {shot.id} has no worked solution (meta['solution'])")
            messages += [
                {"role": "user", "content": self.template.replace("{question}", shot.question.strip())},
                {"role": "assistant", "content": _gsm8k_solution(solution, shot.answer)},
            ]
        messages.append({"role": "user", "content": self.template.replace("{question}", item.question.strip())})
        return messages

    def run(
        self, chat: ChatModel, items, interventions: Interventions = None, batch_size: int = 16
    ) -> list[ItemResult]:
        if not items:
            return []
        conversations = [self.conversation(it) for it in items]
        gen = chat.generate(
            conversations,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
            system=self.system,
            interventions=interventions,
            progress=False,
        )
        results = []
        for item, text, ids, reason in zip(items, gen.texts, gen.token_ids, gen.finish_reasons):
            predicted = extract_number(text)
            metrics = {
                "correct": float(numbers_match(predicted, item.answer)),
                "answered": float(predicted is not None),
                "truncated": float(reason == "length"),
                "n_tokens": float(len(ids)),
            }
            results.append(ItemResult(item.id, metrics, text, item.question))
        return results

    def describe(self) -> dict:
        return {
            "kind": "gsm8k",
            "dataset": self.dataset,
            "split": self.split,
            "shots": self.shots,
            "max_new_tokens": self.max_new_tokens,
            "system": self.system,
            "template": self.template,
            "fewshot_split": self.fewshot_split if self.shots else None,
            "fewshot_seed": self.fewshot_seed,
        }


# ============================================================================ TriviaQA
_PUNCTUATION = set(string.punctuation + "‘’´`“”")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD/TriviaQA answer normalisation: lowercase, '_' to space, punctuation and the
    articles a/an/the removed, whitespace collapsed."""
    text = text.lower().replace("_", " ")
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


_LEAD_IN = re.compile(r"^\s*(?:final\s+)?answer\s*:\s*", re.IGNORECASE)


def qa_scores(reply: str, answers: Sequence[str]) -> dict[str, float]:
    """{'exact': the reply's first line equals an alias, 'contains': an alias occurs in the
    reply as whole words}, both after `normalize_answer`."""
    aliases = {normalize_answer(a) for a in answers} - {""}
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    head = normalize_answer(_LEAD_IN.sub("", lines[0])) if lines else ""
    body = f" {normalize_answer(reply)} "
    return {"exact": float(head in aliases), "contains": float(any(f" {a} " in body for a in aliases))}


TRIVIAQA_TEMPLATE = (
    "Answer the following trivia question with just the answer, in as few words as possible.\n\nQuestion: {question}"
)


@dataclass
class TriviaQATask:
    """TriviaQA (no context), greedy short answer; metrics `exact` and `contains` (any alias)."""

    name: str = "triviaqa"
    dataset: str = "triviaqa"
    split: str | None = "validation"
    max_new_tokens: int = 24
    system: str | None = None
    template: str = TRIVIAQA_TEMPLATE
    primary: str = "contains"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise RefusalScopeError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.primary not in ("exact", "contains"):
            raise RefusalScopeError(f"unknown primary metric '{self.primary}'", "use 'exact' or 'contains'")
        _check_template(self.template)

    def items(self, data_dir=None, limit: int | None = None, seed: int = 0):
        from ..data import load_dataset

        return list(load_dataset(self.dataset, self.split, data_dir=data_dir, limit=limit, seed=seed))

    def prompt(self, item) -> str:
        from ..data import QAItem

        if not isinstance(item, QAItem) or not item.answers:
            raise RefusalScopeError(f"{self.name} needs question-answer items with answers, got {item!r:.80}")
        return self.template.replace("{question}", item.question.strip())

    def run(
        self, chat: ChatModel, items, interventions: Interventions = None, batch_size: int = 16
    ) -> list[ItemResult]:
        if not items:
            return []
        prompts = [self.prompt(it) for it in items]
        gen = chat.generate(
            prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
            system=self.system,
            interventions=interventions,
            progress=False,
        )
        return [ItemResult(it.id, qa_scores(text, it.answers), text, it.question) for it, text in zip(items, gen.texts)]

    def describe(self) -> dict:
        return {
            "kind": "short_answer",
            "dataset": self.dataset,
            "split": self.split,
            "max_new_tokens": self.max_new_tokens,
            "system": self.system,
            "template": self.template,
        }


# ============================================================================ ordinary text
@dataclass
class TextLossTask:
    """Cross-entropy (nats per token) on the first `window` tokens of each document.

    Plain text, no chat template (the tokenizer adds BOS where it normally does); every
    token but the first is scored. `items` skips documents of fewer than `min_words` words.
    """

    name: str
    dataset: str
    split: str | None = None
    window: int = 128
    min_words: int = 16
    primary: str = "ce"
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        if self.window < 2:
            raise RefusalScopeError(f"window must be at least 2 tokens, got {self.window}")

    def items(self, data_dir=None, limit: int | None = None, seed: int = 0):
        from ..data import load_dataset

        dataset = load_dataset(self.dataset, self.split, data_dir=data_dir)
        dataset = dataset.filter(lambda it: len(it.text.split()) >= self.min_words)
        return list(dataset.sample(limit, seed))

    def documents(self, chat: ChatModel, items):
        from ..data import TextItem
        from ..sae.activations import Document

        docs = []
        for item in items:
            if not isinstance(item, TextItem):
                raise RefusalScopeError(f"{self.name} scores text documents, got a {type(item).__name__}")
            tokens = chat.tokenizer(item.text, add_special_tokens=True)["input_ids"][: self.window]
            if len(tokens) < 2:
                raise RefusalScopeError(f"document {item.id} has fewer than two tokens", "filter out empty documents")
            docs.append(Document(tokens, "text", skip=1))
        return docs

    def run(
        self, chat: ChatModel, items, interventions: Interventions = None, batch_size: int = 16
    ) -> list[ItemResult]:
        from .loss import per_document_ce

        if not items:
            return []
        ce = per_document_ce(chat, self.documents(chat, items), interventions, batch_size)
        return [ItemResult(it.id, {"ce": v}, None, it.title) for it, v in zip(items, ce)]

    def describe(self) -> dict:
        return {
            "kind": "text_loss",
            "dataset": self.dataset,
            "split": self.split,
            "window": self.window,
            "min_words": self.min_words,
        }


# ============================================================================ factory
CAPABILITY_TASKS = (
    "mmlu",
    "mmlu-5shot",
    "arc-challenge",
    "arc-easy",
    "truthfulqa-mc1",
    "truthfulqa-mc2",
    "gsm8k",
    "triviaqa",
    "wikitext",
    "shakespeare",
)
_SHOTS = re.compile(r"^(?P<base>.+?)-(?P<k>\d+)shot$")


def capability_task(
    name: str,
    *,
    chat: bool = True,
    system: str | None = None,
    data_dir=None,
    gsm8k_max_new_tokens: int = 256,
    triviaqa_max_new_tokens: int = 24,
    window: int = 128,
):
    """One capability task by short name (see `CAPABILITY_TASKS`); multiple-choice names take
    an optional '-<k>shot' suffix ('mmlu-5shot', 'arc-easy-3shot')."""
    match = _SHOTS.match(name)
    base, shots = (match["base"], int(match["k"])) if match else (name, 0)
    mc = dict(chat=chat, system=system, data_dir=data_dir, shots=shots)
    if base == "mmlu":
        return MultipleChoiceTask(name, "mmlu", "test", scoring="letter", fewshot_split="dev", **mc)
    if base in ("arc-challenge", "arc-easy"):
        return MultipleChoiceTask(
            name, base, "test", scoring="text", fewshot_split="train", primary="correct_norm", **mc
        )
    if base in ("truthfulqa-mc1", "truthfulqa-mc2"):
        split = base.rsplit("-", 1)[1]
        return MultipleChoiceTask(
            name,
            "truthfulqa-mc",
            split,
            scoring="text",
            fewshot_split=split,
            shuffle=True,
            same_category=False,
            primary="p_true" if split == "mc2" else "correct",
            **mc,
        )
    if base in ("gsm8k", "triviaqa", "wikitext", "shakespeare") and match:
        raise RefusalScopeError(f"capability task '{base}' takes no few-shot suffix", f"use '{base}'")
    if base in ("gsm8k", "triviaqa") and not chat:
        raise RefusalScopeError(f"capability task '{name}' generates with the chat template only", "use chat=True")
    if base == "gsm8k":
        return GSM8KTask(max_new_tokens=gsm8k_max_new_tokens, system=system, data_dir=data_dir)
    if base == "triviaqa":
        return TriviaQATask(max_new_tokens=triviaqa_max_new_tokens, system=system)
    if base == "wikitext":
        return TextLossTask("wikitext", "text/wikitext2", "test", window=window)
    if base == "shakespeare":
        return TextLossTask("shakespeare", "text/tinyshakespeare", "all", window=window)
    raise RefusalScopeError(
        f"unknown capability task '{name}'",
        f"use one of {', '.join(CAPABILITY_TASKS)} (multiple-choice tasks accept '-<k>shot')",
    )


def capability_tasks(names: Sequence[str] | str | None = None, **kwargs) -> list:
    """Capability tasks by short name (all of `CAPABILITY_TASKS` when None); keyword
    arguments as for `capability_task`.

        tasks = capability_tasks(["mmlu", "truthfulqa-mc2", "wikitext"], data_dir="../shared/data")
        for task in tasks:
            results = task.run(chat, task.items(limit=50), interventions=steering)
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(CAPABILITY_TASKS if names is None else names)
    if not names:
        raise RefusalScopeError("no capability tasks were named", f"use some of {', '.join(CAPABILITY_TASKS)}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RefusalScopeError(f"capability task named twice: {', '.join(duplicates)}")
    return [capability_task(n, **kwargs) for n in names]
