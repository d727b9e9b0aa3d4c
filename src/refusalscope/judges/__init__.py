"""Refusal judges, one interface: `judge(prompts, replies) -> list[JudgeVerdict]`.

- `SubstringJudge`: refusal phrases (a data file) near the start of the reply.
- `FirstTokenJudge` / `refusal_score`: log-odds of the model's refusal first tokens
  (found by `find_refusal_tokens` from its own refusals); no generation needed.
- `ClassifierJudge.from_pretrained(spec)`: a Hugging Face sequence classifier or a
  Llama-Guard-style generative judge.
- `validate_judge`: accuracy and confusion matrix against XSTest's human labels.
"""

from .base import Judge, JudgeVerdict, refusal_rate
from .classifier import (
    ClassifierJudge,
    GenerativeJudge,
    SequenceClassifierJudge,
    load_classifier_judge,
    parse_verdict,
)
from .first_token import (
    FirstTokenJudge,
    RefusalTokens,
    find_refusal_tokens,
    refusal_log_odds,
    refusal_score,
)
from .substring import Phrases, SubstringJudge
from .validation import SetResult, ValidationReport, validate_judge

__all__ = [
    "ClassifierJudge",
    "FirstTokenJudge",
    "GenerativeJudge",
    "Judge",
    "JudgeVerdict",
    "Phrases",
    "RefusalTokens",
    "SequenceClassifierJudge",
    "SetResult",
    "SubstringJudge",
    "ValidationReport",
    "find_refusal_tokens",
    "load_classifier_judge",
    "parse_verdict",
    "refusal_log_odds",
    "refusal_rate",
    "refusal_score",
    "validate_judge",
]
