"""An attack's output folder: what it was run with, finished results, per-item checkpoints.

Attacks are long (a GCG step on the default model takes about a minute on two cores), so
every attack writes to a folder that a killed run resumes from:

    <out>/attack.json        identity: attack, model, steering id, settings (a rerun with
                             different settings is refused instead of mixing results)
    <out>/results.jsonl      one line per finished item (behaviour, conversation, prompt)
    <out>/state/<item>.json  the checkpoint of the item in flight (GCG every N steps,
                             multi-turn after every turn), deleted once the item is done

A rerun skips finished items and continues the one in flight from its checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import RefusalScopeError
from ..paths import atomic_file, remove_stale_tmp

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(item_id: str) -> str:
    """A file name for an item id (ids hold only letters, digits and separators, mostly)."""
    return _SAFE.sub("_", item_id)[:120] or "item"


class AttackRun:
    """The output folder of one attack against one model configuration."""

    def __init__(self, folder: str | Path, identity: dict[str, Any]):
        self.folder = Path(folder)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.folder)
        remove_stale_tmp(self.folder / "state")
        marker = self.folder / "attack.json"
        if marker.is_file():
            stored = json.loads(marker.read_text())
            if stored != self.identity:
                changed = sorted(k for k in set(stored) | set(self.identity) if stored.get(k) != self.identity.get(k))
                raise RefusalScopeError(
                    f"{self.folder} holds an attack run with other settings (differs in: {', '.join(changed)})",
                    "use another output folder, or delete this one to start over",
                )
        else:
            with atomic_file(marker) as handle:
                json.dump(self.identity, handle, indent=2, sort_keys=True)

    # ------------------------------------------------------------ finished items
    @property
    def results_path(self) -> Path:
        return self.folder / "results.jsonl"

    def results(self) -> list[dict[str, Any]]:
        """Finished items, in the order they finished (a torn last line is ignored)."""
        if not self.results_path.is_file():
            return []
        out = []
        for line in self.results_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: that item is redone
        return out

    def done(self) -> set[str]:
        return {r["id"] for r in self.results()}

    def finish(self, result: dict[str, Any]) -> None:
        """Append a finished item (fsync'd) and drop its checkpoint."""
        good = self.results()
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in good + [result])
        with atomic_file(self.results_path) as handle:  # rewrite: a torn line from a kill disappears
            handle.write(text)
        self.state_path(result["id"]).unlink(missing_ok=True)

    # ------------------------------------------------------------ checkpoints
    def state_path(self, item_id: str) -> Path:
        return self.folder / "state" / f"{safe_name(item_id)}.json"

    def load_state(self, item_id: str) -> dict[str, Any] | None:
        path = self.state_path(item_id)
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        return state if state.get("id") == item_id else None

    def save_state(self, item_id: str, state: dict[str, Any]) -> None:
        path = self.state_path(item_id)
        with atomic_file(path) as handle:
            json.dump({**state, "id": item_id}, handle)

    def __repr__(self) -> str:
        return f"AttackRun({os.fspath(self.folder)}, {len(self.done())} done)"
