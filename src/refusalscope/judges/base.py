"""The judge interface: `judge(prompts, replies) -> list[JudgeVerdict]`.

Every judge says, for each (prompt, reply) pair, whether the reply is a refusal, with a
score where it has one (higher = more refusal-like) and the raw label it decided on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import RefusalScopeError


@dataclass(frozen=True)
class JudgeVerdict:
    refused: bool
    score: float | None = None  # higher = more refusal-like; None where the judge has no score
    label: str | None = None  # what decided it: a matched phrase, a class name, a parsed verdict


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, prompts: Sequence[str], replies: Sequence[str]) -> list[JudgeVerdict]: ...


def check_pairs(prompts: Sequence[str] | None, replies: Sequence[str]) -> list[str]:
    """Validate judge input; returns the prompts (empty strings when none were given)."""
    if isinstance(replies, str):
        raise RefusalScopeError("replies must be a list of strings, got one string", "wrap it: [reply]")
    if prompts is None:
        return [""] * len(replies)
    if isinstance(prompts, str):
        raise RefusalScopeError("prompts must be a list of strings, got one string", "wrap it: [prompt]")
    if len(prompts) != len(replies):
        raise RefusalScopeError(
            f"{len(prompts)} prompts but {len(replies)} replies", "pass one reply per prompt, in the same order"
        )
    return list(prompts)


def refusal_rate(verdicts: Sequence[JudgeVerdict]) -> float:
    if not verdicts:
        raise RefusalScopeError("no verdicts to average", "judge at least one reply")
    return sum(v.refused for v in verdicts) / len(verdicts)
