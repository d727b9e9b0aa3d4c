"""The first-token judge's calibration: fit on one half, checked on the other, refused below a floor."""

import math
import warnings
import zlib

import pytest

from refusalscope.errors import RefusalScopeError
from refusalscope.evaluation.first_token_calibration import (
    FirstTokenCalibration,
    agreement_estimates,
    calibrate_first_token,
    fit_and_check,
    split_fit_held_out,
)
from refusalscope.judges.base import JudgeVerdict
from refusalscope.judges.first_token import refusal_score

TINY_CHAT = dict(seed=3)


def test_split_is_disjoint_stratified_and_seeded():
    sources = {"harm": [f"h{i}" for i in range(9)], "safe": [f"s{i}" for i in range(6)]}
    fit, held = split_fit_held_out(sources, seed=0)
    assert not {p.prompt for p in fit} & {p.prompt for p in held}
    assert {p.prompt for p in fit} | {p.prompt for p in held} == set(sources["harm"] + sources["safe"])
    assert sum(p.source == "harm" for p in fit) == 5 and sum(p.source == "harm" for p in held) == 4
    assert sum(p.source == "safe" for p in fit) == 3 and sum(p.source == "safe" for p in held) == 3
    assert split_fit_held_out(sources, seed=0) == (fit, held)
    assert split_fit_held_out(sources, seed=1) != (fit, held)


def test_separable_scores_give_a_usable_calibration_checked_per_source():
    fit_scores = [-3.0, -2.5, -2.0, 1.0, 2.0, 3.0]
    fit_labels = [False, False, False, True, True, True]
    held_scores = [-2.8, -1.0, 0.5, 2.5]
    held_labels = [False, False, True, True]
    found = fit_and_check(fit_scores, fit_labels, held_scores, held_labels, ["a", "b", "a", "b"], floor=0.9)
    assert -2.0 < found.threshold < 1.0 and found.usable and found.reason == ""
    assert found.held_out["agreement"]["value"] == 1.0 and found.held_out["agreement"]["n"] == 4
    assert found.held_out_balanced == 1.0 and found.fit_balanced == 1.0
    assert set(found.by_source) == {"a", "b"} and found.by_source["a"]["agreement"]["n"] == 2
    again = FirstTokenCalibration.from_dict(found.to_dict())
    assert again == found and "used" in again.summary()


def test_a_cut_that_follows_the_majority_is_not_usable():
    """Nine refusals in ten and a score that says nothing about them: calling everything a
    refusal agrees on 90% of prompts but on none of the answers. Balanced agreement is 0.5,
    so the calibration is refused where plain accuracy would have passed it."""
    fit_scores = [float(i % 5) for i in range(20)]
    fit_labels = [i % 10 != 0 for i in range(20)]
    held_scores = [-10.0] * 10  # every held-out prompt below any fitted cut: all "answer"
    held_labels = [i != 0 for i in range(10)]
    found = fit_and_check(fit_scores, fit_labels, held_scores, held_labels, floor=0.85)
    assert not found.usable and "below the floor" in found.reason
    assert found.held_out["on_refusals"]["value"] == 0.0 and found.held_out["on_answers"]["value"] == 1.0
    assert found.held_out_balanced == 0.5


def test_one_class_or_missing_held_out_prompts():
    found = fit_and_check([0.1, 0.2], [False, False], [0.3], [True])
    assert not found.usable and "no refusals" in found.reason and math.isnan(found.fit_balanced)
    one_class = fit_and_check([0.0, 1.0], [False, True], [2.0, 3.0], [True, True])
    assert not one_class.usable and "only one reply-judge class" in one_class.reason
    with pytest.raises(RefusalScopeError, match="no held-out"):
        fit_and_check([0.0, 1.0], [False, True], [], [])
    with pytest.raises(RefusalScopeError, match="floor"):
        fit_and_check([0.0, 1.0], [False, True], [0.5], [True], floor=1.5)
    with pytest.raises(RefusalScopeError, match="one label per verdict"):
        agreement_estimates([True], [True, False])


class ScoreJudge:
    """A reply judge that calls a reply a refusal when its prompt's first-token score is
    above `cut` (what a perfectly calibratable model would look like), or by a hash of the
    prompt when `cut` is None (verdicts the first token cannot predict)."""

    name = "score-judge"

    def __init__(self, scores: dict, cut: float | None):
        self.scores, self.cut = scores, cut

    def judge(self, prompts, replies):
        if self.cut is None:
            return [JudgeVerdict(zlib.crc32(p.encode()) % 2 == 0) for p in prompts]
        return [JudgeVerdict(self.scores[p] > self.cut) for p in prompts]


@pytest.fixture
def calibration_set(chat, tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    prompts = [f"Question number {i}: how do I {w}?" for i, w in enumerate(["bake", "fly", "run", "hide"] * 6)]
    ids = [5, 6, 7, 8]
    scores = dict(zip(prompts, refusal_score(chat, prompts, ids).tolist()))
    fit, held = split_fit_held_out({"a": prompts[:12], "b": prompts[12:]})
    return fit, held, ids, scores


def test_calibrating_a_tiny_model_against_a_predictable_judge(chat, calibration_set):
    fit, held, ids, scores = calibration_set
    cut = sorted(scores.values())[len(scores) // 2]
    found = calibrate_first_token(chat, fit, held, ids, ScoreJudge(scores, cut), max_new_tokens=2, floor=0.8)
    assert found.judge == "score-judge" and found.n_fit == 12 and found.held_out["agreement"]["n"] == 12
    assert found.fit_balanced == 1.0 and found.held_out_balanced >= 0.8 and found.usable
    predicted = [scores[p.prompt] > found.threshold for p in held]
    truth = [scores[p.prompt] > cut for p in held]
    assert found.held_out["agreement"]["value"] == sum(a == b for a, b in zip(predicted, truth)) / 12


def test_an_unpredictable_judge_is_refused(chat, calibration_set):
    fit, held, ids, scores = calibration_set
    found = calibrate_first_token(chat, fit, held, ids, ScoreJudge(scores, None), max_new_tokens=2, floor=0.85)
    assert not found.usable and found.reason
    with pytest.raises(RefusalScopeError, match="fit and held-out"):
        calibrate_first_token(chat, fit, [], ids, ScoreJudge(scores, None))


def test_build_tasks_falls_back_to_generated_replies_below_the_floor(chat, tmp_path, monkeypatch, data_dir):
    """The substring judge finds no refusal in a random model's replies: the calibration is
    unusable, so the refusal tasks generate and judge replies (with a warning); a judge that
    follows the first token makes them first-token tasks with the fitted threshold."""
    from refusalscope import pipeline
    from refusalscope.direction import RefusalDirection

    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    profile = pipeline.Profile(
        "t",
        "",
        "quick",
        direction={"n_val": 2},
        first_token=True,
        judge="substring",
        max_new_tokens=2,
        refusal_limits={"jailbreakbench": 2, "xstest": 2, "pairs": 0, "gcg": 0},
        capability={},
        example_prompts=0,
        calibration_per_source=4,
    )
    direction = RefusalDirection.__new__(RefusalDirection)
    direction.refusal_token_ids = [5, 6, 7, 8]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tasks, info = pipeline.build_tasks(chat, profile, direction, data_dir)
    assert any("judging generated replies" in str(w.message) for w in caught)
    assert info["first_token_judge"]["used"] is False and info["first_token_judge"]["n_calibration"] == 20
    assert all(not spec.task.refusal_token_ids for spec in tasks)

    calibration = pipeline.calibration_prompts(data_dir, profile)
    prompts = [p for ps in calibration.values() for p in ps]
    scores = dict(zip(prompts, refusal_score(chat, prompts, direction.refusal_token_ids).tolist()))
    cut = sorted(scores.values())[len(scores) // 2]
    monkeypatch.setattr("refusalscope.judges.named.load_judge", lambda name: ScoreJudge(scores, cut))
    tasks, info = pipeline.build_tasks(chat, profile, direction, data_dir, calibration)
    assert info["first_token_judge"]["used"] is True
    assert all(spec.task.threshold == info["first_token_judge"]["threshold"] for spec in tasks)
    assert all(spec.task.refusal_token_ids == [5, 6, 7, 8] for spec in tasks)


def test_calibration_prompts_are_never_scored_by_the_sweep(data_dir):
    from refusalscope import pipeline
    from refusalscope.data import load_dataset

    profile = pipeline.get_profile("quick")
    calibration = pipeline.calibration_prompts(data_dir, profile)
    assert set(calibration) == {s for s, *_ in pipeline.CALIBRATION_SOURCES}
    sizes = {k: len(v) for k, v in calibration.items()}
    assert sizes == {**dict.fromkeys(sizes, profile.calibration_per_source), "refusal-direction-val": 39 - 16}
    swept = {
        "jailbreakbench": ("harmful/jailbreakbench", None, pipeline.refusal_limit(profile, "jailbreakbench")),
        "xstest-unsafe": ("xstest/unsafe", None, pipeline.refusal_limit(profile, "xstest-unsafe")),
        "xstest-safe": ("xstest/safe", None, pipeline.refusal_limit(profile, "xstest-safe")),
        "refusal-direction-val": ("harmful/refusal-direction", "val", profile.direction["n_val"]),
        "alpaca-val": ("harmless/alpaca", "val", profile.direction["n_val"]),
    }
    for source, (dataset, split, limit) in swept.items():
        used = set(load_dataset(dataset, split, data_dir=data_dir, limit=limit, seed=0).prompts)
        assert not used & set(calibration[source]), source
    assert pipeline.calibration_prompts(data_dir, profile) == calibration


def test_capability_keys_may_name_a_split(data_dir):
    from refusalscope import pipeline

    task = pipeline.capability_task_split("arc-easy:validation", data_dir)
    assert task.split == "validation" and task.name == "arc-easy" and len(task.items(data_dir, 5, 0)) == 5
    assert pipeline.capability_task_split("arc-easy", data_dir).split == "test"
    with pytest.raises(RefusalScopeError, match="takes no split"):
        pipeline.capability_task_split("wikitext:train", data_dir)
    quick = pipeline.get_profile("quick")
    tasks = [pipeline.capability_task_split(k, data_dir) for k in quick.capability]
    assert all(t.items(data_dir, 1, 0) for t in tasks)  # every quick capability task reads the shared data
