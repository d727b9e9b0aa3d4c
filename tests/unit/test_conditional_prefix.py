"""Gated steering over a shared prefix: the chat template's prefix is computed once and each
prompt's suffix runs over its cache, and the gate still decides on the whole prompt.

A conditional whose edits stay out of the prefix (generated tokens, or the end of the
prompt) is prefix-safe: first-token logits, greedy replies and the gate's counts are the
same with the prefix shared or not, for every gate kind and reduction. One that steers the
prompt from its start is not, and stays correct by running whole prompts."""

import pytest
import torch

from refusalscope.errors import RefusalScopeError
from refusalscope.models.hooks import ForwardContext
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import ActAdd, Conditional, DirectionGate, FeatureGate, ProbeGate, Steering
from refusalscope.testing import MIXED_LENGTH_PROMPTS, minimal_pair_refusal_tasks

TINY_CHAT = dict(family="qwen2", seed=7)
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = MIXED_LENGTH_PROMPTS
SYSTEM = "You are a careful and helpful assistant."
GATE_LAYER = 1


def make_sae(d_in: int, architecture: str = "standard") -> SAE:
    k = 16 if architecture == "topk" else None
    sae = SAE.random(SAEConfig(d_in=d_in, d_sae=128, architecture=architecture, k=k, layer=GATE_LAYER), seed=3)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(128, generator=torch.Generator().manual_seed(4)) * 0.5)
        if sae.threshold is not None:
            sae.threshold.fill_(0.2)
    return sae


def make_gate(kind: str, chat):
    g = torch.Generator().manual_seed(11)
    if kind.startswith("feature"):
        sae = make_sae(chat.d_model, "topk" if kind == "feature-topk" else "jumprelu")
        scores = sae.encode(torch.randn(256, chat.d_model, generator=g))
        return FeatureGate(sae, int((scores > 0).float().mean(0).argmax()))  # a latent that is often active
    if kind == "direction":
        return DirectionGate(torch.randn(chat.d_model, generator=g), GATE_LAYER)
    if kind == "probe":
        return ProbeGate(torch.randn(chat.d_model, generator=g), 0.3, GATE_LAYER)
    return ProbeGate(torch.randn(4, generator=g), -0.2, sae=make_sae(chat.d_model), features=[1, 5, 9, 30])


def push(chat, positions, layer=2, scale=30.0):
    vec = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0)) * scale
    return ActAdd(vec, layer, 1.0, positions=positions)


def gated(chat, gate_kind, reduce, gate_positions, inner_positions):
    cond = Conditional(
        push(chat, inner_positions), make_gate(gate_kind, chat), 0.0, reduce=reduce, positions=gate_positions
    )
    scores = cond.decisions(chat, PROMPTS, system=SYSTEM).scores.sort().values
    # half the prompts fire; halfway between two scores, so that no decision is a tie
    cond.threshold = float(scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    return cond


def run(chat, interventions, share: bool, prompts=PROMPTS):
    """(first-token logits, greedy replies, gate (fired, seen)) with the prefix shared or not."""
    items = interventions if isinstance(interventions, list) else [interventions]
    conds = [i for i in items if isinstance(i, Conditional)]
    for c in conds:
        c.reset_stats()
    chat.share_prefix = share
    try:
        logits = chat.next_token_logits(prompts, batch_size=4, system=SYSTEM, interventions=interventions)
        replies = chat.generate(
            prompts, max_new_tokens=5, batch_size=4, system=SYSTEM, interventions=interventions, progress=False
        ).token_ids
    finally:
        chat.share_prefix = True
    return logits, replies, [(c.fired, c.seen) for c in conds]


@pytest.fixture
def prefix_runs(chat, monkeypatch):
    """Counts the prefill forwards that continued a shared prefix."""
    calls = []
    original = type(chat).forward_over_cache

    def spy(self, input_ids, attention_mask, position_ids, cache, ctx):
        calls.append(input_ids.shape)
        return original(self, input_ids, attention_mask, position_ids, cache, ctx)

    monkeypatch.setattr(type(chat), "forward_over_cache", spy)
    return calls


@pytest.fixture
def gate_scores(monkeypatch):
    """The per-prompt gate scores of every decision made, in order."""
    seen = []
    original = Conditional._decide

    def spy(self, scores, ctx, positions):
        state = original(self, scores, ctx, positions)
        seen.append(state.scores[ctx.rows].clone())
        return state

    monkeypatch.setattr(Conditional, "_decide", spy)
    return seen


@pytest.mark.parametrize("gate_kind", ["feature", "feature-topk", "direction", "probe", "sparse-probe"])
@pytest.mark.parametrize("reduce", ["max", "mean", "last"])
@pytest.mark.parametrize("gate_positions", ["prompt", "post_instruction"])
@pytest.mark.parametrize("inner_positions", ["post_instruction", "generated"])
def test_gated_prefix_sharing_is_exact(
    chat, prefix_runs, gate_scores, gate_kind, reduce, gate_positions, inner_positions
):
    cond = gated(chat, gate_kind, reduce, gate_positions, inner_positions)
    gate_scores.clear()
    prefix_runs.clear()
    assert cond.prefix_safe
    tokens = chat.encode_prompts(PROMPTS, SYSTEM)
    with chat.attached(cond):
        assert chat.shared_prefix(tokens) > 8  # the system prompt and the template
    shared = run(chat, cond, share=True)
    assert prefix_runs  # the suffixes really ran over the shared prefix's cache
    prefix_runs.clear()
    shared_scores = list(gate_scores)
    gate_scores.clear()
    whole = run(chat, cond, share=False)
    assert not prefix_runs
    assert len(shared_scores) == len(gate_scores) == 4  # two batches, logits and replies
    assert all(torch.equal(a, b) for a, b in zip(shared_scores, gate_scores))  # bit-identical gate scores
    assert torch.equal(shared[0], whole[0])
    assert shared[1] == whole[1]
    assert shared[2] == whole[2] == [(whole[2][0][0], 2 * len(PROMPTS))]  # logits and generate each see every prompt
    assert 0 < whole[2][0][0] < 2 * len(PROMPTS)  # some prompts fired, some did not
    # and the decisions are the ones the gate computes offline, steering exactly the fired prompts
    fired = cond.decisions(chat, PROMPTS, system=SYSTEM).fired
    plain = run(chat, None, share=False)
    always = run(chat, cond.interventions[0], share=False)
    for i, f in enumerate(fired.tolist()):
        reference = always if f else plain
        assert torch.equal(shared[0][i], reference[0][i]) and shared[1][i] == reference[1][i]
    if inner_positions == "post_instruction":
        assert any(not torch.equal(always[0][i], plain[0][i]) for i in range(len(PROMPTS)) if fired[i])


def test_prompt_steering_stays_whole_prompt_and_correct(chat, prefix_runs):
    """An edit of prompt tokens from the start would have to steer the shared prefix for the
    rows that fire: such a conditional is not prefix-safe, and is still correct."""
    tokens = chat.encode_prompts(PROMPTS, SYSTEM)
    for inner in ("prompt", "all", [2, 3], [0, -1]):
        cond = gated(chat, "direction", "max", "prompt", inner)
        prefix_runs.clear()  # the offline decisions of `gated` share the prefix: the gate alone edits nothing
        assert not cond.prefix_safe
        assert not Steering([cond]).prefix_safe
        with chat.attached(cond):
            assert chat.shared_prefix(tokens) == 0
        got = run(chat, cond, share=True)
        assert not prefix_runs
        fired = cond.decisions(chat, PROMPTS, system=SYSTEM).fired
        plain, always = run(chat, None, share=False), run(chat, cond.interventions[0], share=False)
        for i, f in enumerate(fired.tolist()):
            reference = always if f else plain
            assert torch.equal(got[0][i], reference[0][i]) and got[1][i] == reference[1][i]
    # a safe and an unsafe edit behind one gate: unsafe
    both = Conditional([push(chat, "generated"), push(chat, "prompt")], make_gate("direction", chat), 0.0)
    assert not both.prefix_safe


def test_prefix_safety_of_nested_and_mixed_configurations(chat):
    gate = make_gate("direction", chat)
    inner = Conditional(push(chat, [-1, -2]), gate, 0.0)
    outer = Conditional([inner, push(chat, "generated")], gate, 1.0)
    assert inner.prefix_safe and outer.prefix_safe
    assert inner.prefix_tail(chat) == outer.prefix_tail(chat) == 2
    post = Conditional(push(chat, "post_instruction"), gate, 0.0)
    assert post.prefix_tail(chat) == len(chat.eoi_ids)
    steering = Steering([push(chat, "all"), post])  # an ungated edit of every token is prefix-safe on its own
    assert steering.prefix_safe and steering.prefix_tail(chat) == len(chat.eoi_ids)


def test_the_prefix_leaves_the_steered_end_of_identical_prompts_out(chat, prefix_runs):
    """Identical prompts share all but their last token; an edit of the last k prompt tokens
    then needs the prefix to stop k tokens short of the end."""
    prompts = ["Write a poem about the sea and the sky, please"] * 4
    tokens = chat.encode_prompts(prompts, SYSTEM)
    assert chat.shared_prefix(tokens) == min(len(t) for t in tokens) - 1
    for inner in ("post_instruction", [-1, -7]):
        cond = Conditional(push(chat, inner), make_gate("direction", chat), -1e9)  # always fires
        tail = cond.prefix_tail(chat)
        assert tail == (len(chat.eoi_ids) if inner == "post_instruction" else 7)
        with chat.attached(cond):
            assert chat.shared_prefix(tokens) == min(len(t) for t in tokens) - tail
        shared, whole = run(chat, cond, share=True, prompts=prompts), run(chat, cond, share=False, prompts=prompts)
        assert prefix_runs
        assert torch.equal(shared[0], whole[0]) and shared[1] == whole[1] and shared[2] == whole[2]
        always = run(chat, cond.interventions[0], share=False, prompts=prompts)
        assert torch.equal(shared[0], always[0])


def test_residual_reads_after_a_gated_prefix(chat, prefix_runs):
    """iter_residual runs the suffixes over the prefix's cache in 'forward' phase: the gate
    decides there too."""
    cond = gated(chat, "probe", "mean", "prompt", "post_instruction")
    prefix_runs.clear()
    got = {}
    for share in (True, False):
        chat.share_prefix = share
        try:
            cond.reset_stats()
            got[share] = chat.residual(
                PROMPTS, [3], "post_instruction", batch_size=4, system=SYSTEM, interventions=cond, progress=False
            )[3]
        finally:
            chat.share_prefix = True
        assert cond.seen == len(PROMPTS)
        assert bool(prefix_runs) == share
        prefix_runs.clear()
    assert torch.equal(got[True], got[False])


def test_a_continuation_without_its_prefix_is_an_error_unless_the_gate_reads_only_the_suffix(chat):
    tokens = chat.encode_prompts(PROMPTS[:2], SYSTEM)
    shared = chat.shared_prefix(tokens)
    batch = chat.pad(tokens)
    for positions, fails in (("prompt", True), ("post_instruction", False)):
        cond = Conditional(push(chat, "generated"), make_gate("direction", chat), 0.0, positions=positions)
        cache, suffix, mask, ids = chat._prefix_and_suffix(batch, shared, tokens, chat.new_batch_id())
        ctx = ForwardContext(mask, mask.sum(-1), shared, torch.arange(2), chat.new_batch_id(), "prefill")
        with chat.attached(cond):
            if fails:
                with pytest.raises(RefusalScopeError, match="did not see"):
                    chat.forward_over_cache(suffix.input_ids, mask, ids, cache, ctx)
            else:
                chat.forward_over_cache(suffix.input_ids, mask, ids, cache, ctx)
                assert cond.seen == 2


def test_gcg_shares_the_prefix_under_a_gate_that_reads_it(chat):
    """GCG computes the template + request once per behaviour and scores candidates over it;
    the gate reads the request in that prefix (remembered under the prefix forward's id)."""
    from refusalscope.attacks import SuffixObjective

    request, target = "Explain how to pick a lock", "Sure, here is how"
    suffixes = torch.randint(20, 200, (6, 5), generator=torch.Generator().manual_seed(0))
    for positions, inner in (("prompt", "post_instruction"), ("post_instruction", "generated")):
        cond = Conditional(
            push(chat, inner, layer=2), make_gate("direction", chat), 0.0, reduce="mean", positions=positions
        )
        steering = Steering([cond])
        full = SuffixObjective(chat, request, target, steering, share_prefix=False)
        assert not full.shared
        full.losses(suffixes, 6)
        assert cond._state is not None
        scores = cond._state.scores[:6].sort().values  # the suffixes move the mean: some rows fire
        cond.threshold = float(scores[2] + scores[3]) / 2
        losses = {}
        for share in (True, False):
            objective = SuffixObjective(chat, request, target, steering, share_prefix=share)
            assert objective.shared == share
            cond.reset_stats()
            losses[share] = objective.losses(suffixes, 4)
            fired = cond.fired
            assert 0 < fired < 6 and cond.seen == 6
            losses[share, "grad"] = objective.gradient(suffixes[0])
        assert torch.equal(losses[True], losses[False])
        torch.testing.assert_close(losses[True, "grad"][0], losses[False, "grad"][0], atol=1e-6, rtol=1e-5)
        assert losses[True, "grad"][1] == pytest.approx(losses[False, "grad"][1], abs=1e-6)
        unsteered = SuffixObjective(chat, request, target, share_prefix=False).losses(suffixes, 6)
        assert 0 < int((losses[True] != unsteered).sum()) < 6


def test_sweep_results_of_a_gated_configuration_do_not_depend_on_prefix_sharing(chat, tmp_path, monkeypatch):
    """The stored results of a sweep with gated configurations (first-token refusal scores,
    reply checks, example replies, gate counts) are the same with the gated prefills sharing
    the template's prefix, and with them running whole prompts as before."""
    from refusalscope.evaluation.grid import GateSpec, Grid, Method
    from refusalscope.evaluation.store import ResultsStore
    from refusalscope.evaluation.sweep import run_sweep

    g = torch.Generator().manual_seed(0)
    vec = torch.randn(chat.d_model, generator=g) * 3
    gate = GateSpec(DirectionGate(torch.randn(chat.d_model, generator=g), 1), threshold=0.006, reduce="mean")
    grid = Grid([Method.actadd(vec, 2, [1.0, 4.0], positions="post_instruction", conditional=(False, True))], gate=gate)
    tasks = minimal_pair_refusal_tasks(chat)
    gated = [cfg for cfg in grid.configurations(chat) if cfg.conditional]
    assert gated and all(cfg.interventions.prefix_safe for cfg in gated)

    def results(path):
        with ResultsStore(path) as db:
            rows = sorted(
                (r["config_id"], r["task"], r["item_id"], r["metric"], r["value"], r["output"]) for r in db.rows()
            )
            counts = db.conn.execute(
                "SELECT config_id, task, SUM(fired), SUM(seen) FROM gates GROUP BY config_id, task"
            )
            return rows, sorted(tuple(r) for r in counts)

    calls = []
    original = type(chat).forward_over_cache

    def spy(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(type(chat), "forward_over_cache", spy)
    monkeypatch.setattr(chat, "min_shared_prefix", 2)  # no system prompt: the tiny template's prefix is short
    run_sweep(chat, grid, tasks, tmp_path / "shared.db", batch_size=3, progress=False)
    shared_calls = len(calls)
    with monkeypatch.context() as m:  # gates as before this change: never prefix-safe
        m.setattr(Conditional, "prefix_safe", property(lambda self: False))
        run_sweep(chat, grid, tasks, tmp_path / "whole.db", batch_size=3, progress=False)
    assert shared_calls > len(calls) - shared_calls > 0  # the gated configurations shared the prefix too
    shared, whole = results(tmp_path / "shared.db"), results(tmp_path / "whole.db")
    assert shared == whole
    counts = shared[1]
    assert sum(f for *_, f, _ in counts) > 0 and sum(f for *_, f, _ in counts) < sum(s for *_, s in counts)


@pytest.mark.parametrize("gate_kind", ["feature", "probe"])
@pytest.mark.parametrize("reduce", ["max", "mean", "last"])
def test_offline_decisions_share_the_prefix_and_match(chat, prefix_runs, gate_kind, reduce):
    cond = Conditional(push(chat, "all"), make_gate(gate_kind, chat), 0.0, reduce=reduce)  # not prefix-safe itself
    shared = cond.decisions(chat, PROMPTS, batch_size=4, system=SYSTEM)
    assert prefix_runs  # the gate alone edits nothing: its forwards share the prefix
    prefix_runs.clear()
    chat.share_prefix = False
    try:
        whole = cond.decisions(chat, PROMPTS, batch_size=4, system=SYSTEM)
    finally:
        chat.share_prefix = True
    assert not prefix_runs
    assert torch.equal(shared.scores, whole.scores) and torch.equal(shared.fired, whole.fired)
    assert cond.seen == 0  # offline decisions are not counted
