"""Where refusalscope keeps what it computes once and reuses (converted models, SAEs,
activation harvests), and how it writes there without ever leaving a half-written entry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """`$REFUSALSCOPE_CACHE`, default `~/.cache/refusalscope`."""
    root = os.environ.get("REFUSALSCOPE_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "refusalscope"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder next to `final` and rename it into place only on success.

    A killed process leaves at most a `.tmp-*` folder that no reader trusts; a rename on
    one filesystem is atomic, so readers see either nothing or the complete folder.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache entry is an ordinary folder
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `final` for writing; rename it over `final` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_tmp(parent: Path) -> None:
    """Delete scratch folders and files left by killed runs."""
    if not parent.exists():
        return
    for entry in parent.glob(".tmp-*"):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def read_json_or_yaml(path: str | Path, what: str):
    """The parsed content of a JSON file, or YAML for a .yaml/.yml suffix (spec and grid
    files accept both), with one clear error for a missing or unparsable file."""
    from .errors import RefusalScopeError

    path = Path(path)
    if not path.is_file():
        raise RefusalScopeError(f"{what} {path} does not exist", "check the path")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        import json

        return json.loads(text)
    except Exception as exc:  # noqa: BLE001 - a parse error of either kind
        raise RefusalScopeError(f"cannot parse the {what} {path}: {exc}") from None
