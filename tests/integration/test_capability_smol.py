"""Capability tasks on the real SmolLM2-135M-Instruct with the shared benchmark files:
MMLU 0-shot, TruthfulQA MC1, GSM8K (short generations) and WikiText loss, small and fast."""

import math

import pytest
import torch

from refusalscope.evaluation.capability import capability_task, continuation_logprobs

SIZES = {"mmlu": 20, "truthfulqa-mc1": 20, "gsm8k": 3, "wikitext": 4}


@pytest.fixture(scope="module")
def runs(smol, data_dir):
    out = {}
    for name, n in SIZES.items():
        task = capability_task(name, gsm8k_max_new_tokens=32)
        items = task.items(data_dir, limit=n, seed=0)
        out[name] = (task, items, task.run(smol, items, batch_size=16))
    return out


def mean(results, metric):
    return sum(r.metrics[metric] for r in results) / len(results)


def test_one_result_per_item_with_finite_metrics(runs):
    for name, (task, items, results) in runs.items():
        assert [r.item_id for r in results] == [it.id for it in items], name
        assert len(results) == SIZES[name]
        for r in results:
            assert task.primary in r.metrics
            assert all(math.isfinite(v) for v in r.metrics.values()), (name, r.metrics)


def test_multiple_choice_scores_are_sane(runs):
    for name in ("mmlu", "truthfulqa-mc1"):
        _, items, results = runs[name]
        assert 0 <= mean(results, "correct") <= 1
        assert all(0 <= r.metrics["p_true"] <= 1 for r in results)
        assert all(r.output in it.choices for r, it in zip(results, items))
    # 135M parameters: MMLU near chance (0.25), but the scores must not be degenerate
    assert len({r.metrics["choice"] for r in runs["mmlu"][2]}) > 1


def test_gsm8k_and_wikitext(runs):
    _, _, results = runs["gsm8k"]
    assert all(r.output and r.metrics["n_tokens"] <= 32 for r in results)
    ce = [r.metrics["ce"] for r in runs["wikitext"][2]]
    assert all(1 < v < 8 for v in ce), ce


def test_kv_shared_scores_equal_full_forwards_on_smollm2(smol, runs):
    task, items, _ = runs["truthfulqa-mc1"]
    requests = [task.encode(smol, it)[:2] for it in items[:2]]
    fast = continuation_logprobs(smol, requests, batch_size=2)
    with torch.no_grad():
        for (context, conts), row in zip(requests, fast):
            for cont, value in zip(conts, row):
                ids = torch.tensor([list(context) + list(cont)])
                logp = torch.log_softmax(smol.model(input_ids=ids).logits[0, :-1].float(), -1)
                slow = float(logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]][len(context) - 1 :].sum())
                assert value == pytest.approx(slow, abs=2e-3)
