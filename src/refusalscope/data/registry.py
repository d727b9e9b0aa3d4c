"""The dataset registry: named datasets, each read from local release files or the hub.

`load_dataset(name, split)` resolves a dataset in this order:

1. a local folder (`data_dir`, else `$REFUSALSCOPE_DATA`) holding the original release
   files in their original layout (e.g. `advbench/harmful_behaviors.csv`), or the hub
   repository's files downloaded into `<data_dir>/<repo name>/`;
2. the Hugging Face hub (`huggingface_hub.snapshot_download` of the dataset repository,
   which also serves a warm local hub cache offline), for datasets published there;
3. otherwise a `RefusalScopeError` naming the files it looked for and how to supply them.

`source="local"` or `source="hub"` forces one of the two. Built-in datasets need neither.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RefusalScopeError
from .files import DATA_FIX
from .records import Dataset, ensure_unique_ids

# parse(paths, split, name) -> items; `paths` are the files a source matched, in order.
Parser = Callable[[list[Path], str, str], list[Any]]


@dataclass(frozen=True)
class LocalSource:
    """Release files under a data folder: split -> patterns (relative paths or globs)."""

    files: dict[str, tuple[str, ...]]
    parse: Parser

    def match(self, root: Path, split: str) -> list[Path] | None:
        """The files for `split`, or None when any pattern matches nothing."""
        found: list[Path] = []
        for pattern in self.files.get(split, ()):
            hits = sorted(root.glob(pattern)) if _is_glob(pattern) else [root / pattern]
            hits = [h for h in hits if h.is_file()]
            if not hits:
                return None
            found.extend(hits)
        return found or None


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset repository: split -> fnmatch patterns of its files."""

    repo_id: str
    files: dict[str, tuple[str, ...]]
    parse: Parser
    revision: str | None = None

    @property
    def folder_name(self) -> str:
        return self.repo_id.split("/")[-1]

    def match(self, root: Path, split: str) -> list[Path] | None:
        """Files in a snapshot folder (or a local copy of the repo) for `split`."""
        if not root.is_dir():
            return None
        rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        found: list[Path] = []
        for pattern in self.files.get(split, ()):
            hits = [r for r in rel if fnmatch.fnmatch(r, pattern)]
            if not hits:
                return None
            found.extend(root / r for r in hits)
        return found or None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # prompts | multiple_choice | qa | completions | text
    description: str
    splits: tuple[str, ...]
    default_split: str
    upstream: str
    local: tuple[LocalSource, ...] = ()
    hub: HubSource | None = None
    builtin: Callable[[str], list[Any]] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # rows of the full release, per split

    def split_or_default(self, split: str | None) -> str:
        split = split or self.default_split
        if split not in self.splits:
            raise RefusalScopeError(
                f"dataset '{self.name}' has no split '{split}'",
                f"use one of: {', '.join(self.splits)}",
            )
        return split

    def expected_files(self, split: str) -> list[str]:
        names = [p for source in self.local for p in source.files.get(split, ())]
        if self.hub is not None:
            names += [f"{self.hub.folder_name}/{p}" for p in self.hub.files.get(split, ())]
        return names


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"dataset {spec.name} registered twice")
    if spec.default_split not in spec.splits:
        raise ValueError(f"{spec.name}: default split {spec.default_split} not in {spec.splits}")
    REGISTRY[spec.name] = spec
    return spec


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def dataset_names() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    if not isinstance(name, str) or name not in REGISTRY:
        import difflib

        name = str(name)
        close = [n for n in REGISTRY if name.split("/")[-1] in n] or difflib.get_close_matches(
            name, list(REGISTRY), n=2
        )
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise RefusalScopeError(
            f"unknown dataset '{name}'",
            f"{hint}run `refusalscope datasets` for the list; names: {', '.join(dataset_names())}",
        )
    return REGISTRY[name]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """`data_dir`, else `$REFUSALSCOPE_DATA`, else None (no local folder)."""
    if data_dir is None:
        env = os.environ.get("REFUSALSCOPE_DATA")
        if not env:
            return None
        data_dir = env
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise RefusalScopeError(f"data folder {path} does not exist", DATA_FIX)
    return path


@dataclass(frozen=True)
class Resolution:
    """Where a dataset split would be read from, without reading it."""

    name: str
    split: str
    origin: str  # local | hub | builtin | missing
    files: tuple[Path, ...] = ()
    parse: Parser | None = None
    where: str = ""  # human-readable location


def locate(name: str, split: str | None = None, data_dir: str | Path | None = None) -> Resolution:
    """Find the local files of a dataset split, or say that the hub (or nothing) has them."""
    spec = get_spec(name)
    split = spec.split_or_default(split)
    if spec.builtin is not None:
        return Resolution(name, split, "builtin", where="built into refusalscope")
    root = resolve_data_dir(data_dir)
    if root is not None:
        for source in spec.local:
            files = source.match(root, split)
            if files:
                return Resolution(name, split, "local", tuple(files), source.parse, _describe(files, root))
        if spec.hub is not None:
            files = spec.hub.match(root / spec.hub.folder_name, split)
            if files:
                return Resolution(name, split, "local", tuple(files), spec.hub.parse, _describe(files, root))
    if spec.hub is not None and spec.hub.files.get(split):
        patterns = ", ".join(spec.hub.files[split])
        return Resolution(name, split, "hub", parse=spec.hub.parse, where=f"hub: {spec.hub.repo_id} ({patterns})")
    return Resolution(name, split, "missing", where="not found locally; no hub copy")


def _describe(files: Sequence[Path], root: Path) -> str:
    rel = [f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f) for f in files]
    if len(rel) > 3:
        return f"{root}/{{{rel[0]}, … {len(rel)} files}}"
    return ", ".join(f"{root}/{r}" for r in rel)


def _hub_files(spec: DatasetSpec, split: str) -> tuple[list[Path], str]:
    """Download (or find in the hub cache) the repository files of one split."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    hub = spec.hub
    assert hub is not None
    patterns = list(hub.files[split])
    try:
        folder = Path(
            snapshot_download(hub.repo_id, repo_type="dataset", revision=hub.revision, allow_patterns=patterns)
        )
    except LocalEntryNotFoundError as exc:
        raise RefusalScopeError(
            f"dataset '{spec.name}' (split {split}): no local release files and the hub repository "
            f"'{hub.repo_id}' is not in the local Hugging Face cache (the hub cannot be reached)",
            f"{DATA_FIX}; expected one of: {', '.join(spec.expected_files(split))} "
            f"(upstream: {spec.upstream}); or connect to the internet once",
        ) from exc
    except HfHubHTTPError as exc:
        raise RefusalScopeError(
            f"the Hugging Face hub refused dataset repository '{hub.repo_id}': {exc}",
            "check the network; for gated datasets run `huggingface-cli login`",
        ) from exc
    files = hub.match(folder, split)
    if not files:
        raise RefusalScopeError(
            f"hub dataset '{hub.repo_id}' ({folder}) has no file matching {', '.join(patterns)}",
            "the repository layout may have changed; download the release files and pass --data-dir",
        )
    return files, folder.name


def load_dataset(
    name: str,
    split: str | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    source: str = "auto",
) -> Dataset:
    """Load a registered dataset split as typed records.

    `limit` keeps a seeded random subset of that many items (original order kept), so a
    quick run always sees the same prompts for the same seed. `source` is "auto",
    "local" or "hub".
    """
    if source not in ("auto", "local", "hub"):
        raise RefusalScopeError(f"unknown source '{source}'", "use 'auto', 'local' or 'hub'")
    from ..checks import number

    if limit is not None:  # checked before any file is read, so a bad limit costs nothing
        limit = number(limit, "limit", integer=True, minimum=1)
    seed = number(seed, f"the seed for dataset '{name}'", integer=True, minimum=0)
    spec = get_spec(name)
    split = spec.split_or_default(split)
    if source == "hub" and (spec.hub is None or not spec.hub.files.get(split)):
        raise RefusalScopeError(
            f"dataset '{name}' (split {split}) has no Hugging Face hub copy",
            f"use source='local' with --data-dir; the files come from {spec.upstream}",
        )
    files: tuple[str, ...] = ()
    if spec.builtin is not None:
        items, origin = spec.builtin(split), "builtin"
    else:
        found = locate(name, split, data_dir) if source != "hub" else None
        if found is not None and found.origin == "local" and found.parse is not None:  # local always has a parser
            items = found.parse(list(found.files), split, name)
            origin, files = f"local: {found.where}", tuple(str(f) for f in found.files)
        elif source == "local" or spec.hub is None or not spec.hub.files.get(split):
            root = resolve_data_dir(data_dir)
            where = f"under {root}" if root is not None else "(no data folder given)"
            raise RefusalScopeError(
                f"dataset '{name}' (split {split}): file(s) {', '.join(spec.expected_files(split))} not found {where}",
                f"{DATA_FIX}; the files come from {spec.upstream}",
            )
        else:
            paths, revision = _hub_files(spec, split)
            items = spec.hub.parse(paths, split, name)
            origin, files = f"hub: {spec.hub.repo_id}@{revision}", tuple(str(p) for p in paths)
    if not items:
        raise RefusalScopeError(
            f"dataset '{name}' (split {split}) is empty ({', '.join(files) or origin})",
            "the file holds no rows; restore the original release file",
        )
    ensure_unique_ids(items, f"dataset '{name}'")
    dataset = Dataset(name=name, split=split, items=tuple(items), origin=origin, kind=spec.kind, files=files)
    return dataset.sample(limit, seed)
