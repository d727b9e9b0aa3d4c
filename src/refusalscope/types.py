"""The fixed choices of refusalscope as `Literal` types, and the aliases of its core parameters.

Why one module: a steering mode, a gate reduction or an SAE architecture is a bare string
in spec files, on the command line and in the Python API. Naming each set of choices once,
as a `Literal`, lets the type checker catch `mode="clamp"` in code, and lets every module
that validates the same choice at run time (spec files, CLI options) derive its tuple from
the same place with `choices(...)`, so the two can never drift apart.

This module imports nothing from refusalscope at run time (only under TYPE_CHECKING), so
any module can import it without creating an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Union, get_args

if TYPE_CHECKING:
    from .models.hooks import HasHooks

# ---------------------------------------------------------------------- steering
#: how a feature intervention edits a latent: set f' = v, scale f' = c·f, add f' = f + v
Mode = Literal["set", "scale", "add"]
#: the tokens an intervention or gate acts on (steering/interventions.py)
PositionKeyword = Literal["all", "prompt", "generated", "post_instruction"]
#: a keyword, or token indices within the prompt (negative counts from its end)
Positions = Union[PositionKeyword, Sequence[int]]  # noqa: UP007 - also a runtime alias
#: how a gate turns per-token scores into one score per prompt
Reduction = Literal["max", "mean", "last"]
#: what an intervention argument may be: one hook contributor, several, or none
Interventions = Union["HasHooks", Sequence["HasHooks"], None]  # noqa: UP007 - also a runtime alias

# ---------------------------------------------------------------------- models
#: the tokens whose residual vectors `ChatModel.residual` returns ("eoi" = "post_instruction")
CapturePosition = Literal["all", "last", "post_instruction", "eoi"]
CapturePositions = Union[CapturePosition, Sequence[int]]  # noqa: UP007 - also a runtime alias
#: dtype names accepted by --dtype and `load_model(dtype=...)` (models/dtypes.py)
DtypeName = Literal["auto", "bf16", "bfloat16", "fp32", "float32", "fp16", "float16"]

# ---------------------------------------------------------------------- SAEs
#: SAE architectures (sae/model.py; aliases such as "relu" map onto these)
Architecture = Literal["standard", "jumprelu", "topk", "batchtopk"]

# ---------------------------------------------------------------------- discovery
#: ways to rank and select refusal latents (discovery/features.py)
DiscoveryMethod = Literal["cossim+ig", "ig", "ap", "cossim", "actdiff", "random"]
#: gradient attribution of SAE latents (discovery/scoring.py)
AttributionMethod = Literal["ap", "ig"]
#: orders of the selectivity ranking (discovery/selectivity.py)
SelectivityOrder = Literal["combined", "effect_per_loss", "benign_fire", "prior"]

# ---------------------------------------------------------------------- probes, judges, store
#: what a linear probe reads (probes/linear.py)
ProbeKind = Literal["dense", "latents", "projection"]
#: the judges refusalscope ships (judges/named.py); hub judges are named by `HubJudgeName`
JudgeName = Literal["learned", "substring", "rubric"]
HubJudgeName = Literal["harmbench", "llama-guard-3", "wildguard", "strongreject"]
#: the role a task plays in a sweep (evaluation/store.py)
TaskRole = Literal["harmful", "benign", "jailbreak", "capability"]


def choices(alias: Any) -> tuple[Any, ...]:
    """The strings a `Literal` alias admits, in declaration order (for run-time checks and
    error messages): `choices(Mode) == ("set", "scale", "add")`. Annotate the constant with
    the alias, `MODES: tuple[Mode, ...] = choices(Mode)`, and `checks.choice(value, where,
    MODES)` returns a `Mode`."""
    args = get_args(alias)
    if not args or not all(isinstance(a, str) for a in args):
        raise TypeError(f"{alias!r} is not a Literal of strings")
    return tuple(args)


__all__ = [
    "Architecture",
    "AttributionMethod",
    "CapturePosition",
    "CapturePositions",
    "DiscoveryMethod",
    "DtypeName",
    "HubJudgeName",
    "Interventions",
    "JudgeName",
    "Mode",
    "PositionKeyword",
    "Positions",
    "ProbeKind",
    "Reduction",
    "SelectivityOrder",
    "TaskRole",
    "choices",
]
