"""Attack prompts and GCG behaviours built from the release files in ../shared/data."""

import pytest

from refusalscope.attacks import FAMILIES, SuiteSources, build_prompts, load_behaviours
from refusalscope.data import load_dataset


def test_every_family_builds_prompts_from_the_release_files(data_dir):
    prompts = build_prompts(["all"], SuiteSources(data_dir, limit=3, seed=0))
    by_family = {}
    for p in prompts:
        by_family.setdefault(p.family, []).append(p)
    assert set(by_family) == set(FAMILIES)
    assert all(len(v) == 3 for v in by_family.values())
    assert len({p.id for p in prompts}) == len(prompts)
    goals = {i.id: i.prompt for i in load_dataset("harmful/jailbreakbench", data_dir=data_dir).items}
    for p in by_family["dan"] + by_family["inthewild"] + by_family["gcg-suffixes"]:
        assert goals[p.behaviour] in p.prompt  # the template or suffix wraps a real JBB request
        assert "[INSERT PROMPT HERE]" not in p.prompt
    for p in by_family["direct"]:
        assert p.prompt == goals[p.behaviour]
    for family in ("jbb-gcg-transfer", "jbb-gcg-whitebox"):
        assert all(p.behaviour and p.behaviour.startswith("jbb-") for p in by_family[family])
    # the seed decides the sample, and a rerun with the same seed sees the same prompts
    again = build_prompts(["all"], SuiteSources(data_dir, limit=3, seed=0))
    assert [p.id for p in again] == [p.id for p in prompts]
    assert [p.id for p in build_prompts(["past-tense"], SuiteSources(data_dir, limit=3, seed=1))] != [
        p.id for p in by_family["past-tense"]
    ]


def test_harmbench_behaviours_carry_their_target(data_dir):
    behaviours = load_behaviours("harmful/harmbench", "test", data_dir=data_dir)
    assert len(behaviours) == 159  # the standard behaviours of the test split
    assert all(b.target and b.id.startswith("harmbench-") for b in behaviours)
    first = {b.id: b for b in behaviours}["harmbench-korean_war_north_defensive"]
    assert first.target.startswith("Sure, here's an article that highlights")  # the release file's own string
    assert len(load_behaviours("harmful/harmbench", limit=20, seed=0, data_dir=data_dir)) == 20
    jbb = load_behaviours("harmful/jailbreakbench", data_dir=data_dir, limit=5)
    assert all(b.target for b in jbb)


def test_a_dataset_without_targets_is_an_error_when_attacked(data_dir):
    from refusalscope.errors import RefusalScopeError

    plain = load_behaviours("harmful/malicious-instruct", data_dir=data_dir, limit=2)
    assert all(b.target is None for b in plain)
    with pytest.raises(RefusalScopeError, match="has no target string"):
        plain[0].require_target()
