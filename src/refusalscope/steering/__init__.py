"""Steering: interventions on the residual stream that work with KV-cached, batched generation.

    from refusalscope.steering import FeatureSteer, DirectionAblation, ActAdd, Conditional, FeatureGate, steer

    up = FeatureSteer(sae, [1234, 77], "set", 8.0)               # clamp two latents of one SAE
    with steer(chat, up):
        chat.generate(prompts)
    chat.generate(prompts, interventions=up)                    # the same, without a block

    gated = Conditional(up, FeatureGate(sae, 99), threshold=2.0) # steer only flagged prompts
    steering = Steering([gated], name="refusal-up").for_model(chat)
    steering.save("refusal-up.json"); Steering.load("refusal-up.json").id

See `interventions` (the maths and costs), `conditional` (gates), `spec` (the spec file),
`lm_eval` (lm-evaluation-harness steer files) and `nullspace` (steering confined
to directions benign activations do not use). Underneath them: `kinds` (the Intervention
and Gate base classes, their one hook body, the registry of spec kinds), `positions`
(which tokens are edited), `points` (hook points), `references` (SAE and direction
identity, hashes and loading) and `latents` (SAE latents inside hooks, via
`SAE.encode_subset`). The modules import one way: positions, points, references, latents
→ kinds → interventions, conditional → spec → lm_eval; nullspace plugs in by registering.
"""

from .conditional import Conditional, DirectionGate, FeatureGate, GateDecisions, ProbeGate
from .interventions import MODES, ActAdd, DirectionAblation, DirectionClamp, FeatureSteer
from .kinds import Gate, Intervention
from .lm_eval import export_lm_eval, import_lm_eval
from .nullspace import LearnedNullSpaceSteer, NullSpaceProjection
from .positions import POSITION_KEYWORDS, check_positions
from .references import load_direction
from .spec import Steering, as_steering, steer

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
