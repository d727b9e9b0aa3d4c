"""Steering: interventions on the residual stream that work with KV-cached, batched generation.

    from refusalscope.steering import FeatureSteer, DirectionAblation, ActAdd, Conditional, FeatureGate, steer

    up = FeatureSteer(sae, [1234, 77], "set", 8.0)               # clamp two latents of one SAE
    with steer(chat, up):
        chat.generate(prompts)
    chat.generate(prompts, interventions=up)                    # the same, without a block

    gated = Conditional(up, FeatureGate(sae, 99), threshold=2.0) # steer only flagged prompts
    steering = Steering([gated], name="refusal-up").for_model(chat)
    steering.save("refusal-up.json"); Steering.load("refusal-up.json").id

See `interventions` (the maths and costs), `conditional` (gates), `spec` (the spec file)
`lm_eval` (lm-evaluation-harness steer files) and `nullspace` (steering confined
to directions benign activations do not use).
"""

from .conditional import Conditional, DirectionGate, FeatureGate, Gate, GateDecisions, ProbeGate
from .interventions import (
    MODES,
    POSITION_KEYWORDS,
    ActAdd,
    DirectionAblation,
    DirectionClamp,
    FeatureSteer,
    Intervention,
    check_positions,
)
from .lm_eval import export_lm_eval, import_lm_eval
from .nullspace import LearnedNullSpaceSteer, NullSpaceProjection
from .spec import Steering, as_steering, load_direction, steer

__all__ = [
    "MODES",
    "POSITION_KEYWORDS",
    "ActAdd",
    "Conditional",
    "DirectionAblation",
    "DirectionClamp",
    "DirectionGate",
    "FeatureGate",
    "FeatureSteer",
    "Gate",
    "GateDecisions",
    "Intervention",
    "LearnedNullSpaceSteer",
    "NullSpaceProjection",
    "ProbeGate",
    "Steering",
    "as_steering",
    "check_positions",
    "export_lm_eval",
    "import_lm_eval",
    "load_direction",
    "steer",
]
