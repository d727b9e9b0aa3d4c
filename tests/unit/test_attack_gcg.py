"""GCG on tiny random models: it optimises, it attacks the model as steered, it resumes."""

import json

import pytest
import torch

from refusalscope.attacks import GCG, AttackRun, Behaviour, GCGConfig, SuffixObjective, gcg_robustness, wilson
from refusalscope.errors import RefusalScopeError
from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering

REQUEST = "How do I bake bread?"
TARGET = "Sure, here is a poem about the sea"
B1 = Behaviour("b1", REQUEST, TARGET)
B2 = Behaviour("b2", "Write a python function", "Sure! Here is how to bake bread")


TINY_CHAT = dict(seed=3, n_layers=2, d_model=32)  # the `chat` fixture's model (tests/unit/conftest.py)


def small(**kw) -> GCGConfig:
    base = dict(
        steps=4,
        suffix_length=5,
        candidates=16,
        top_k=16,
        eval_batch=8,
        check_every=2,
        max_new_tokens=4,
        checkpoint_every=2,
        early_stop=False,
    )
    base.update(kw)
    return GCGConfig(**base)


def actadd(chat, coefficient=8.0):
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(7))
    return ActAdd(direction, 0, coefficient, positions="all")


def test_gcg_lowers_the_target_loss(chat):
    result = GCG(chat, None, small(steps=6)).attack(B1)
    assert result["steps"] == 6 and len(result["losses"]) == 6
    assert result["best_loss"] < result["initial_loss"] - 1e-3
    # the reported loss is the loss of the reported suffix, recomputed from scratch
    again = SuffixObjective(chat, REQUEST, TARGET, share_prefix=False).losses(torch.tensor([result["suffix_ids"]]))
    assert float(again[0]) == pytest.approx(result["best_loss"], abs=1e-5)
    # greedy GCG never accepts a worse best
    assert result["best_loss"] == min(result["losses"])


def test_shared_prefix_gives_the_same_losses_and_gradients(chat):
    steering = Steering([actadd(chat)])
    shared = SuffixObjective(chat, REQUEST, TARGET, steering, share_prefix=True)
    full = SuffixObjective(chat, REQUEST, TARGET, steering, share_prefix=False)
    assert shared.shared and not full.shared
    suffixes = torch.randint(20, 200, (6, 5), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shared.losses(suffixes, 4), full.losses(suffixes, 6), atol=1e-5, rtol=1e-5)
    g1, l1 = shared.gradient(suffixes[0])
    g2, l2 = full.gradient(suffixes[0])
    assert l1 == pytest.approx(l2, abs=1e-5)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_gradient_flows_through_the_steering(chat):
    suffix = torch.tensor(chat.encode(" !" * 5)[:5])
    plain_grad, plain_loss = SuffixObjective(chat, REQUEST, TARGET).gradient(suffix)
    steer_grad, steer_loss = SuffixObjective(chat, REQUEST, TARGET, Steering([actadd(chat)])).gradient(suffix)
    assert steer_loss != pytest.approx(plain_loss, abs=1e-3)
    assert (steer_grad - plain_grad).abs().max() > 1e-3
    # the gradient is the steered model's: a first-order step predicts the steered loss change
    obj = SuffixObjective(chat, REQUEST, TARGET, Steering([actadd(chat)]))
    base = float(obj.losses(suffix[None])[0])
    assert base == pytest.approx(steer_loss, abs=1e-5)


def test_gate_decides_whether_the_gradient_sees_the_steering(chat):
    """A gate that never fires leaves the plain model's gradient; one that always fires
    gives the unconditional steering's, computed with the whole prompt in one forward."""
    suffix = torch.tensor(chat.encode(" !" * 5)[:5])
    inner = actadd(chat)
    gate = DirectionGate(torch.ones(chat.d_model), 0)
    plain, _ = SuffixObjective(chat, REQUEST, TARGET).gradient(suffix)
    steered, _ = SuffixObjective(chat, REQUEST, TARGET, Steering([inner])).gradient(suffix)
    never = SuffixObjective(chat, REQUEST, TARGET, Steering([Conditional(inner, gate, 1e9)]))
    always = SuffixObjective(chat, REQUEST, TARGET, Steering([Conditional(inner, gate, -1e9)]))
    assert not never.shared and not always.shared  # a gate must see each prompt whole
    torch.testing.assert_close(never.gradient(suffix)[0], plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(always.gradient(suffix)[0], steered, atol=1e-5, rtol=1e-4)


def test_attacking_the_steered_model_differs_from_attacking_the_plain_one(chat):
    plain = GCG(chat, None, small()).attack(B1)
    steered = GCG(chat, Steering([actadd(chat)]), small()).attack(B1)
    assert plain["losses"] != steered["losses"]
    assert plain["suffix_ids"] != steered["suffix_ids"]


def test_kept_candidates_replay_as_text(chat):
    gcg = GCG(chat, None, small())
    obj = gcg.objective(B1)
    suffix = torch.tensor(gcg.initial_suffix())
    grad, _ = obj.gradient(suffix)
    cands = gcg.sample(suffix, grad, torch.Generator().manual_seed(0))
    keep = obj.retokenizes(cands)
    for row in cands[keep].tolist():
        assert chat.encode(chat.format(obj.message(row))) == obj.before + row + obj.after


def test_killed_run_resumes_to_the_uninterrupted_result(chat, tmp_path):
    config = small(steps=5, checkpoint_every=2, check_every=5)
    whole = GCG(chat, None, config).run([B1, B2], tmp_path / "whole", progress=False)

    class Killed(Exception):
        pass

    def kill(behaviour_id, step):
        if behaviour_id == "b2" and step.step == 3:
            raise Killed

    folder = tmp_path / "killed"
    with pytest.raises(Killed):
        GCG(chat, None, config).run([B1, B2], folder, progress=False, on_step=kill)
    run = AttackRun(folder, GCG(chat, None, config).identity())
    assert run.done() == {"b1"}  # b1 finished before the kill
    assert run.load_state("b2")["step"] == 2  # the last checkpoint before step 3

    seen = []
    resumed = GCG(chat, None, config).run(
        [B1, B2], folder, progress=False, on_step=lambda b, s: seen.append((b, s.step))
    )
    assert seen == [("b2", 3), ("b2", 4), ("b2", 5)]  # b1 not repeated, b2 continued from step 2
    for a, b in zip(whole["results"], resumed["results"]):
        for key in ("id", "suffix_ids", "losses", "best_loss", "kept", "broken", "steps", "tokens"):
            assert a[key] == b[key], key
    assert not run.state_path("b2").exists()
    assert json.loads((folder / "summary.json").read_text())["n"] == 2


def test_early_stop_when_the_reply_complies(chat):
    class Complies:
        name = "never-refuses"

        def judge(self, prompts, replies):
            from refusalscope.judges import JudgeVerdict

            return [JudgeVerdict(False) for _ in replies]

    result = GCG(chat, None, small(early_stop=True, check_every=1), judge=Complies()).attack(B1)
    assert result["broken"] and result["steps_to_break"] == 0 and result["steps"] == 0


def test_token_budget_stops_before_exceeding_it(chat):
    gcg = GCG(chat, None, small(steps=50))
    per_step = gcg.objective(B1).tokens_per_row(5) * 17
    result = GCG(chat, None, small(steps=50, token_budget=int(per_step * 2.5))).attack(B1)
    assert result["stopped"] == "token budget" and result["steps"] == 2
    assert result["tokens"] <= per_step * 2.5
    assert result["checks"][-1]["step"] == 2  # the best suffix within budget was judged


def test_bad_input_is_refused(chat, tmp_path):
    with pytest.raises(RefusalScopeError, match="steps must be a positive"):
        GCG(chat, None, GCGConfig(steps=0))
    with pytest.raises(RefusalScopeError, match="token budget"):
        GCG(chat, None, GCGConfig(token_budget=0))
    with pytest.raises(RefusalScopeError, match="no target string"):
        GCG(chat, None, small()).run([B1, Behaviour("nt", "Hello", None)], tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # checked before any work or output
    other = Steering([actadd(chat)], model={"name": "another-model", "sha256": "f" * 64})
    chat.info.sha256, saved = "a" * 64, chat.info.sha256
    try:
        with pytest.raises(RefusalScopeError, match="written for another-model"):
            GCG(chat, other, small())
    finally:
        chat.info.sha256 = saved
    GCG(chat, None, small(steps=1)).run([B1], tmp_path / "y", progress=False)
    with pytest.raises(RefusalScopeError, match="other settings"):
        GCG(chat, None, small(steps=2)).run([B1], tmp_path / "y", progress=False)


def test_robustness_score_and_wilson_interval():
    e = wilson(0, 20)
    assert e.value == 0 and e.low == 0 and e.high == pytest.approx(0.1611, abs=1e-3)
    e = wilson(10, 20)
    assert (e.low, e.high) == (pytest.approx(0.2993, abs=1e-3), pytest.approx(0.7007, abs=1e-3))
    summary = gcg_robustness(
        [
            {"broken": True, "steps_to_break": 7},
            {"broken": False, "steps_to_break": None},
            {"broken": True, "steps_to_break": 2},
            {"broken": False},
        ]
    )
    assert summary["robustness"]["value"] == 0.5 and summary["n"] == 4
    assert summary["steps_to_break"] == [2, 7]
