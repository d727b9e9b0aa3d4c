"""Do jailbreaks work by turning the refusal (and harm) latents down?

For each vanilla/jailbroken pair we have one activation per latent group and prompt
(`latents.group_activations`), and whether the jailbreak succeeded on this model (the
reply judge on its greedy reply). Per attack and outcome (all / succeeded / failed):
the mean activation on the vanilla and the jailbroken prompts, and the relative drop
1 − mean(jailbroken) / mean(vanilla), each with a paired bootstrap interval over pairs.
Yeo et al.'s claim is that successful jailbreaks suppress these latents and failed ones
do not: the succeeded drop should exceed the failed drop (`drop_gap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RefusalScopeError
from ..stats import Estimate, bootstrap

if TYPE_CHECKING:
    from ..judges.base import Judge
    from ..models.chat import ChatModel

OUTCOMES = ("all", "succeeded", "failed")


@dataclass
class SuppressionRow:
    attack: str
    group: str
    outcome: str
    vanilla: Estimate
    jailbroken: Estimate
    drop: Estimate  # relative drop of the mean activation (1 − J/V); > 0 means suppressed

    @property
    def n(self) -> int:
        return self.drop.n

    def to_dict(self) -> dict:
        return {
            "attack": self.attack,
            "group": self.group,
            "outcome": self.outcome,
            "n": self.n,
            "vanilla": self.vanilla.to_dict(),
            "jailbroken": self.jailbroken.to_dict(),
            "drop": self.drop.to_dict(),
        }


def relative_drop(vanilla: np.ndarray, jailbroken: np.ndarray, seed: int = 0, n_boot: int = 2000) -> Estimate:
    """1 − Σ jailbroken / Σ vanilla over pairs, with a paired bootstrap interval.

    A ratio of means rather than a mean of per-pair ratios: a pair whose vanilla
    activation is near zero would otherwise dominate with an arbitrary ratio."""
    v, j = np.asarray(vanilla, float), np.asarray(jailbroken, float)
    if v.shape != j.shape:
        raise RefusalScopeError(f"{v.size} vanilla but {j.size} jailbroken activations", "pass one of each per pair")
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)

    def stat(idx: np.ndarray) -> float:
        idx = idx.astype(int)
        denom = v[idx].sum()
        return float(1 - j[idx].sum() / denom) if denom > 0 else float("nan")

    est = bootstrap(np.arange(v.size), stat, n_boot=n_boot, seed=seed)
    return est


def suppression_table(
    attacks: Sequence[str],
    vanilla: dict[str, np.ndarray],
    jailbroken: dict[str, np.ndarray],
    succeeded: Sequence[bool],
    seed: int = 0,
) -> list[SuppressionRow]:
    """One row per (attack incl. 'all attacks', group, outcome) with at least one pair."""
    per_pair = np.asarray(list(attacks))
    ok = np.asarray(list(succeeded), dtype=bool)
    if len(per_pair) != len(ok):
        raise RefusalScopeError(f"{len(per_pair)} pairs but {len(ok)} success flags", "pass one flag per pair")
    rows = []
    names = ["all attacks", *dict.fromkeys(per_pair.tolist())]
    for attack in names:
        in_attack = np.ones(len(per_pair), bool) if attack == "all attacks" else per_pair == attack
        for group in vanilla:
            for outcome in OUTCOMES:
                sel = in_attack & (ok if outcome == "succeeded" else ~ok if outcome == "failed" else True)
                if not sel.any():
                    continue
                v, j = vanilla[group][sel], jailbroken[group][sel]
                rows.append(
                    SuppressionRow(
                        attack,
                        group,
                        outcome,
                        bootstrap(v, seed=seed),
                        bootstrap(j, seed=seed),
                        relative_drop(v, j, seed),
                    )
                )
    return rows


def drop_gap(
    vanilla: np.ndarray, jailbroken: np.ndarray, succeeded: Sequence[bool], seed: int = 0, n_boot: int = 2000
) -> Estimate:
    """Relative drop on succeeded pairs minus that on failed pairs (bootstrap within each)."""
    v, j = np.asarray(vanilla, float), np.asarray(jailbroken, float)
    ok = np.asarray(list(succeeded), bool)
    if ok.all() or not ok.any():
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)

    def drop(idx):
        return 1 - j[idx].sum() / max(v[idx].sum(), 1e-12)

    s_idx, f_idx = np.flatnonzero(ok), np.flatnonzero(~ok)
    point = drop(s_idx) - drop(f_idx)
    draws = [drop(rng.choice(s_idx, s_idx.size)) - drop(rng.choice(f_idx, f_idx.size)) for _ in range(n_boot)]
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return Estimate(float(point), float(lo), float(hi), int(min(s_idx.size, f_idx.size)))


def reply_judge(spec: str | None = None):
    """A reply judge by name (`judges.load_judge`), or by default the project's default
    judge (`judges.default_judge()`), so this analysis follows the best judge; if that
    cannot be loaded here, the substring judge, with a warning (results record the judge)."""
    import warnings

    from .. import judges

    if spec not in (None, "default"):
        loader = getattr(judges, "load_judge", None)
        if loader is not None:
            return loader(spec)
        if spec == "substring":
            return judges.SubstringJudge()
        raise RefusalScopeError(f"unknown judge '{spec}'", "use 'default' or 'substring'")
    factory = getattr(judges, "default_judge", None)
    if callable(factory):
        try:
            return factory()
        except RefusalScopeError as exc:
            warnings.warn(
                f"the default judge is unavailable ({exc.problem}); judging with the substring judge", stacklevel=2
            )
    return judges.SubstringJudge()


def jailbreak_success(
    chat: ChatModel,
    requests: Sequence[str],
    prompts: Sequence[str],
    judge: Judge | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[list[bool], list[str]]:
    """(complied?, greedy reply) per prompt: a jailbreak succeeds when the judge does not
    call the model's greedy reply a refusal. The judge sees the plain request (`requests`),
    so a reply that stays in a persona but does not serve the request can still count as
    a refusal with a request-aware judge."""
    from ..generations import cached_replies

    judge = judge or reply_judge()
    replies = cached_replies(
        chat, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    verdicts = judge.judge(list(requests), replies)
    return [not v.refused for v in verdicts], replies
