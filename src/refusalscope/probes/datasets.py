"""Prompts for harm probes: trained on plain requests, tested in and out of distribution.

Labels are harmful (1) vs harmless (0). Everything a probe learns from comes from
vanilla requests: harmful ones from the refusal-direction splits (AdvBench,
MaliciousInstruct, TDC, HarmBench), harmless ones from Alpaca; the train, validation
and in-distribution (ID) test prompts come from the matching separate splits. Out of
distribution (OOD), harmful prompts are jailbreaks of harmful requests
(`mechanism.pairs`: JailbreakBench attack artifacts, DAN templates, tense rephrasings)
and harmless ones are prompts built to look harmful while being fine (XSTest safe, the
benign half of refusalscope's minimal pairs). A probe that learnt "harmful topic" or
"short plain request" fails OOD; one that reads harm itself does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import RefusalScopeError

OOD_ATTACKS = ("pair", "gcg", "jbc", "random-search", "templates", "past-tense")


@dataclass
class Split:
    prompts: list[str]
    labels: np.ndarray  # 1 harmful, 0 harmless
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def counts(self) -> dict[str, int]:
        return {"harmful": int(self.labels.sum()), "harmless": int(len(self.labels) - self.labels.sum())}


def _split(harmful: Sequence[str], harmless: Sequence[str], h_src: Sequence[str], b_src: Sequence[str]) -> Split:
    return Split(
        list(harmful) + list(harmless), np.array([1] * len(harmful) + [0] * len(harmless)), list(h_src) + list(b_src)
    )


@dataclass
class ProbeData:
    train: Split
    val: Split
    test_id: Split
    test_ood: Split

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test_id": self.test_id, "test_ood": self.test_ood}

    def all_prompts(self) -> list[str]:
        return list(dict.fromkeys(p for s in self.splits().values() for p in s.prompts))

    def summary(self) -> dict:
        return {
            name: {**s.counts(), "sources": {src: s.sources.count(src) for src in dict.fromkeys(s.sources)}}
            for name, s in self.splits().items()
        }


def probe_data(
    data_dir=None,
    n_train: int = 96,
    n_val: int = 32,
    n_test: int = 48,
    n_ood: int = 48,
    attacks: Sequence[str] = OOD_ATTACKS,
    seed: int = 0,
) -> ProbeData:
    """Seeded ID/OOD prompt sets (n per class; OOD harmful spread evenly over `attacks`)."""
    from ..data import load_dataset
    from ..mechanism.pairs import build_pairs

    if min(n_train, n_val, n_test, n_ood) < 2:
        raise RefusalScopeError(
            "every probe split needs at least 2 prompts per class", "raise --n-train/--n-val/--n-test/--n-ood"
        )

    def sample(name, split, n):
        return load_dataset(name, split, data_dir=data_dir, limit=n, seed=seed).prompts

    train = _split(
        sample("harmful/refusal-direction", "train", n_train),
        sample("harmless/alpaca", "train", n_train),
        ["refusal-direction/train"] * n_train,
        ["alpaca/train"] * n_train,
    )
    val = _split(
        sample("harmful/refusal-direction", "val", n_val),
        sample("harmless/alpaca", "val", n_val),
        ["refusal-direction/val"] * n_val,
        ["alpaca/val"] * n_val,
    )
    test_id = _split(
        sample("harmful/refusal-direction", "test", n_test),
        sample("harmless/alpaca", "test", n_test),
        ["refusal-direction/test"] * n_test,
        ["alpaca/test"] * n_test,
    )
    per_attack = max(1, -(-n_ood // len(attacks)))
    pairs = build_pairs(list(attacks), data_dir, per_attack, seed)
    harmful = [(p.jailbroken, f"jailbreak/{p.attack}") for p in pairs][: n_ood * 2]
    xs = load_dataset("xstest/safe", data_dir=data_dir, limit=n_ood - n_ood // 2, seed=seed).prompts
    mp = load_dataset("builtin/minimal-pairs", "benign", limit=n_ood // 2, seed=seed).prompts
    test_ood = _split(
        [h for h, _ in harmful],
        xs + mp,
        [s for _, s in harmful],
        ["xstest/safe"] * len(xs) + ["minimal-pairs/benign"] * len(mp),
    )
    return ProbeData(train, val, test_id, test_ood)
