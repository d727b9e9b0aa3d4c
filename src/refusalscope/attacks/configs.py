"""The model configurations every attack runs against: unsteered, steered, gated.

A configuration is a name and a `Steering` (None: the model as it is). Attacks take one
configuration at a time and record its steering id, so tables can put the unsteered,
steered and gated rows side by side. A spec written for another model is refused here,
before any attack work starts (the steering module itself only warns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RefusalScopeError

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..steering.spec import Steering


@dataclass
class AttackConfig:
    """One row of every robustness table: a name and the steering it applies (or None)."""

    name: str
    steering: Any = None  # refusalscope.steering.Steering | None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", self.name or ""):
            raise RefusalScopeError(
                f"configuration name {self.name!r} cannot name an output folder",
                "use letters, digits and . _ + - (e.g. steered, gated-0.5)",
            )

    @property
    def steering_id(self) -> str | None:
        return None if self.steering is None else self.steering.id

    @property
    def gated(self) -> bool:
        return self.steering is not None and bool(self.steering.conditionals)

    def describe(self) -> str:
        if self.steering is None:
            return f"{self.name}: unsteered"
        return f"{self.name}: {self.steering.describe()}"


def check_steering_for(chat: ChatModel, steering: Steering | None) -> None:
    """Raise when `steering` names another model than `chat` (by content hash, else name)."""
    if steering is None:
        return
    recorded = steering.model or {}
    info = chat.info
    other = None
    if recorded.get("sha256") and info.sha256:
        if recorded["sha256"] != info.sha256:
            other = f"{recorded.get('name')} ({recorded['sha256'][:12]})"
    elif recorded.get("name") and recorded["name"] != info.name and recorded.get("spec") not in (None, info.spec):
        other = str(recorded["name"])
    if other is not None:
        raise RefusalScopeError(
            f"the steering spec {steering.id} was written for {other}, not for {info.name}",
            "attack the model the spec names (--model), or write a spec for this model",
        )
    steering.check(chat)  # layers, widths, SAE hook points


def load_config(name: str, spec: str | Path | None, chat: ChatModel) -> AttackConfig:
    """An AttackConfig from a spec file (None: unsteered), checked against `chat`."""
    if spec is None:
        return AttackConfig(name, None)
    from ..steering import Steering

    steering = Steering.load(spec)
    check_steering_for(chat, steering)
    steering.for_model(chat)
    return AttackConfig(name, steering)


def parse_config_option(text: str) -> tuple[str, str | None]:
    """'steered=spec.json' -> ('steered', 'spec.json'); 'unsteered' -> ('unsteered', None);
    a bare path names the configuration after the file (gated if it holds a gate)."""
    if "=" in text:
        name, path = text.split("=", 1)
        if not name.strip() or not path.strip():
            raise RefusalScopeError(
                f"cannot read the configuration '{text}'", "use NAME=SPEC_FILE, e.g. steered=spec.json"
            )
        return name.strip(), path.strip()
    if text.strip() in ("unsteered", "none"):
        return "unsteered", None
    return Path(text).stem, text
