"""Judges by name, and the default reply judge.

The default is the shipped learned judge: on replies of models it was not trained on it
agrees with people more often than the substring judge (README, "Refusal judges"). Code
that judges generated replies asks `default_judge()` rather than naming a class, so the
default changes in one place and every stored result records the judge's name+version.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RefusalScopeError
from ..types import HubJudgeName, JudgeName, choices

if TYPE_CHECKING:
    from ..models.chat import ChatModel

JUDGE_NAMES: tuple[JudgeName, ...] = choices(JudgeName)
HUB_JUDGES: tuple[HubJudgeName, ...] = choices(HubJudgeName)  # judges.hub.HUB_FORMATS


def default_judge(chat: ChatModel | None = None):
    """The shipped learned judge (feature model loaded on first use, or `chat`)."""
    from .learned import LearnedJudge

    return LearnedJudge.load(chat=chat)


def load_judge(spec: str, chat: ChatModel | None = None):
    """'learned' (the default learned judge), a shipped learned judge's name
    ('learned-v1'), a folder written by `LearnedJudge.save`, 'substring', 'rubric' (the
    generative rubric judge on the embedded default model, or on `chat`), or a hub judge:
    'harmbench', 'llama-guard-3', 'wildguard', 'strongreject' (its hub id), optionally
    '=folder-or-hub-id' (e.g. 'wildguard=/models/wildguard')."""
    from .learned import LearnedJudge, shipped_judges

    if spec == "learned":
        return default_judge()
    if spec == "substring":
        from .substring import SubstringJudge

        return SubstringJudge()
    if spec == "rubric":
        from ..models.loading import load_model
        from .rubric import RubricJudge

        return RubricJudge(chat or load_model("default", dtype="fp32", progress=False))
    kind, _, where = spec.partition("=")
    if kind in HUB_JUDGES:
        from .hub import HubJudge

        return HubJudge.from_pretrained(kind, where or None)
    if spec in shipped_judges() or Path(spec).is_dir():
        return LearnedJudge.load(spec)
    raise RefusalScopeError(
        f"unknown judge '{spec}'",
        f"use one of {', '.join(JUDGE_NAMES + HUB_JUDGES)}, a shipped learned judge "
        f"({', '.join(shipped_judges()) or 'none'}) or a learned-judge folder",
    )
