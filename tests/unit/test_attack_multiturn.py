"""Multi-turn escalation on tiny random models: whole-conversation prompts, gates, resume."""

import json

import pytest
import torch

from refusalscope.attacks import AttackConfig
from refusalscope.attacks.multiturn import load_conversations, run_attacker, run_scripted
from refusalscope.errors import RefusalScopeError
from refusalscope.judges import JudgeVerdict
from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering

TINY_CHAT = dict(family="qwen2", seed=4, n_layers=2, d_model=32)  # the `chat` fixture's model (tests/unit/conftest.py)


def actadd(chat):
    return ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(5)), 0, 10.0)


class Killed(Exception):
    pass


def test_builtin_conversations_are_tied_to_behaviours():
    convs = load_conversations()
    assert len(convs) >= 6
    for c in convs:
        assert 3 <= len(c.turns) <= 6 and c.behaviour.startswith("harmbench-") and c.goal


def test_bad_conversation_files_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "refusalscope-multiturn", "conversations": [{"id": "x", "turns": ["hi"]}]}))
    with pytest.raises(RefusalScopeError, match="no 'behaviour_id'"):
        load_conversations(bad)
    with pytest.raises(RefusalScopeError, match="does not exist"):
        load_conversations(tmp_path / "missing.json")


def test_scripted_replies_see_the_whole_conversation(chat, tmp_path):
    convs = load_conversations(limit=2)
    summary = run_scripted(chat, AttackConfig("unsteered"), convs, tmp_path / "u", max_new_tokens=6, progress=False)
    first = summary["results"][0]
    assert len(first["turns"]) == len(convs[0].turns)
    # turn 3's reply is the model's reply to turns 1-3 with its own earlier replies in between
    history = []
    for t in first["turns"][:3]:
        history += [{"role": "user", "content": t["user"]}]
        expected = chat.generate([history], 6, progress=False).texts[0]
        assert t["reply"] == expected
        history += [{"role": "assistant", "content": t["reply"]}]
    by_turn = summary["refusal_by_turn"]
    assert [row["turn"] for row in by_turn] == list(range(1, max(len(c.turns) for c in convs) + 1))
    assert by_turn[0]["n"] == 2 and summary["success"]["n"] == 2


def test_gate_reads_every_turn_not_just_the_last(chat, tmp_path):
    """A threshold between the gate's score on the last turn alone and on the whole
    conversation: the gate fires in the multi-turn run, so the reply is steered."""
    conv = load_conversations(limit=1)
    inner = actadd(chat)
    for seed in range(20):
        gate = DirectionGate(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(seed)), 0)
        probe = Conditional(inner, gate, 0.0)
        plain = run_scripted(chat, AttackConfig("plain"), conv, tmp_path / f"p{seed}", max_new_tokens=4, progress=False)
        turns = plain["results"][0]["turns"]
        history = []
        for t in turns[:1]:
            history += [{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["reply"]}]
        second = history + [{"role": "user", "content": turns[1]["user"]}]
        whole = float(probe.decisions(chat, [second]).scores[0])
        alone = float(probe.decisions(chat, [turns[1]["user"]]).scores[0])
        if whole > alone + 1e-3:
            break
    else:
        pytest.skip("no gate direction separates the two prompts")
    gated = Steering([Conditional(inner, gate, (whole + alone) / 2)])
    assert not bool(gated.conditionals[0].decisions(chat, [turns[1]["user"]]).fired[0])
    out = run_scripted(chat, AttackConfig("gated", gated), conv, tmp_path / "g", max_new_tokens=4, progress=False)
    g = out["results"][0]["turns"]
    second_gated = [
        {"role": "user", "content": g[0]["user"]},
        {"role": "assistant", "content": g[0]["reply"]},
        {"role": "user", "content": g[1]["user"]},
    ]
    assert bool(gated.conditionals[0].decisions(chat, [second_gated]).fired[0])
    steered_reply = chat.generate([second_gated], 4, interventions=Steering([inner]), progress=False).texts[0]
    plain_reply = chat.generate([second_gated], 4, progress=False).texts[0]
    assert steered_reply != plain_reply  # the steering changes this reply, so the comparison means something
    assert g[1]["reply"] == steered_reply


def test_killed_scripted_run_resumes_without_repeating_turns(chat, tmp_path):
    convs = load_conversations(limit=3)
    whole = run_scripted(chat, AttackConfig("u"), convs, tmp_path / "whole", max_new_tokens=5, progress=False)

    def kill(turn):
        if turn == 2:
            raise Killed

    with pytest.raises(Killed):
        run_scripted(chat, AttackConfig("u"), convs, tmp_path / "k", max_new_tokens=5, progress=False, on_turn=kill)
    assert len(list((tmp_path / "k" / "state").glob("*.json"))) == 3
    seen = []
    resumed = run_scripted(
        chat, AttackConfig("u"), convs, tmp_path / "k", max_new_tokens=5, progress=False, on_turn=seen.append
    )
    assert seen[0] == 3  # turns 1 and 2 were not generated again
    key = lambda r: r["id"]  # noqa: E731
    for a, b in zip(sorted(whole["results"], key=key), sorted(resumed["results"], key=key)):
        assert a["turns"] == b["turns"]


class RefuseFirstTries:
    """Refuses every reply until it has refused `n` times, then never again."""

    name = "refuse-first"

    def __init__(self, n):
        self.left = n

    def judge(self, prompts, replies):
        out = []
        for _ in replies:
            out.append(JudgeVerdict(self.left > 0))
            self.left -= 1
        return out


@pytest.mark.parametrize(
    "refusals, max_backtracks, backtracks, refused",
    [
        pytest.param(2, 5, 2, False, id="backtracks-on-refusal"),  # retries the two refused turns, then succeeds
        pytest.param(100, 1, 1, True, id="stops-at-its-budget"),  # one retry, then every turn stays refused
    ],
)
def test_attacker_loop_backtracks_after_a_refusal_within_its_budget(
    chat, tmp_path, refusals, max_backtracks, backtracks, refused
):
    """A refused turn is dropped and retried while backtracks are left; once they are spent
    (or the judge stops refusing) the turns are kept, refused or not."""
    convs = load_conversations(limit=1)
    summary = run_attacker(
        chat,
        AttackConfig("u"),
        convs,
        tmp_path / "a",
        judge=RefuseFirstTries(refusals),
        max_turns=3,
        max_backtracks=max_backtracks,
        max_new_tokens=4,
        attacker_tokens=8,
        progress=False,
    )
    result = summary["results"][0]
    assert len(result["backtracks"]) == backtracks and all(b["refused"] for b in result["backtracks"])
    assert len(result["turns"]) == 3 and all(t["user"] for t in result["turns"])
    assert [bool(r) for r in result["refused"]] == [refused] * 3
    assert bool(result["success"]) is not refused
    assert summary["refusal_last_turn"]["value"] == float(refused)


def test_killed_attacker_run_resumes(chat, tmp_path):
    convs = load_conversations(limit=2)
    kw = dict(max_turns=3, max_backtracks=0, max_new_tokens=4, attacker_tokens=8, progress=False)
    whole = run_attacker(chat, AttackConfig("u"), convs, tmp_path / "w", **kw)

    def kill(cid, turn):
        if cid == convs[1].id and turn == 1:
            raise Killed

    with pytest.raises(Killed):
        run_attacker(chat, AttackConfig("u"), convs, tmp_path / "k", on_turn=kill, **kw)
    seen = []
    resumed = run_attacker(
        chat, AttackConfig("u"), convs, tmp_path / "k", on_turn=lambda c, t: seen.append((c, t)), **kw
    )
    assert seen == [(convs[1].id, 2), (convs[1].id, 3)]
    assert [r["turns"] for r in whole["results"]] == [r["turns"] for r in resumed["results"]]


def test_multiturn_errors(chat, tmp_path):
    with pytest.raises(RefusalScopeError, match="no conversations"):
        run_scripted(chat, AttackConfig("u"), [], tmp_path / "x")
    with pytest.raises(RefusalScopeError, match="max_turns"):
        run_attacker(chat, AttackConfig("u"), load_conversations(limit=1), tmp_path / "y", max_turns=0)
