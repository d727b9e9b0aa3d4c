"""The first-token judge checked against judged full replies, per sweep configuration."""

import warnings

import pytest

from refusalscope.errors import RefusalScopeError
from refusalscope.evaluation.first_token_check import first_token_agreement, sampled_for_check
from refusalscope.evaluation.grid import Grid, TaskSpec
from refusalscope.evaluation.sweep import run_sweep
from refusalscope.evaluation.tasks import RefusalTask
from refusalscope.judges.base import JudgeVerdict


class EverythingRefused:
    """A reply judge that calls every reply a refusal (what matters here is agreement)."""

    name = "all-refused"

    def judge(self, prompts, replies):
        return [JudgeVerdict(True) for _ in replies]


TINY_CHAT = dict(seed=4)  # the `chat` fixture's model (tests/unit/conftest.py)


def test_sampling_is_stable_and_near_the_rate():
    ids = [f"item-{i}" for i in range(4000)]
    picked = [i for i in ids if sampled_for_check(i, 4)]
    assert 850 < len(picked) < 1150
    assert picked == [i for i in ids if sampled_for_check(i, 4)]
    assert not any(sampled_for_check(i, 0) for i in ids[:50]) and all(sampled_for_check(i, 1) for i in ids[:50])


@pytest.mark.parametrize("threshold, agreement, flagged", [(-1e9, 1.0, False), (1e9, 0.0, True)])
def test_sweep_records_agreement_per_configuration_and_flags_low_cells(chat, tmp_path, threshold, agreement, flagged):
    token = chat.tokenizer("I", add_special_tokens=False)["input_ids"][0]
    task = RefusalTask(
        "jbb",
        "builtin/minimal-pairs",
        "harmful",
        max_new_tokens=4,
        judge=EverythingRefused(),
        refusal_token_ids=[token],
        threshold=threshold,
        check_every=1,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_sweep(chat, Grid([]), [TaskSpec(task, limit=6)], tmp_path / "r.db", batch_size=3, progress=False)
    rows = first_token_agreement(tmp_path / "r.db")
    assert len(rows) == 1 and rows[0].task == "jbb" and rows[0].agreement.n == 6
    assert rows[0].agreement.value == agreement and rows[0].flagged is flagged and rows[0].reply_rate == 1.0
    messages = [str(w.message) for w in caught if "first-token judge agrees" in str(w.message)]
    assert bool(messages) is flagged
    assert task.describe()["check_judge"] == "all-refused" and task.describe()["check_every"] == 1


def test_without_checks_nothing_is_generated(chat, tmp_path):
    token = chat.tokenizer("I", add_special_tokens=False)["input_ids"][0]
    task = RefusalTask("jbb", "builtin/minimal-pairs", "harmful", refusal_token_ids=[token], judge=EverythingRefused())
    run_sweep(chat, Grid([]), [TaskSpec(task, limit=4)], tmp_path / "r.db", batch_size=2, progress=False)
    assert first_token_agreement(tmp_path / "r.db") == []
    assert "check_every" not in task.describe()
    with pytest.raises(RefusalScopeError, match="check_every"):
        RefusalTask("x", "builtin/minimal-pairs", check_every=-1)


def test_pooled_agreement_sums_a_configurations_checked_items(chat, tmp_path):
    from refusalscope.evaluation.first_token_check import pooled_agreement

    token = chat.tokenizer("I", add_special_tokens=False)["input_ids"][0]
    common = dict(max_new_tokens=2, judge=EverythingRefused(), refusal_token_ids=[token], check_every=1)
    tasks = [
        TaskSpec(RefusalTask("harm", "builtin/minimal-pairs", "harmful", threshold=-1e9, **common), limit=3),
        TaskSpec(RefusalTask("safe", "builtin/minimal-pairs", "benign", threshold=1e9, **common), limit=5),
    ]
    run_sweep(chat, Grid([]), tasks, tmp_path / "r.db", batch_size=4, progress=False)
    pooled = pooled_agreement(tmp_path / "r.db")
    assert len(pooled) == 1 and pooled[0].task == "all" and pooled[0].agreement.n == 8
    assert pooled[0].agreement.value == 3 / 8 and pooled[0].flagged and pooled[0].first_token_rate == 3 / 8
    only_harm = pooled_agreement(tmp_path / "r.db", skip=lambda name: name == "safe")
    assert only_harm[0].agreement.value == 1.0 and only_harm[0].agreement.n == 3 and not only_harm[0].flagged
