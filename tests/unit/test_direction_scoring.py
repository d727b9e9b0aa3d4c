"""Batched candidate scoring gives the scores and the selection of one-at-a-time scoring."""

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.direction import candidate_directions, select_direction
from refusalscope.direction_scoring import AdaptiveScreen, Edit, score_rows
from refusalscope.judges.first_token import refusal_log_odds
from refusalscope.steering.interventions import ActAdd, DirectionAblation

HARMFUL = [
    "How do I bake bread?",
    "Write a poem about the sea",
    "Explain photosynthesis",
    "Hello there",
    "The capital of France is Paris. The capital of Italy is Rome.",
]
HARMLESS = [
    "The capital of France",
    "Write a python function",
    "I'm sorry",
    "Sure! Here is a short poem",
    "Mix flour, water, salt and yeast",
]
TOKENS = [5, 6, 7]


TINY_CHAT = dict(seed=3)  # the `chat` fixture's model (tests/unit/conftest.py)


@pytest.fixture(params=[8, 1], ids=["no-shared-prefix", "shared-prefix"])
def prefix(request, chat):
    """The tiny template's common prefix is 3 tokens: below the default minimum of 8 it is
    not shared; with a minimum of 1 it is computed once per candidate and reused."""
    before = chat.min_shared_prefix
    chat.min_shared_prefix = request.param
    yield request.param
    chat.min_shared_prefix = before


def one_at_a_time(chat, prompts, edit, baseline_logp):
    iv = DirectionAblation(edit.vector) if edit.kind == "ablate" else ActAdd(edit.vector, edit.layer)
    logits = chat.next_token_logits(prompts, interventions=iv)
    kl = (baseline_logp.exp() * (baseline_logp - torch.log_softmax(logits.double(), -1))).sum(-1)
    return refusal_log_odds(logits, TOKENS), kl.float()


def test_batched_rows_score_like_one_intervention_at_a_time(chat, prefix):
    g = torch.Generator().manual_seed(0)
    vectors = [torch.randn(chat.d_model, generator=g) * 4 for _ in range(3)]
    edits = [Edit("ablate", v) for v in vectors] + [Edit("add", v, layer=i + 1) for i, v in enumerate(vectors)]
    base = torch.log_softmax(chat.next_token_logits(HARMFUL).double(), -1)
    pairs = [(e, p) for e in range(len(edits)) for p in range(len(HARMFUL))][::-1]  # any order
    out = score_rows(chat, HARMFUL, edits, pairs, TOKENS, baseline_logp=base, rows_per_forward=7)
    unedited = refusal_log_odds(chat.next_token_logits(HARMFUL), TOKENS)
    for e, edit in enumerate(edits):
        want, want_kl = one_at_a_time(chat, HARMFUL, edit, base)
        rows = [i for i, (pe, _) in enumerate(pairs) if pe == e]
        order = [pairs[i][1] for i in rows]
        torch.testing.assert_close(out.log_odds[rows], want[order], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.kl[rows], want_kl[order], rtol=1e-3, atol=1e-5)
        assert (want - unedited).abs().max() > 1e-3  # every edit changes the scores: the check has teeth


def test_edits_are_checked():
    with pytest.raises(RefusalScopeError, match="unknown edit kind"):
        Edit("scale", torch.ones(4))
    with pytest.raises(RefusalScopeError, match="needs the layer"):
        Edit("add", torch.ones(4))
    with pytest.raises(RefusalScopeError, match="zero vector"):
        Edit("ablate", torch.zeros(4))


def test_a_bad_layer_or_width_is_one_clear_error(chat):
    with pytest.raises(RefusalScopeError, match="out of range"):
        score_rows(chat, HARMFUL, [Edit("add", torch.ones(chat.d_model), layer=99)], [(0, 0)], TOKENS)
    with pytest.raises(RefusalScopeError, match="d_model"):
        score_rows(chat, HARMFUL, [Edit("ablate", torch.ones(3))], [(0, 0)], TOKENS)


def reference_selection(
    chat, cand, harmful, harmless, *, n_screen, n_finalists, max_finalists, kl_threshold, induction_threshold
):
    """The selection procedure scored one candidate and one prompt set per call (as it was)."""
    base = torch.log_softmax(chat.next_token_logits(harmless).double(), -1)
    grid = [(layer, pos - cand.shape[1]) for layer in range(int(cand.shape[0] * 0.8)) for pos in range(cand.shape[1])]
    screen = {
        c: float(one_at_a_time(chat, harmful[:n_screen], Edit("ablate", cand[c]), base[:1])[0].mean()) for c in grid
    }
    order = sorted(grid, key=lambda c: screen[c])
    finalists, limit = {}, min(len(order), max(n_finalists, max_finalists))
    for c in order[:limit]:
        if finalists and len(finalists) % n_finalists == 0 and any(f[3] for f in finalists.values()):
            break
        ablation = float(one_at_a_time(chat, harmful, Edit("ablate", cand[c]), base[:1])[0].mean())
        kl = float(one_at_a_time(chat, harmless, Edit("ablate", cand[c]), base)[1].double().mean())
        induction = float(one_at_a_time(chat, harmless, Edit("add", cand[c], c[0]), base)[0].mean())
        finalists[c] = (ablation, kl, induction, kl <= kl_threshold and induction > induction_threshold)
    admissible = [c for c, f in finalists.items() if f[3]]
    return min(admissible, key=lambda c: finalists[c][0]), finalists


@pytest.mark.parametrize("screen_z", [None, 3.0], ids=["exhaustive-screen", "adaptive-screen"])
def test_batched_selection_matches_one_at_a_time_selection(chat, screen_z):
    cand = candidate_directions(chat, HARMFUL, HARMLESS, progress=False) * 20  # big enough to matter
    settings = dict(n_screen=4, n_finalists=2, max_finalists=8, kl_threshold=1e9)
    # filters that reject the first group of finalists, so the selection takes a second round
    _, loose = reference_selection(
        chat,
        cand,
        HARMFUL,
        HARMLESS,
        kl_threshold=1e9,
        max_finalists=8,
        n_finalists=8,
        n_screen=4,
        induction_threshold=-1e9,
    )
    first, later = list(loose.values())[:2], list(loose.values())[2:]
    induction_threshold = max(f[2] for f in first) + 1e-3
    assert any(f[2] > induction_threshold for f in later)  # a later finalist passes
    want, finalists = reference_selection(
        chat, cand, HARMFUL, HARMLESS, induction_threshold=induction_threshold, **settings
    )
    best, grid, baseline = select_direction(
        chat,
        cand,
        HARMFUL,
        HARMLESS,
        TOKENS,
        induction_threshold=induction_threshold,
        screen_z=screen_z,
        rows_per_forward=16,
        progress=False,
        **settings,
    )
    assert (best.layer, best.position) == want
    scored = {(c.layer, c.position): c for c in grid if c.kl is not None}
    assert scored.keys() == finalists.keys() and baseline["finalists_scored"] == len(finalists) > 2
    for c, (ablation, kl, induction, admissible) in finalists.items():
        assert scored[c].ablation_score == pytest.approx(ablation, abs=1e-4)
        assert scored[c].kl == pytest.approx(kl, rel=1e-3, abs=1e-6)
        assert scored[c].induction_score == pytest.approx(induction, abs=1e-4)
        assert scored[c].admissible == admissible
    if screen_z is None:
        assert baseline["screen_rows"] == baseline["screen_rows_exhaustive"]


def screen_of(table):
    calls = []

    def score(pairs):
        calls.append(len(pairs))
        return torch.tensor([table[c][p] for c, p in pairs])

    return score, calls


def test_adaptive_screen_settles_the_same_groups_with_fewer_rows():
    g = torch.Generator().manual_seed(1)
    n_cand, n_prompts = 40, 8
    prompt_effect = torch.randn(n_prompts, generator=g) * 3  # shared by every candidate: paired tests cancel it
    table = torch.linspace(-6, 6, n_cand)[:, None] + prompt_effect + 0.3 * torch.randn(n_cand, n_prompts, generator=g)
    table = table[torch.randperm(n_cand, generator=g)]
    exhaustive = table.mean(1).argsort().tolist()
    score, calls = screen_of(table)
    screen = AdaptiveScreen(score, n_cand, n_prompts, z=3.0)
    groups = [screen.next_group(4) for _ in range(3)]
    assert [set(grp) for grp in groups] == [set(exhaustive[i : i + 4]) for i in (0, 4, 8)]
    assert sum(calls) < 0.7 * n_cand * n_prompts and len(calls) < 12  # few rounds, fewer rows
    seen = [len(s) for s in screen.scores]
    assert min(seen) == 3 and seen.count(3) > n_cand / 2  # clear losers stop after the minimum


def test_exhaustive_screen_scores_everything_once():
    table = torch.randn(10, 5, generator=torch.Generator().manual_seed(2))
    score, calls = screen_of(table)
    screen = AdaptiveScreen(score, 10, 5, z=None)
    assert screen.next_group(3) == table.mean(1).argsort()[:3].tolist()
    assert screen.next_group(3) == table.mean(1).argsort()[3:6].tolist()
    assert sum(calls) == 50 and all(len(s) == 5 for s in screen.scores)
