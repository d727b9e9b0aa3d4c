"""How jailbreaks defeat refusal (Yeo et al. §5): vanilla/jailbroken pairs, suppression of
the refusal and harm latents by attack and outcome, the prompt words that do the
suppressing (gradient × input, checked against leave-one-token-out), per-token heat maps."""

from .latents import LatentGroup, group_activations, load_feature_groups, measure_while_generating
from .pairs import ATTACKS, JailbreakPair, build_pairs
from .suppression import SuppressionRow, drop_gap, jailbreak_success, relative_drop, suppression_table
from .token_attribution import TokenScores, attribute_tokens, loo_check, word_scores

__all__ = [
    "ATTACKS",
    "JailbreakPair",
    "LatentGroup",
    "SuppressionRow",
    "TokenScores",
    "attribute_tokens",
    "build_pairs",
    "drop_gap",
    "group_activations",
    "jailbreak_success",
    "load_feature_groups",
    "loo_check",
    "measure_while_generating",
    "relative_drop",
    "suppression_table",
    "word_scores",
]
