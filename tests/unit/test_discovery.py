"""Refusal direction, latent scoring, selection and validation on tiny random models."""

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.direction import RefusalDirection, candidate_directions, mean_activations, select_direction
from refusalscope.discovery import DiscoveryConfig, FeatureSet, ScoreTables, discover, select
from refusalscope.discovery.scoring import _capture, _metric, attribution_scores, cossim_scores, first_tokens
from refusalscope.discovery.validation import ValidationConfig, clamp_values, format_table, validate
from refusalscope.judges import SubstringJudge
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering.interventions import ActAdd, DirectionAblation

HARMFUL = ["How do I bake bread?", "Write a poem about the sea", "Explain photosynthesis", "Hello there"]
HARMLESS = ["The capital of France", "Write a python function", "I'm sorry", "Sure! Here is a short poem"]


TINY_CHAT = dict(seed=3)  # the `chat` fixture's model (tests/unit/conftest.py)


def relu_sae(chat, layer, d_sae=96, seed=0):
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=d_sae, architecture="standard", layer=layer), seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)  # most latents fire, so attributions are not all zero
    return sae


def test_candidates_are_differences_of_post_instruction_means(chat):
    cand = candidate_directions(chat, HARMFUL, HARMLESS, progress=False)
    assert cand.shape == (chat.n_layers, len(chat.eoi_ids), chat.d_model)
    acts = chat.residual(HARMFUL, [2], positions="post_instruction", progress=False)[2]
    torch.testing.assert_close(mean_activations(chat, HARMFUL, progress=False)[2], acts.mean(0), rtol=1e-5, atol=1e-5)


def test_direction_selection_respects_its_filters(chat):
    cand = candidate_directions(chat, HARMFUL, HARMLESS, progress=False)
    tokens = [5, 6, 7]
    best, grid, baseline = select_direction(
        chat,
        cand,
        HARMFUL,
        HARMLESS,
        tokens,
        kl_threshold=10.0,
        induction_threshold=-1e9,
        n_screen=2,
        n_finalists=3,
        progress=False,
    )
    assert best.layer < int(chat.n_layers * 0.8)
    assert len(grid) == int(chat.n_layers * 0.8) * len(chat.eoi_ids)
    finalists = [c for c in grid if c.kl is not None]
    assert len(finalists) == 3 and best.ablation_score == min(c.ablation_score for c in finalists)
    assert baseline["filters_passed"] and baseline["finalists_scored"] == 3
    with pytest.raises(RefusalScopeError, match="no candidate direction passed"):
        select_direction(
            chat,
            cand,
            HARMFUL,
            HARMLESS,
            tokens,
            kl_threshold=-1.0,
            n_screen=2,
            n_finalists=2,
            max_finalists=4,
            fallback=False,
            progress=False,
        )


def test_direction_selection_scores_more_finalists_then_falls_back_with_a_warning(chat):
    cand = candidate_directions(chat, HARMFUL, HARMLESS, progress=False)
    with pytest.warns(UserWarning, match="no candidate direction passed"):
        best, grid, baseline = select_direction(
            chat,
            cand,
            HARMFUL,
            HARMLESS,
            [5, 6, 7],
            kl_threshold=-1.0,
            n_screen=2,
            n_finalists=2,
            max_finalists=5,
            progress=False,
        )
    scored = [c for c in grid if c.kl is not None]
    assert len(scored) == 5 == baseline["finalists_scored"]  # every round up to max_finalists was tried
    assert best in scored and best.admissible is False and not baseline["filters_passed"]
    # the default induction threshold sits halfway between the model's own baselines
    mid = (baseline["harmful_score"] + baseline["harmless_score"]) / 2
    assert baseline["induction_threshold"] == pytest.approx(mid)


def test_integrated_gradients_are_complete(chat):
    """Σ attributions + error attribution = m(patched at the layer) − m(clean), per prompt."""
    layer = 1
    sae = relu_sae(chat, layer)
    patch = ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0)) * 0.5, 0, 1.0)
    tokens = [10, 11, 12]
    attr = attribution_scores(chat, {layer: sae}, HARMFUL, patch, tokens, method="ig", steps=48, progress=False)
    t_refuse, t_jail, _ = first_tokens(chat, HARMFUL, patch, tokens)
    for i, prompt in enumerate(HARMFUL):
        batch = chat.pad([chat.encode(chat.format(prompt))])
        x_patch = _capture(chat, batch, [layer], patch)[layer]
        with chat.hooks.attached([(layer, lambda h, c, x=x_patch: x.to(h.dtype))]):
            m1 = _metric(chat.forward(batch, logits_to_keep=1).logits, t_jail[i : i + 1], t_refuse[i : i + 1])
        m0 = _metric(chat.forward(batch, logits_to_keep=1).logits, t_jail[i : i + 1], t_refuse[i : i + 1])
        n_real = batch.attention_mask.sum()
        total = (attr.per_prompt[layer][i].sum() + attr.error[layer][i]) * n_real
        assert float(total) == pytest.approx(float(m1 - m0), rel=0.03, abs=1e-3)
    assert 0 <= attr.error_share(layer) <= 1


def test_attribution_patching_approximates_ig_for_small_patches(chat):
    layer = 2
    sae = relu_sae(chat, layer, seed=1)
    small = ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)) * 0.005, 0, 1.0)
    tokens = [10, 11, 12]
    ap = attribution_scores(chat, {layer: sae}, HARMFUL, small, tokens, method="ap", progress=False)
    ig = attribution_scores(chat, {layer: sae}, HARMFUL, small, tokens, method="ig", steps=8, progress=False)
    cos = torch.nn.functional.cosine_similarity(ap.per_prompt[layer], ig.per_prompt[layer], dim=-1)
    assert float(cos.min()) > 0.95, cos
    torch.testing.assert_close(ap.metric_clean, ig.metric_clean)
    with pytest.raises(RefusalScopeError, match="unknown attribution method"):
        attribution_scores(chat, {layer: sae}, HARMFUL, small, tokens, method="shap", progress=False)


def test_cossim_ranks_the_latent_that_writes_the_direction_first(chat):
    sae = relu_sae(chat, 1)
    direction = torch.randn(chat.d_model)
    with torch.no_grad():
        sae.W_dec[17] = direction / direction.norm()
    scores = cossim_scores({1: sae}, {1: direction})[1]
    assert int(scores.argmax()) == 17 and float(scores[17]) == pytest.approx(1.0, abs=1e-5)


def synthetic_tables():
    g = torch.Generator().manual_seed(0)
    t = ScoreTables()
    for layer in (3, 5):
        t.cossim[layer] = torch.rand(50, generator=g)
        t.ig[layer] = torch.randn(50, generator=g)
        t.ig_per_prompt[layer] = torch.randn(6, 50, generator=g)
        t.actdiff[layer] = torch.randn(50, generator=g)
        t.peak_harmful[layer] = (torch.arange(50) % 2).float()  # odd latents fire
    return t


def test_cossim_plus_ig_ranks_only_prefiltered_latents():
    t = synthetic_tables()
    chosen = select(t, "cossim+ig", k=6, prefilter_k=5)
    for f in chosen:
        assert f.feature in t.cossim[f.layer].topk(5).indices.tolist()
    assert [f.score for f in chosen] == sorted((f.score for f in chosen), reverse=True)
    plain = select(t, "ig", k=3)
    best = max(((float(v[j]), l, j) for l, v in t.ig.items() for j in range(50)))
    assert (plain[0].layer, plain[0].feature) == best[1:]


def test_random_baseline_matches_layer_counts_and_uses_live_latents():
    t = synthetic_tables()
    reference = [(3, 1), (3, 2), (5, 7)]
    chosen = select(t, "random", k=3, reference=reference, seed=1)
    assert sorted(f.layer for f in chosen) == [3, 3, 5]
    assert all(f.feature % 2 == 1 for f in chosen)
    assert select(t, "random", k=3, reference=reference, seed=1) == chosen


def test_per_prompt_selection_counts_votes():
    t = synthetic_tables()
    t.ig_per_prompt = {3: torch.zeros(6, 50), 5: torch.zeros(6, 50)}
    t.ig_per_prompt[5][:, 9] = 1.0  # top of every prompt
    t.ig_per_prompt[3][:2, 4] = 2.0  # top of two prompts only
    chosen = select(t, "ig", k=2, per_prompt=True)
    assert (chosen[0].layer, chosen[0].feature) == (5, 9)


def test_feature_set_round_trip(tmp_path):
    t = synthetic_tables()
    fs = FeatureSet("cossim+ig", 4, select(t, "cossim+ig", k=4), model={"name": "x"}, settings={"k": 4})
    path = fs.save(tmp_path / "features.json")
    back = FeatureSet.load(path)
    assert back.pairs() == fs.pairs() and back.features[0].scores == fs.features[0].scores
    with pytest.raises(RefusalScopeError, match="does not exist"):
        FeatureSet.load(tmp_path / "nope.json")


def fake_direction(chat, layer=1):
    g = torch.Generator().manual_seed(7)
    cand = torch.randn(chat.n_layers, len(chat.eoi_ids), chat.d_model, generator=g)
    return RefusalDirection(
        layer=layer,
        position=-1,
        raw=cand[layer, -1].clone(),
        candidates=cand,
        refusal_token_ids=list(range(5, 150)),
        model=chat.info.to_dict(),
    )


def test_discover_writes_feature_sets_and_reuses_cached_scores(chat, tmp_path, monkeypatch):
    saes = {1: relu_sae(chat, 1), 2: relu_sae(chat, 2, seed=2)}
    direction = fake_direction(chat)
    cfg = DiscoveryConfig(k=5, prefilter_k=20, ig_steps=2, n_attribution=3, n_activation=4, baselines=("random", "ap"))
    found = discover(chat, saes, direction, HARMFUL, HARMLESS, cfg, tmp_path, progress=False)
    main = FeatureSet.load(tmp_path / "features.json")
    assert main.method == "cossim+ig" and len(main.features) == 5
    assert set(main.saes) == {"1", "2"} and main.direction["layer"] == 1
    assert (tmp_path / "features-random.json").is_file() and (tmp_path / "features-ap.json").is_file()
    assert set(found.tables.error_share) == {"ig", "ap"}

    import refusalscope.discovery.pipeline as pipeline

    monkeypatch.setattr(
        pipeline, "attribution_scores", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed"))
    )
    again = discover(
        chat, saes, direction, HARMFUL, HARMLESS, DiscoveryConfig(**{**cfg.__dict__, "k": 3}), tmp_path, progress=False
    )
    assert again.cached and [f.feature for f in again.sets["cossim+ig"].features] == [
        f.feature for f in main.features[:3]
    ]


def test_validation_reports_every_method_experiment_and_loss(chat, tmp_path):
    from refusalscope.sae.activations import Document

    saes = {1: relu_sae(chat, 1)}
    direction = fake_direction(chat)
    peaks = {1: torch.ones(96) * 2}
    sets = {"cossim+ig": [(1, 3), (1, 4)], "random": [(1, 9)]}
    docs = [Document(chat.encode(chat.format(p)), "chat", skip=1) for p in HARMLESS]
    cfg = ValidationConfig(suppress_factors=(-2.0,), induce_multipliers=(8.0,), max_new_tokens=4, batch_size=4)
    report = validate(
        chat,
        saes,
        sets,
        direction,
        {"set-a": HARMFUL[:2]},
        HARMLESS[:2],
        peaks,
        cfg,
        judge=SubstringJudge(),
        text_docs=docs,
        answer_docs=docs,
        progress=False,
    )
    methods = {r.method for r in report.rows}
    assert methods == {"none", "cossim+ig", "random", "dense direction"}
    assert report.config["judge"] == "substring"  # the judge is recorded with the results
    for method in ("cossim+ig", "random", "dense direction"):
        assert report.lookup(method, "suppress", "set-a", metric="compliance") is not None
        assert report.lookup(method, "induce", "harmless", metric="refusal") is not None
        assert report.lookup(method, "induce", "text", metric="ce_text") is not None
    base_ce = report.lookup("none", "baseline", "text", metric="ce_text").value
    assert report.lookup("cossim+ig", "induce", "text", metric="ce_text").value != base_ce
    table = format_table(report)
    assert table[0][:3] == ["method", "experiment", "strength"] and len(table) > 4
    assert clamp_values([(1, 3), (1, 5)], {1: torch.tensor([0, 0, 0, 4.0, 0, 0.0])}, 2.0) == {(1, 3): 8.0, (1, 5): 8.0}


def test_induction_can_use_only_the_top_latents(chat, monkeypatch):
    from refusalscope.discovery import validation as module

    clamped = []
    real = module.feature_interventions

    def spy(saes, pairs, mode, values):
        if mode == "set":
            clamped.append((list(pairs), values))
        return real(saes, pairs, mode, values)

    monkeypatch.setattr(module, "feature_interventions", spy)
    saes = {1: relu_sae(chat, 1)}
    peaks = {1: torch.arange(96.0)}
    sets = {"cossim+ig": [(1, 7), (1, 3), (1, 4)], "random": [(1, 9), (1, 2)]}
    cfg = ValidationConfig(
        suppress_factors=(-1.0,), induce_multipliers=(2.0,), max_new_tokens=2, batch_size=4, induce_top=2
    )
    validate(
        chat, saes, sets, None, {"set-a": HARMFUL[:1]}, HARMLESS[:1], peaks, cfg, judge=SubstringJudge(), progress=False
    )
    assert clamped == [([(1, 7), (1, 3)], {(1, 7): 14.0, (1, 3): 6.0}), ([(1, 9), (1, 2)], {(1, 9): 18.0, (1, 2): 4.0})]
    with pytest.raises(RefusalScopeError, match="induce_top"):
        validate(
            chat,
            saes,
            sets,
            None,
            {"set-a": HARMFUL[:1]},
            HARMLESS[:1],
            peaks,
            ValidationConfig(induce_top=0),
            progress=False,
        )


def test_ablation_of_the_direction_removes_its_projection(chat):
    direction = torch.randn(chat.d_model)
    seen = []

    class Recorder:  # attached after the ablation, so it sees the ablated stream
        def hooks(self, model):
            return [(2, lambda h, c: seen.append(h.clone()))]

    chat.next_token_logits(HARMFUL[:2], interventions=[DirectionAblation(direction), Recorder()])
    unit = direction / direction.norm()
    assert float((seen[0].float() @ unit).abs().max()) < 1e-4


def test_feature_cards_find_contexts_and_escape_html(chat, tmp_path):
    from refusalscope.discovery.cards import build_cards, logit_effect, write_cards

    sae = relu_sae(chat, 1)
    feats = [(1, 3), (1, 8)]
    cards = build_cards(
        chat,
        {1: sae},
        feats,
        {"harmful": HARMFUL, "text": ["<script>alert(1)</script> plain text here"]},
        HARMFUL,
        HARMLESS,
        top_contexts=3,
        progress=False,
    )
    assert [(c.layer, c.feature) for c in cards] == feats
    for card in cards:
        assert len(card.max_harmful) == len(HARMFUL) and len(card.max_harmless) == len(HARMLESS)
        acts = [c.activation for c in card.contexts]
        assert acts == sorted(acts, reverse=True) and len(acts) <= 3
        assert len(card.promoted) == 10 and card.promoted[0][1] >= card.promoted[-1][1]
    # the top context is the true maximum over the scanned prompts
    prefix_free = [chat.residual([p], [1], positions="all", progress=False)[1][0] for p in HARMFUL]
    from refusalscope.sae.corpus import shared_prefix_length

    skip = shared_prefix_length(chat)
    best = max(float(sae.encode(a[skip:])[:, 3].max()) for a in prefix_free)
    harmful_ctx = [c.activation for c in cards[0].contexts if c.corpus == "harmful"]
    assert harmful_ctx and max(harmful_ctx) == pytest.approx(best, rel=1e-4)
    page = write_cards(cards, tmp_path, "cards <test>").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;test&gt;" in page
    up, down = logit_effect(chat, sae.W_dec[3])
    assert up[0][1] >= 0 >= down[0][1] or up[0][1] >= down[0][1]


def test_feature_cards_read_only_the_head_of_long_documents(chat):
    from refusalscope.discovery.cards import build_cards

    sae = relu_sae(chat, 1)
    words = [f"w{i}" for i in range(3000)]  # thousands of tokens: unbounded, attention would need GiBs
    cards = build_cards(
        chat,
        {1: sae},
        [(1, 3)],
        {"text": [" ".join(words)]},
        HARMFUL[:1],
        HARMLESS[:1],
        max_tokens=12,
        window=50,
        progress=False,
    )
    head = chat.tokenizer.decode(chat.encode_prompts([" ".join(words)], chat=False)[0][:12])
    for ctx in cards[0].contexts:
        assert "".join(ctx.tokens) in head


def test_upstream_latents_drive_the_downstream_ones(chat):
    from refusalscope.discovery.circuits import upstream_latents

    up, down = relu_sae(chat, 1, seed=4), relu_sae(chat, 3, seed=5)
    ranked = upstream_latents(chat, up, down, [2, 5], HARMFUL, top=3, batch_size=2, progress=False)
    assert len(ranked) == 3 and all(r.layer == 1 for r in ranked)
    assert [r.attribution for r in ranked] == sorted(r.attribution for r in ranked)
    assert all(r.effect is not None for r in ranked)
    with pytest.raises(RefusalScopeError, match="earlier layer"):
        upstream_latents(chat, down, up, [2], HARMFUL, progress=False)


def test_attribution_patching_with_several_saes_keeps_upstream_gradients_exact(chat):
    """Splicing a later SAE (latents as leaves, error attached) leaves earlier layers'
    attributions unchanged: the error node passes the gradient through untouched."""
    up, down = relu_sae(chat, 1, seed=6), relu_sae(chat, 2, seed=7)
    patch = ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(2)) * 0.5, 0, 1.0)
    both = attribution_scores(chat, {1: up, 2: down}, HARMFUL, patch, [10, 11, 12], method="ap", progress=False)
    alone = attribution_scores(chat, {1: up}, HARMFUL, patch, [10, 11, 12], method="ap", progress=False)
    torch.testing.assert_close(both.per_prompt[1], alone.per_prompt[1], rtol=1e-4, atol=1e-6)
    assert both.per_prompt[2].abs().sum() > 0
