"""Sending a driver's Python objects (sweep configurations, tasks, attribution requests) to
Ray workers with models and SAEs by reference, never their weights.

A grid built in Python (what `refusalscope run` builds after discovery) has no file a
worker could read, so the driver pickles its configurations and tasks. Pickled naively,
they would carry every SAE they steer with (hundreds of MB for a 16k-latent SAE, once per
configuration) and any model a judge has loaded (the learned judge's feature model). Here
the pickler writes a reference instead:

- a `ChatModel` becomes (spec, folder, dtype, identity): the worker substitutes its own
  model when the identity and dtype are its own, and otherwise loads that model once;
- an `SAE` that knows where it came from (a folder, a file, or a pretrained release id:
  `steering.references.sae_source_of`) becomes (source, dtype, content hash): the worker
  loads it once and checks the hash, so a worker that reads another file stops with an
  error instead of steering with other weights. An SAE built in memory, with no source,
  travels inline (its weights in the pickle).

Everything else (directions, gates, tasks, their judges' small heads) is pickled with
Ray's cloudpickle, so lambdas and local classes in tasks travel too.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RefusalScopeError


def model_reference(chat: Any) -> tuple[str, ...]:
    """What identifies a loaded model well enough to load it again elsewhere."""
    info = chat.info
    where = info.path if info.path and Path(info.path).exists() else info.spec
    if where and Path(where).exists():
        where = str(Path(where).resolve())
    return ("model", str(info.spec), str(where), str(chat.dtype).replace("torch.", ""), str(info.id))


def sae_reference(sae: Any) -> tuple[str, ...] | None:
    """(source, dtype, content hash) for an SAE that can be reloaded from its source, else None."""
    from ..steering.references import sae_hash, sae_source_of

    source = sae_source_of(sae)
    if not source:
        return None
    path = Path(source).expanduser()
    if path.exists():
        source = str(path.resolve())
    return ("sae", source, str(sae.W_enc.dtype).replace("torch.", ""), sae_hash(sae))


def dumps(obj: Any) -> bytes:
    """Pickle `obj` with models and reloadable SAEs written as references (see the module docstring)."""
    from ray import cloudpickle

    from ..models.chat import ChatModel
    from ..sae.model import SAE

    class ReferencePickler(cloudpickle.Pickler):
        def persistent_id(self, item: Any) -> Any:
            if isinstance(item, ChatModel):
                return model_reference(item)
            if isinstance(item, SAE):
                return sae_reference(item)
            return None

    buffer = io.BytesIO()
    ReferencePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


class References:
    """A worker's side of `dumps`: resolves model and SAE references, each loaded once."""

    def __init__(self, chat: Any, device: str | None = None):
        self.chat = chat
        self.device = device or str(chat.device)
        self.models: dict[tuple, Any] = {}
        self.saes: dict[tuple, Any] = {}

    def model(self, spec: str, where: str, dtype: str, identity: str) -> Any:
        own = str(self.chat.dtype).replace("torch.", "")
        if identity == self.chat.info.id and dtype == own:
            return self.chat
        key = (where, dtype)
        if key not in self.models:
            from ..models import load_model

            self.models[key] = load_model(where, dtype=dtype, device=self.device, progress=False)
        found = self.models[key]
        if found.info.id != identity:
            raise RefusalScopeError(
                f"a Ray worker loaded {found.info.id} from {where}, the driver used {identity}",
                "every node must read the same model files (a shared file system or the same layout)",
            )
        return found

    def sae(self, source: str, dtype: str, digest: str) -> Any:
        key = (source, dtype, digest)
        if key not in self.saes:
            from ..sae.io import load_sae
            from ..steering.references import sae_hash

            sae = load_sae(source, dtype=dtype)
            if sae_hash(sae) != digest:
                raise RefusalScopeError(
                    f"a Ray worker read another SAE at {source} (content hash {sae_hash(sae)[:12]}, "
                    f"the driver's is {digest[:12]})",
                    "every node must read the same SAE files (a shared file system or the same layout)",
                )
            self.saes[key] = sae
        return self.saes[key]

    def loads(self, blob: bytes) -> Any:
        """Unpickle what `dumps` wrote, resolving its references here."""
        resolve: dict[str, Callable[..., Any]] = {"model": self.model, "sae": self.sae}

        class ReferenceUnpickler(pickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                if not isinstance(pid, tuple) or not pid or pid[0] not in resolve:
                    raise pickle.UnpicklingError(f"unknown reference {pid!r}")
                return resolve[pid[0]](*pid[1:])

        return ReferenceUnpickler(io.BytesIO(blob)).load()
