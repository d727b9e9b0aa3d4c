"""A disk cache of the model's own greedy replies.

Several stages need the same replies: SAE training mixes the model's own answers (its
refusals included) into the token stream, discovery measures the loss on the model's own
harmless answers, evaluation compares steered with unsteered replies. Generation is the
slowest thing refusalscope does on a CPU, so replies are cached by (model and dtype,
prompts, settings) and computed once: bf16 and fp32 greedy replies differ, so they are
different entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from .paths import atomic_file, cache_dir
from .stage_cache import model_identity


def _key(model: dict, prompts: Sequence[str], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(model, sort_keys=True).encode())
    digest.update(json.dumps(list(prompts)).encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def cached_replies(
    chat,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    system: str | None = None,
    progress: bool = True,
    folder: Path | None = None,
) -> list[str]:
    """Greedy replies to `prompts`, from the cache when this exact request was made before."""
    settings = {"max_new_tokens": max_new_tokens, "system": system, "greedy": True}
    model = model_identity(chat)
    key = _key(model, prompts, settings)
    root = Path(folder) if folder else cache_dir() / "generations"
    path = root / f"{key}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("prompts") == list(prompts):
            return stored["replies"]
    gen = chat.generate(
        list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, system=system, progress=progress
    )
    with atomic_file(path) as handle:
        json.dump({"model": model, "settings": settings, "prompts": list(prompts), "replies": gen.texts}, handle)
    return gen.texts
