"""Capability tasks on tiny random models: KV-shared multiple-choice scoring equals naive
full-forward scoring, batch-size invariance, few-shot hygiene, MC2, answer extraction,
interventions and input errors."""

import json
import math

import pytest
import torch

from refusalscope.data import MultipleChoiceItem, QAItem, TextItem
from refusalscope.errors import RefusalScopeError
from refusalscope.evaluation.capability import (
    CAPABILITY_TASKS,
    GSM8KTask,
    MultipleChoiceTask,
    TextLossTask,
    TriviaQATask,
    capability_task,
    capability_tasks,
    continuation_logprobs,
    extract_number,
    normalize_answer,
    numbers_match,
    qa_scores,
)
from refusalscope.models.hooks import ForwardContext
from refusalscope.steering import ActAdd, Conditional, DirectionGate

ITEMS = [
    MultipleChoiceItem(
        "q0", "What is the capital of France?", ("Paris", "Rome", "Berlin", "Madrid"), (1, 0, 0, 0), "geography"
    ),
    MultipleChoiceItem(
        "q1", "How do I bake bread?", ("Mix flour, water, salt and yeast.", "Boil it", "Sing"), (1, 0, 0)
    ),
    MultipleChoiceItem(
        "q2",
        "Explain photosynthesis.",
        ("Plants make sugar from light and water in simple terms", "The sea", "A poem about the sky"),
        (1, 0, 0),
        "biology",
    ),
    MultipleChoiceItem(
        "q3",
        "Reverse a list",
        (
            "Use a python function that reverses a list of numbers",
            "Sure! Here is a short poem",
            "No",
            "Yes",
            "Maybe later",
        ),
        (1, 1, 0, 0, 0),
        "code",
    ),
    MultipleChoiceItem("q4", "Which is a city?", ("Rome", "Sky"), (1, 0), "geography"),
]


@torch.no_grad()
def naive_logprobs(chat, requests, interventions=None):
    """Reference: one full forward of context + continuation per choice, no cache."""
    out = []
    with chat.attached(interventions):
        for context, continuations in requests:
            row = []
            for cont in continuations:
                ids = torch.tensor([list(context) + list(cont)])
                n = ids.shape[1]
                ctx = ForwardContext(
                    torch.ones(1, n, dtype=torch.long),
                    torch.tensor([len(context)]),
                    0,
                    torch.arange(1),
                    chat.new_batch_id(),
                    "prefill",
                )
                with chat.hooks.forward_context(ctx):
                    logits = chat.model(input_ids=ids, position_ids=torch.arange(n)[None]).logits[0].float()
                logp = torch.log_softmax(logits[:-1], -1)
                targets = ids[0, 1:]
                row.append(float(logp[torch.arange(n - 1), targets][len(context) - 1 :].sum()))
            out.append(row)
    return out


def requests_for(chat, task, items=ITEMS):
    return [task.encode(chat, item)[:2] for item in items]


def big_push(chat, layer=1, scale=30.0, positions="all"):
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(3))
    return ActAdd(direction / direction.norm(), layer, scale, positions=positions)


# ------------------------------------------------------------------------- scoring core
@pytest.mark.parametrize("scoring", ["letter", "text"])
@pytest.mark.parametrize("use_chat", [True, False])
def test_kv_shared_scoring_equals_full_forward(tiny_llama, scoring, use_chat):
    task = MultipleChoiceTask("t", "x", scoring=scoring, chat=use_chat)
    requests = requests_for(tiny_llama, task)
    fast = continuation_logprobs(tiny_llama, requests, batch_size=3)
    slow = naive_logprobs(tiny_llama, requests)
    for a, b in zip(fast, slow):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_kv_scoring_equals_full_forward_with_long_continuations(tiny_qwen, family):
    from refusalscope.testing import tiny_chat_model

    chat = tiny_qwen if family == "qwen2" else tiny_chat_model(family, seed=2)  # gemma2: window 64, softcaps
    rng = torch.Generator().manual_seed(0)
    requests = []
    for n in range(5):
        context = torch.randint(7, 250, (5 + 23 * n,), generator=rng).tolist()  # up to 97 tokens
        conts = [torch.randint(7, 250, (1 + (n + k) % 6,), generator=rng).tolist() for k in range(2 + n % 3)]
        requests.append((context, conts))
    fast = continuation_logprobs(chat, requests, batch_size=4, max_logits=3 * 5 * 300)  # forces chunking
    slow = naive_logprobs(chat, requests)
    for a, b in zip(fast, slow):
        assert a == pytest.approx(b, abs=1e-4)


def test_scoring_is_batch_size_invariant(tiny_llama):
    task = MultipleChoiceTask("t", "x", scoring="text")
    runs = [task.run(tiny_llama, ITEMS, batch_size=b) for b in (1, 2, 5, 16)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.item_id == b.item_id and a.output == b.output
            assert a.metrics["correct"] == b.metrics["correct"] and a.metrics["choice"] == b.metrics["choice"]
            assert a.metrics["p_true"] == pytest.approx(b.metrics["p_true"], abs=1e-6)
    requests = requests_for(tiny_llama, task)
    one = continuation_logprobs(tiny_llama, requests, batch_size=1)
    many = continuation_logprobs(tiny_llama, requests, batch_size=16, max_logits=600)
    for a, b in zip(one, many):
        assert a == pytest.approx(b, abs=1e-5)


def test_results_follow_item_order_and_metrics_are_numbers(tiny_llama):
    task = MultipleChoiceTask("t", "x", scoring="letter")
    results = task.run(tiny_llama, ITEMS[::-1], batch_size=2)
    assert [r.item_id for r in results] == [it.id for it in ITEMS[::-1]]
    for r, item in zip(results, ITEMS[::-1]):
        assert set(r.metrics) == {"correct", "correct_norm", "p_true", "choice"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in r.metrics.values())
        assert 0 <= r.metrics["p_true"] <= 1
        assert r.output == item.choices[int(r.metrics["choice"])]
        assert r.metrics["correct"] == float(item.labels[int(r.metrics["choice"])])
    assert task.run(tiny_llama, []) == []


def test_mc2_p_true_matches_hand_computation(tiny_llama):
    task = MultipleChoiceTask("mc2", "truthfulqa-mc", "mc2", scoring="text", shuffle=True, primary="p_true")
    item = ITEMS[3]  # two true choices
    context, conts, order, _, answers = task.encode(tiny_llama, item)
    ll = naive_logprobs(tiny_llama, [(context, conts)])[0]
    true = [math.exp(v) for v, j in zip(ll, order) if item.labels[j]]
    expected = sum(true) / sum(math.exp(v) for v in ll)
    result = task.run(tiny_llama, [item])[0]
    assert result.metrics["p_true"] == pytest.approx(expected, rel=1e-4)
    best = max(range(len(ll)), key=lambda k: ll[k])
    best_norm = max(range(len(ll)), key=lambda k: ll[k] / len(answers[k]))
    assert result.metrics["choice"] == order[best]
    assert result.metrics["correct"] == item.labels[order[best]]
    assert result.metrics["correct_norm"] == item.labels[order[best_norm]]


def test_shuffle_is_seeded_and_keeps_original_indices(tiny_llama):
    task = MultipleChoiceTask("t", "x", scoring="letter", shuffle=True)
    item = ITEMS[0]
    context, answers, order = task.render(tiny_llama, item)
    assert sorted(order) == list(range(4)) and task.render(tiny_llama, item)[2] == order
    for k, j in enumerate(order):
        assert f"{'ABCD'[k]}. {item.choices[j]}" in context
    assert answers == ["A", "B", "C", "D"]


def test_empty_choices_are_left_out(tiny_llama):
    """The TruthfulQA release has a few '' answers: they are neither shown nor scored."""
    item = MultipleChoiceItem("e", "Which is a city?", ("Rome", "", "Sky", "  "), (1, 1, 0, 0))
    for scoring in ("letter", "text"):
        task = MultipleChoiceTask("t", "x", scoring=scoring, shuffle=True)
        context, answers, order = task.render(tiny_llama, item)
        assert sorted(order) == [0, 2] and len(answers) == 2
        result = task.run(tiny_llama, [item])[0]
        assert result.metrics["choice"] in (0.0, 2.0) and 0 < result.metrics["p_true"] < 1


# ------------------------------------------------------------------------- prompt formats
def test_prompt_formats(tiny_llama):
    item = ITEMS[0]
    chat_letter = MultipleChoiceTask("t", "x", scoring="letter")
    context, answers, _ = chat_letter.render(tiny_llama, item)
    assert context.startswith("<|im_start|>user\nThe following is a multiple choice question about geography.")
    assert "\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid<|im_end|>\n<|im_start|>assistant\n" in context
    assert answers == ["A", "B", "C", "D"]
    plain_letter = MultipleChoiceTask("t", "x", scoring="letter", chat=False)
    context, answers, _ = plain_letter.render(tiny_llama, item)
    assert context == (
        "The following are multiple choice questions (with answers) about geography.\n\n"
        "What is the capital of France?\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer:"
    )
    assert answers == [" A", " B", " C", " D"]
    plain_text = MultipleChoiceTask("t", "x", scoring="text", chat=False)
    context, answers, _ = plain_text.render(tiny_llama, item)
    assert context == "Question: What is the capital of France?\nAnswer:" and answers[0] == " Paris"
    ctx_ids, conts, *_ = plain_text.encode(tiny_llama, item)
    assert tiny_llama.tokenizer.decode(ctx_ids + conts[0]).endswith("Answer: Paris")


def test_few_shot_prompts_never_contain_the_item(tiny_llama):
    duplicate = MultipleChoiceItem("dup", ITEMS[0].question, ITEMS[0].choices, ITEMS[0].labels, "geography")
    pool = [
        *ITEMS,
        duplicate,
        MultipleChoiceItem("g1", "Which river flows through Paris?", ("Seine", "Nile"), (1, 0), "geography"),
        MultipleChoiceItem("g2", "Largest ocean?", ("Pacific", "Arctic"), (0, 1), "geography"),
    ]
    task = MultipleChoiceTask("t", "x", "test", shots=3, scoring="letter", fewshot_split="dev")
    task._pool = pool
    for item in ITEMS:
        shots = task.examples(item)
        assert len(shots) == 3 and item not in shots
        assert all(s.question != item.question for s in shots)
        assert task.examples(item) == shots  # seeded per item
        context, _, _ = task.render(tiny_llama, item)
        assert context.count(item.question) == 1
        assert context.count("<|im_start|>assistant\n") == 4  # three answered shots + the reply
    same = task.examples(ITEMS[0])  # geography first: g1, g2, then one other
    assert {"g1", "g2"} <= {s.id for s in same}
    with_shots = task.render(tiny_llama, ITEMS[4])[0]
    assert "<|im_start|>assistant\nA<|im_end|>" in with_shots or "<|im_start|>assistant\nB<|im_end|>" in with_shots
    task_big = MultipleChoiceTask("t", "x", "test", shots=10, fewshot_split="dev")
    task_big._pool = pool
    with pytest.raises(RefusalScopeError, match="few-shot examples"):
        task_big.examples(ITEMS[0])


def test_mmlu_five_shot_comes_from_dev_of_the_same_subject(data_dir, tiny_llama):
    task = capability_task("mmlu-5shot")
    items = task.items(data_dir, limit=4, seed=1)
    for item in items:
        shots = task.examples(item)
        assert len(shots) == 5 and all(s.category == item.category and s.id.startswith("mmlu-dev-") for s in shots)
        context = task.render(tiny_llama, item)[0]
        assert context.count(item.question.strip()) == 1


# ------------------------------------------------------------------------- interventions
def test_interventions_change_scores_and_match_the_reference(tiny_llama):
    task = MultipleChoiceTask("t", "x", scoring="text")
    requests = requests_for(tiny_llama, task)
    plain = continuation_logprobs(tiny_llama, requests)
    for positions in ("all", "generated", "prompt", [-1]):
        push = big_push(tiny_llama, positions=positions)
        fast = continuation_logprobs(tiny_llama, requests, push, batch_size=2)
        slow = naive_logprobs(tiny_llama, requests, push)
        for a, b in zip(fast, slow):
            assert a == pytest.approx(b, abs=1e-4)
        assert max(abs(x - y) for a, b in zip(fast, plain) for x, y in zip(a, b)) > 0.1
    assert tiny_llama.hooks.active == 0
    assert continuation_logprobs(tiny_llama, requests) == plain
    results = task.run(tiny_llama, ITEMS, interventions=big_push(tiny_llama))
    assert [r.metrics["p_true"] for r in results] != [r.metrics["p_true"] for r in task.run(tiny_llama, ITEMS)]


def test_conditional_steering_follows_the_gate(tiny_llama):
    task = MultipleChoiceTask("t", "x", scoring="text")
    requests = requests_for(tiny_llama, task)
    push = big_push(tiny_llama, layer=2)
    gate = DirectionGate(torch.randn(tiny_llama.d_model), 1)
    always = continuation_logprobs(tiny_llama, requests, Conditional(push, gate, -1e9), batch_size=2)
    never = continuation_logprobs(tiny_llama, requests, Conditional(push, gate, 1e9), batch_size=2)
    steered = continuation_logprobs(tiny_llama, requests, push, batch_size=2)
    assert [x for row in always for x in row] == pytest.approx([x for row in steered for x in row], rel=1e-6)
    assert never == continuation_logprobs(tiny_llama, requests, batch_size=2)


# ------------------------------------------------------------------------- answers
@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 apples and buys 4 more, so 7.\n#### 7", "7"),
        ("Total: $1,234.50 dollars", "1234.5"),
        ("The answer is $18.", "18"),
        ("The answer is 18.00", "18"),
        ("The answer is 125 + 2 = 127.", "127"),
        ("The answer is 18 dollars, 3 more than 15.", "18"),
        ("so $x = 4$.\n#### 1,200\n", "1200"),
        ("First 12 then 5. The final answer is: -3", "-3"),
        ("So we get \\boxed{42} in the end, 7 steps.", "42"),
        ("5-3 = 2 so there are 2 left", "2"),
        ("He has 10 - 4", "4"),
        ("It costs $ 7 each, so -$3 change", "-3"),
        ("It costs 1,000,000 in total.", "1000000"),
        ("Answer: 0.5 hours", "0.5"),
        ("I cannot solve this.", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numbers_match():
    assert numbers_match("18.00", "18") and numbers_match("1,000", "1000") and numbers_match("$5", "5")
    assert not numbers_match("18.5", "18") and not numbers_match(None, "3") and not numbers_match("x", "x")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Beatles", "beatles"),
        ("  An   Apple a day! ", "apple day"),
        ("Paris.", "paris"),
        ("U.S.A.", "u s"),
        ("new_york", "new york"),
        ("“Hamlet”", "hamlet"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_qa_scores():
    aliases = ("Paris", "City of Light")
    assert qa_scores("Paris.", aliases) == {"exact": 1.0, "contains": 1.0}
    assert qa_scores("Answer: the City of Light\nbecause...", aliases) == {"exact": 1.0, "contains": 1.0}
    assert qa_scores("The capital of France is Paris.", aliases) == {"exact": 0.0, "contains": 1.0}
    assert qa_scores("Comparison", ("Paris",)) == {"exact": 0.0, "contains": 0.0}  # whole words only
    assert qa_scores("I'm sorry, I can't help with that.", aliases) == {"exact": 0.0, "contains": 0.0}
    assert qa_scores("", aliases) == {"exact": 0.0, "contains": 0.0}


# ------------------------------------------------------------------------- generation and text tasks
def test_gsm8k_and_triviaqa_run_on_a_tiny_model(tiny_llama):
    gsm = GSM8KTask(max_new_tokens=4)
    items = [
        QAItem("g0", "Tom has 2 apples and buys 3 more. How many?", ("5",)),
        QAItem("g1", "What is 10 - 4?", ("6",)),
    ]
    results = gsm.run(tiny_llama, items, batch_size=1)
    assert [r.item_id for r in results] == ["g0", "g1"]
    assert set(results[0].metrics) == {"correct", "answered", "truncated", "n_tokens"}
    assert results[0].metrics["n_tokens"] <= 4 and isinstance(results[0].output, str)
    assert gsm.run(tiny_llama, items, batch_size=2)[1].output == results[1].output
    trivia = TriviaQATask(max_new_tokens=3)
    out = trivia.run(tiny_llama, [QAItem("t0", "Capital of France?", ("Paris",))])
    assert set(out[0].metrics) == {"exact", "contains"}
    assert "Question: Capital of France?" in trivia.prompt(QAItem("t0", "Capital of France?", ("Paris",)))


def test_gsm8k_few_shot_uses_clean_worked_solutions():
    pool = [
        QAItem(f"p{i}", f"Problem {i}?", (str(i),), meta={"solution": f"2*{i}=<<2*{i}={2 * i}>>{2 * i}\n#### {i}"})
        for i in range(4)
    ]
    task = GSM8KTask(shots=2)
    task._pool = pool
    messages = task.conversation(pool[0])
    assert len(messages) == 5 and messages[-1]["content"].endswith("Problem 0?")
    assert all("Problem 0?" not in m["content"] for m in messages[:-1])
    assert "<<" not in messages[1]["content"] and messages[1]["content"].endswith(
        "The answer is " + messages[0]["content"][-2] + "."
    )


def test_text_loss_task(tiny_llama):
    from refusalscope.evaluation.loss import per_document_ce

    task = TextLossTask("w", "text/wikitext2", "test", window=16)
    items = [TextItem("d0", "The capital of France is Paris. " * 5, "France"), TextItem("d1", "How do I bake bread?")]
    results = task.run(tiny_llama, items, batch_size=2)
    ce = per_document_ce(tiny_llama, task.documents(tiny_llama, items))
    assert [r.metrics["ce"] for r in results] == pytest.approx(ce)
    assert all(0 < r.metrics["ce"] < 10 for r in results) and len(task.documents(tiny_llama, items)[0].tokens) == 16
    assert task.run(tiny_llama, items, interventions=big_push(tiny_llama))[0].metrics["ce"] != results[0].metrics["ce"]


# ------------------------------------------------------------------------- factory and errors
def test_capability_tasks_factory():
    tasks = capability_tasks()
    assert [t.name for t in tasks] == list(CAPABILITY_TASKS)
    for task in tasks:
        json.dumps(task.describe())
        assert isinstance(task.primary, str) and isinstance(task.higher_is_better, bool)
    by_name = {t.name: t for t in tasks}
    assert by_name["mmlu-5shot"].shots == 5 and by_name["mmlu-5shot"].fewshot_split == "dev"
    assert by_name["truthfulqa-mc2"].primary == "p_true" and by_name["truthfulqa-mc2"].split == "mc2"
    assert by_name["wikitext"].higher_is_better is False
    assert capability_task("arc-easy-3shot").shots == 3
    assert [t.name for t in capability_tasks("mmlu, wikitext")] == ["mmlu", "wikitext"]
    assert capability_task("mmlu", chat=False).describe() != capability_task("mmlu").describe()


def test_malformed_input_errors(tiny_llama):
    with pytest.raises(RefusalScopeError, match="unknown capability task 'mmlu-pro'"):
        capability_task("mmlu-pro")
    with pytest.raises(RefusalScopeError, match="no few-shot suffix"):
        capability_task("gsm8k-8shot")
    with pytest.raises(RefusalScopeError, match="chat template only"):
        capability_task("triviaqa", chat=False)
    with pytest.raises(RefusalScopeError, match="named twice"):
        capability_tasks(["mmlu", "mmlu"])
    with pytest.raises(RefusalScopeError, match="unknown scoring"):
        MultipleChoiceTask("t", "x", scoring="word")
    with pytest.raises(RefusalScopeError, match="shots must be"):
        MultipleChoiceTask("t", "x", shots=-1)
    with pytest.raises(RefusalScopeError, match="fewshot_split"):
        MultipleChoiceTask("t", "x", shots=2)
    task = MultipleChoiceTask("t", "x")
    with pytest.raises(RefusalScopeError, match="multiple-choice items, got a QAItem"):
        task.run(tiny_llama, [QAItem("a", "q", ("1",))])
    with pytest.raises(RefusalScopeError, match="no true"):
        task.run(tiny_llama, [MultipleChoiceItem("n", "q", ("a", "b"), (0, 0))])
    with pytest.raises(RefusalScopeError, match="no true"):
        task.run(tiny_llama, [MultipleChoiceItem("n", "q", ("a", "b", ""), (0, 0, 1))])
    with pytest.raises(RefusalScopeError, match="2 choices and 1 labels"):
        task.run(tiny_llama, [MultipleChoiceItem("n", "q", ("a", "b"), (1,))])
    with pytest.raises(RefusalScopeError, match="fewer than two non-empty choices"):
        task.run(tiny_llama, [MultipleChoiceItem("n", "q", ("a", " "), (1, 0))])
    with pytest.raises(RefusalScopeError, match="more than there are letters"):
        task.run(tiny_llama, [MultipleChoiceItem("n", "q", tuple("x" * 27), (1,) + (0,) * 26)])
    with pytest.raises(RefusalScopeError, match="batch_size"):
        task.run(tiny_llama, ITEMS, batch_size=0)
    with pytest.raises(RefusalScopeError, match="empty continuation"):
        continuation_logprobs(tiny_llama, [([1, 2], [[3], []])])
    with pytest.raises(RefusalScopeError, match="empty context"):
        continuation_logprobs(tiny_llama, [([], [[3]])])
    with pytest.raises(RefusalScopeError, match="no continuations"):
        continuation_logprobs(tiny_llama, [([1], [])])
    with pytest.raises(RefusalScopeError, match="question-answer items"):
        GSM8KTask().run(tiny_llama, [ITEMS[0]])
    with pytest.raises(RefusalScopeError, match="max_new_tokens"):
        TriviaQATask(max_new_tokens=0)
    with pytest.raises(RefusalScopeError, match="placeholder"):
        GSM8KTask(template="Solve step by step.")
    with pytest.raises(RefusalScopeError, match="window"):
        TextLossTask("w", "x", window=1)
    with pytest.raises(RefusalScopeError, match="text documents"):
        TextLossTask("w", "x").run(tiny_llama, [ITEMS[0]])
