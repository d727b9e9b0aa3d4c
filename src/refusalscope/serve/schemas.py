"""What the playground's API accepts, with the bounds that keep one request from
monopolising the shared model worker or the machine's memory.

Every field is validated before any model work starts; a request outside these bounds is
answered with a 4xx that names the field, never a 500. The steering form (`SteeringForm`)
is the page's view of a steering: latent sliders, the dense-direction controls and the
gate. `playground.Playground.build` turns it into a `Steering`, the same object a spec
file holds, so what the page saves is exactly what `refusalscope steer --spec` runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_BODY_BYTES = 64 * 1024  # a request body larger than this is refused unread (413)
MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 1024  # checked after tokenising, before the model runs
MAX_NEW_TOKENS = 256
MAX_LATENTS = 64
MAX_VALUE = 1e4  # |slider value|; steering values beyond this only make noise
MAX_CURVE_PROMPTS = 16
MAX_CURVE_STRENGTHS = 9
MAX_CURVE_NEW_TOKENS = 48

Mode = Literal["set", "scale", "add"]
CurvePrompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Strength = Annotated[float, Field(ge=-10, le=10)]


class Strict(BaseModel):
    """Unknown fields are an error (a typo in a field name must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LatentControl(Strict):
    layer: int = Field(ge=0, le=1000)
    latent: int = Field(ge=0, le=10_000_000)
    mode: Mode = "set"
    value: float = Field(0.0, ge=-MAX_VALUE, le=MAX_VALUE)


class GateForm(Strict):
    enabled: bool = False
    kind: Literal["direction", "feature"] = "direction"
    threshold: float = Field(0.0, ge=-MAX_VALUE, le=MAX_VALUE)
    layer: int | None = Field(None, ge=0, le=1000)  # direction gate: default the earliest steered layer
    latent: int | None = Field(None, ge=0, le=10_000_000)  # feature gate: a latent of the SAE at `layer`


class SteeringForm(Strict):
    latents: list[LatentControl] = Field(default_factory=list, max_length=MAX_LATENTS)
    ablation: bool = False  # project the refusal direction out at every layer
    actadd: float = Field(0.0, ge=-1000, le=1000)  # coefficient × the refusal direction at its layer
    gate: GateForm = Field(default_factory=GateForm)


class GenerateRequest(Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    steering: SteeringForm = Field(default_factory=SteeringForm)
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    baseline: bool = True  # also stream the unsteered reply
    system: str | None = Field(None, max_length=MAX_PROMPT_CHARS)


class CurveRequest(Strict):
    prompts: list[CurvePrompt] = Field(min_length=1, max_length=MAX_CURVE_PROMPTS)
    steering: SteeringForm
    strengths: list[Strength] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0], min_length=1, max_length=MAX_CURVE_STRENGTHS
    )
    max_new_tokens: int = Field(24, ge=1, le=MAX_CURVE_NEW_TOKENS)


class ActivationRequest(Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    layer: int = Field(ge=0, le=1000)
    latent: int = Field(ge=0, le=10_000_000)


class SaveSpecRequest(Strict):
    name: str = Field(min_length=1, max_length=80)
    steering: SteeringForm
    description: str = Field("", max_length=2000)
    overwrite: bool = False
