"""ModelInfo: the identity of a loaded model, recorded in every result it produces.

It lives in its own module because both sides need it: `loading` fills it from a spec
(where the weights came from, their hash), and `ChatModel` completes it from the loaded
network (layers, width, dtype). Keeping it here lets `loading` import `chat` without
`chat` importing `loading` back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelInfo:
    """Identity of a loaded model, recorded in every result it produces."""

    spec: str
    name: str
    source: str  # embedded | gguf | hub | local | object
    path: str
    family: str
    n_layers: int
    d_model: int
    dtype: str
    sha256: str | None = None
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def id(self) -> str:
        """Short stable identifier: name plus content hash where known."""
        return f"{self.name}@{self.sha256[:12]}" if self.sha256 else self.name
