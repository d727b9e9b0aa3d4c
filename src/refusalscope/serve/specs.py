"""The one folder the playground reads and writes steering specs in.

A request names a spec by a bare file name; nothing in a request can reach another folder.
Names are a strict pattern (letters, digits, `-`, `_`, an optional .json/.yaml/.yml
suffix), so `..`, separators, absolute paths, hidden files and control characters are
refused before any path is built; the resolved path is then checked to sit directly in
the folder (which also stops a symlink inside it from pointing elsewhere). A spec's own
references (SAEs, direction files) are held to the same rule when it is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RefusalScopeError

if TYPE_CHECKING:
    from ..steering.spec import Steering

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}(\.(json|yaml|yml))?")
SUFFIXES = (".json", ".yaml", ".yml")


class SpecFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, name: str) -> Path:
        """The file a spec name stands for; a RefusalScopeError for any other name."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise RefusalScopeError(
                f"'{name}' is not a valid spec name",
                "use letters, digits, '-' and '_' (up to 64), optionally ending in .json, .yaml or .yml",
            )
        if not name.endswith(SUFFIXES):
            name += ".json"
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise RefusalScopeError(f"spec '{name}' resolves outside the spec folder", "use a plain file name")
        return path

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.suffix in SUFFIXES and p.is_file() and NAME.fullmatch(p.name) and p.resolve().parent == self.root
        )

    def save(self, name: str, steering: Steering, overwrite: bool = False) -> Path:
        path = self.path(name)
        if path.exists() and not overwrite:
            raise RefusalScopeError(f"a spec named {path.name} already exists", "choose another name or overwrite it")
        self.root.mkdir(parents=True, exist_ok=True)
        steering.name = path.stem
        return steering.save(path)

    def read(self, name: str) -> tuple[Path, dict[str, Any]]:
        """(path, parsed content) of a spec in the folder, its file references checked."""
        from ..paths import read_json_or_yaml

        path = self.path(name)
        if not path.is_file():
            raise RefusalScopeError(f"there is no spec named {path.name}", "pick one from the list of saved specs")
        data = read_json_or_yaml(path, "steering spec")
        self._check_files(data)
        return path, data

    def _check_files(self, obj) -> None:
        """Direction files a spec points to must lie in the spec folder too."""
        if isinstance(obj, dict):
            if "file" in obj and isinstance(obj["file"], str):
                target = Path(obj["file"])
                resolved = (target if target.is_absolute() else self.root / target).resolve()
                if resolved.parent != self.root and self.root not in resolved.parents:
                    raise RefusalScopeError(
                        f"the spec refers to '{obj['file']}', outside the spec folder",
                        "keep a spec's direction files beside it, or store directions inline",
                    )
            for value in obj.values():
                self._check_files(value)
        elif isinstance(obj, list):
            for value in obj:
                self._check_files(value)
