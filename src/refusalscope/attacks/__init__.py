"""Jailbreak attacks and robustness under steering: every attack runs against the
unsteered, the steered and the gated model, side by side.

- `gcg`: greedy coordinate gradient, adaptive (gradients through the steering), resumable.
- `suite`: the static single-turn attack families (JailbreakBench artifacts, DAN and
  in-the-wild templates, GCG transfer suffixes, tense rephrasings), a compliance table.
- `multiturn`: scripted Crescendo-style escalations and an attacker-model loop.
- `robustness`: Wilson intervals, the GCG robustness score; `runs`: resumable output folders.
"""

from .behaviours import Behaviour, harmbench_targets, load_behaviours
from .configs import AttackConfig, check_steering_for, load_config
from .gcg import GCG, GCGConfig, SuffixObjective, allowed_tokens
from .multiturn import Conversation, load_conversations, run_attacker, run_scripted
from .robustness import gcg_robustness, wilson
from .runs import AttackRun
from .suite import FAMILIES, AttackFamily, AttackPrompt, SuiteSources, build_prompts, run_suite

__all__ = [
    "FAMILIES",
    "GCG",
    "AttackConfig",
    "AttackFamily",
    "AttackPrompt",
    "AttackRun",
    "Behaviour",
    "Conversation",
    "GCGConfig",
    "SuffixObjective",
    "SuiteSources",
    "allowed_tokens",
    "build_prompts",
    "check_steering_for",
    "gcg_robustness",
    "harmbench_targets",
    "load_behaviours",
    "load_config",
    "load_conversations",
    "run_attacker",
    "run_scripted",
    "run_suite",
    "wilson",
]
