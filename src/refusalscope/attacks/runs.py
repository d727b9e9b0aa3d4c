"""An attack's output folder: what it was run with, finished results, per-item checkpoints.

Attacks are long (a GCG step on the default model takes about a minute on two cores), so
every attack writes to a folder that a killed run resumes from:

    <out>/attack.json        identity: attack, model, steering id, settings (a rerun with
                             different settings is refused instead of mixing results)
    <out>/results.jsonl      one line per finished item (behaviour, conversation, prompt)
    <out>/state/<item>.json  the checkpoint of the item in flight (GCG every N steps,
                             multi-turn after every turn), deleted once the item is done

A rerun skips finished items and continues the one in flight from its checkpoint.

The same can live in a results database instead (`StoreRun`: a sweep's `results.db`, so
one file holds the sweep and the attacks, and the report reads both from it): `out`
naming a `.db` file (or an open `ResultsStore`) selects it; see `open_run`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import RefusalScopeError
from ..paths import atomic_file, remove_stale_tmp

if TYPE_CHECKING:
    from ..evaluation.store import ResultsStore

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

    def close(self) -> None:
        """Nothing to release (the same interface as `StoreRun`)."""

    def __repr__(self) -> str:
        return f"AttackRun({os.fspath(self.folder)}, {len(self.done())} done)"


Output = Union[str, "os.PathLike[str]", "ResultsStore"]
STORE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def is_store(out: Output) -> bool:
    """Whether an attack's `out` names a results database (an open store or a `.db` file)
    rather than a folder."""
    from ..evaluation.store import ResultsStore

    return isinstance(out, ResultsStore) or Path(os.fspath(out)).suffix.lower() in STORE_SUFFIXES


class StoreRun:
    """An attack against one configuration, kept in a results database (`attack_runs`,
    `attack_items`, `attack_states`), with `AttackRun`'s interface. Rows are keyed by the
    identity and the configuration's name: a rerun with the same settings continues, one
    with other settings gets rows of its own (nothing is mixed, nothing refused)."""

    def __init__(self, store: str | os.PathLike[str] | ResultsStore, name: str, identity: dict[str, Any]):
        from ..evaluation.store import ResultsStore

        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.name = name
        self._owned = not isinstance(store, ResultsStore)
        self.store = ResultsStore(os.fspath(store)) if not isinstance(store, ResultsStore) else store
        if self.store.readonly:
            raise RefusalScopeError(f"{self.store.path} is open read-only", "open the results database for writing")
        self.key = self.store.add_attack_run(
            str(self.identity.get("attack")), name, self.identity.get("steering"), self.identity
        )

    def results(self) -> list[dict[str, Any]]:
        return self.store.attack_results(self.key)

    def done(self) -> set[str]:
        return self.store.attack_done(self.key)

    def finish(self, result: dict[str, Any]) -> None:
        self.store.add_attack_result(self.key, result["id"], result)

    def load_state(self, item_id: str) -> dict[str, Any] | None:
        state = self.store.attack_state(self.key, item_id)
        return state if state is not None and state.get("id") == item_id else None

    def save_state(self, item_id: str, state: dict[str, Any]) -> None:
        self.store.save_attack_state(self.key, item_id, {**state, "id": item_id})

    def close(self) -> None:
        """Close the database if this run opened it (the WAL is checkpointed into the file)."""
        if self._owned:
            self.store.close()

    def __repr__(self) -> str:
        return f"StoreRun({self.store.path}, {self.name}, {self.key})"


def open_run(out: Output, name: str, identity: dict[str, Any]) -> AttackRun | StoreRun:
    """The run that keeps one configuration's results: rows in a results database when
    `out` is one (`is_store`), else the folder `out` itself (callers pass `<root>/<name>`)."""
    from ..evaluation.store import ResultsStore

    if isinstance(out, ResultsStore):
        return StoreRun(out, name, identity)
    if is_store(out):
        return StoreRun(os.fspath(out), name, identity)
    return AttackRun(os.fspath(out), identity)


def import_folder(root: str | Path, store: str | os.PathLike[str] | ResultsStore) -> dict[str, int]:
    """Copy attack folders written under `root` (`gcg/<config>/`, `multiturn/<config>/`,
    `suite/<config>/`, as `refusalscope attack … -o root/<kind>` writes them) into a
    results database: finished items and checkpoints. Items already there are kept, so
    importing twice adds nothing; a run resumed from the database afterwards continues where the folder stopped.
    Returns {"runs": …, "items": …, "states": …} copied."""
    from ..evaluation.store import ResultsStore

    root = Path(root)
    if not root.is_dir():
        raise RefusalScopeError(f"attack folder {root} does not exist", "pass the folder `refusalscope attack` wrote")
    db = store if isinstance(store, ResultsStore) else ResultsStore(os.fspath(store))
    counts = {"runs": 0, "items": 0, "states": 0}
    try:
        for kind in ("suite", "gcg", "multiturn"):
            base = root / kind
            folders = sorted(p for p in base.iterdir() if (p / "attack.json").is_file()) if base.is_dir() else []
            for folder in folders:
                identity = json.loads((folder / "attack.json").read_text())
                source = AttackRun(folder, identity)
                target = StoreRun(db, folder.name, identity)
                counts["runs"] += 1
                done = target.done()
                for result in source.results():
                    if result["id"] not in done:
                        target.finish(result)
                        counts["items"] += 1
                finished = target.done()
                state_dir = folder / "state"
                for path in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
                    state = json.loads(path.read_text())
                    if state.get("id") and state["id"] not in finished:
                        target.save_state(state["id"], state)
                        counts["states"] += 1
    finally:
        if not isinstance(store, ResultsStore):
            db.close()
    if not counts["runs"]:
        raise RefusalScopeError(
            f"{root} holds no attack folders (gcg/<config>/attack.json, multiturn/…, suite/…)",
            "pass the folder that `refusalscope attack … -o` wrote into",
        )
    return counts
