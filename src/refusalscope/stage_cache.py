"""A content-keyed cache for the small results of pipeline stages, and writes that leave
unchanged files alone.

Every stage of `refusalscope run` ends in something small (a threshold, a list of
prompts, a table of scores) that costs forward passes to compute. Keying each on the
content of its inputs (model identity and dtype, prompts, settings) and keeping it in
`$REFUSALSCOPE_CACHE` rather than in a run's output folder makes a second run, even into
a new folder, a pure lookup: no forward pass at all. The dtype is part of the key because
bf16 and fp32 forwards give different numbers.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paths import atomic_file, cache_dir

if TYPE_CHECKING:
    import torch

    from .models.chat import ChatModel

_weights_hashes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_hash(model: torch.nn.Module) -> str:
    """A hash of a module's parameters and buffers (computed once per module object): the
    identity of a model that has no file hash, e.g. one built in memory."""
    import torch

    if model not in _weights_hashes:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        _weights_hashes[model] = digest.hexdigest()[:16]
    return _weights_hashes[model]


def model_identity(chat: ChatModel) -> dict[str, str]:
    """What a cached result computed with `chat` depends on: its weights, its dtype and,
    when it is not the CPU default (fp64), the attention core's precision (an fp32 core moves
    logits by ~1e-5, enough to flip a threshold or a near-tied ranking). The default adds no
    key, so caches written before the switch existed stay valid. `info.id` carries the
    file's content hash when the model came from a file; a model without one (built in
    memory) is identified by hashing its weights."""
    from .models.attention import DEFAULT_CORE, attention_core

    ident = {"id": chat.info.id, "dtype": str(chat.dtype).replace("torch.", "")}
    core = attention_core(getattr(chat.model, "config", None))
    if core != DEFAULT_CORE:
        ident["attention"] = core
    if not chat.info.sha256:
        ident["weights"] = weights_hash(chat.model)
    return ident


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (tensors: pass their bytes' hash)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def stage_path(kind: str, key: str, suffix: str = ".json") -> Path:
    """Where the cache keeps the result `key` of stage `kind`."""
    return cache_dir() / kind / f"{key}{suffix}"


def cached_json(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    """The stored result for `key`, or `compute()` stored for next time (JSON values)."""
    path = stage_path(kind, key)
    if path.is_file():
        try:
            return json.loads(path.read_text())["value"]
        except (ValueError, KeyError):
            pass  # a damaged entry is recomputed and replaced
    value = compute()
    with atomic_file(path) as handle:
        json.dump({"key": key, "value": value}, handle)
    return json.loads(json.dumps(value))  # the same types a later lookup returns (tuples → lists)


def write_text_if_changed(path: str | Path, text: str) -> bool:
    """Write `text` to `path` atomically unless the file already holds exactly it, so a
    rerun leaves its outputs' modification times (and anything watching them) alone.
    Returns whether the file was written."""
    path = Path(path)
    if path.is_file():
        try:
            if path.read_text() == text:
                return False
        except (OSError, UnicodeDecodeError):
            pass
    with atomic_file(path) as handle:
        handle.write(text)
    return True
