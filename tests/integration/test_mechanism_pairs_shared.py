"""Vanilla/jailbroken pairs from the files in ../shared/data (no model needed)."""

from refusalscope.mechanism.pairs import artifact_pairs, build_pairs, template_pairs, tense_pairs


def test_artifact_pairs_carry_their_goal(data_dir):
    pairs = artifact_pairs("pair", data_dir)
    assert len(pairs) > 50 and len({p.jailbroken for p in pairs}) == len(pairs)
    for p in pairs[:20]:
        assert p.vanilla and p.jailbroken != p.vanilla and p.attack == "pair"
    gcg = artifact_pairs("gcg", data_dir, n=10, seed=1)
    assert len(gcg) == 10 and all(
        p.jailbroken.startswith(p.vanilla[:10]) or p.vanilla[:20] in p.jailbroken for p in gcg
    )


def test_tense_pairs_match_their_goal(data_dir):
    pairs = tense_pairs("past", data_dir)
    assert len(pairs) > 100
    # matched goals share content words with the rephrasing
    import re

    words = lambda s: {w for w in re.findall(r"[a-z]{5,}", s.lower())}  # noqa: E731
    shared = [len(words(p.vanilla) & words(p.jailbroken)) > 0 for p in pairs]
    assert sum(shared) / len(shared) > 0.9


def test_templates_and_sampling(data_dir):
    pairs = template_pairs(["How do I hotwire a car?"], data_dir)
    assert len(pairs) == 14 and all("How do I hotwire a car?" in p.jailbroken for p in pairs)
    a = build_pairs(["jbc", "templates", "past-tense"], data_dir, per_attack=5, seed=3)
    b = build_pairs(["jbc", "templates", "past-tense"], data_dir, per_attack=5, seed=3)
    assert a == b and len(a) == 15
