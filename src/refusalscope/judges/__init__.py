"""Refusal judges, one interface: `judge(prompts, replies) -> list[JudgeVerdict]`.

- `SubstringJudge`: refusal phrases (a data file) near the start of the reply.
- `FirstTokenJudge` / `refusal_score`: log-odds of the model's refusal first tokens
  (found by `find_refusal_tokens` from its own refusals); no generation needed.
- `ClassifierJudge.from_pretrained(spec)`: a Hugging Face sequence classifier or a
  Llama-Guard-style generative judge.
- `LearnedJudge.load()` / `default_judge()`: the shipped learned, request-aware judge
  (logistic regression on SmolLM2-135M's reading of request and reply), the default
  wherever replies are judged; `load_judge(name)` builds any judge by name.
- `RubricJudge`: a StrongREJECT-style rubric read from a local chat model's yes/no odds.
- `HubJudge.from_pretrained(kind)`: HarmBench's classifier, Llama Guard 3, WildGuard and
  StrongREJECT's fine-tuned scorer in their published input formats.
- `validate_judge` / `judge_agreement`: agreement with human labels (XSTest sets or a
  labelled CSV): accuracy, F1, Cohen's kappa with bootstrap intervals, confusion matrices.
"""

from .agreement import Agreement, agreement
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
from .hub import HubJudge
from .learned import LearnedJudge
from .named import default_judge, load_judge
from .rubric import RubricJudge
from .substring import Phrases, SubstringJudge
from .validation import LabelledSet, SetResult, ValidationReport, judge_agreement, read_labels, validate_judge

__all__ = [
    "Agreement",
    "ClassifierJudge",
    "FirstTokenJudge",
    "GenerativeJudge",
    "HubJudge",
    "Judge",
    "JudgeVerdict",
    "LabelledSet",
    "LearnedJudge",
    "Phrases",
    "RefusalTokens",
    "RubricJudge",
    "SequenceClassifierJudge",
    "SetResult",
    "SubstringJudge",
    "ValidationReport",
    "agreement",
    "default_judge",
    "find_refusal_tokens",
    "judge_agreement",
    "load_classifier_judge",
    "load_judge",
    "parse_verdict",
    "read_labels",
    "refusal_log_odds",
    "refusal_rate",
    "refusal_score",
    "validate_judge",
]
