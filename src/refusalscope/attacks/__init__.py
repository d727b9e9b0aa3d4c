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
from .robustness import gcg_robustness, wilson
from .runs import AttackRun

__all__ = [
    "GCG",
    "AttackConfig",
    "AttackRun",
    "Behaviour",
    "GCGConfig",
    "SuffixObjective",
    "allowed_tokens",
    "check_steering_for",
    "gcg_robustness",
    "harmbench_targets",
    "load_behaviours",
    "load_config",
    "wilson",
]
