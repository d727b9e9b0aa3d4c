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
    if final.exists() and not final.is_dir():
        from .errors import RefusalScopeError

        raise RefusalScopeError(f"cannot write the folder {final}: a file has that name", "choose another folder name")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    except OSError as exc:
        raise _scratch_error(final, exc) from None
    try:
        yield tmp
        mask = current_umask()
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; the entry is an ordinary folder
        for entry in tmp.rglob("*"):  # safetensors' writer makes its files 0600 whatever the umask
            if entry.is_file() and not entry.is_symlink():
                entry.chmod(0o666 & ~mask)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _scratch_error(final: Path, exc: OSError):
    from .errors import RefusalScopeError

    if final.is_dir():
        return RefusalScopeError(f"cannot write {final}: it is a folder", "name a file, e.g. " + str(final / "out"))
    return RefusalScopeError(
        f"cannot write {final}: {exc.strerror or exc}", "choose a path in a folder you can write to"
    )


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `final` for writing; rename it over `final` on success.

    The file ends up with the permissions an ordinary `open()` would give it (0666 less the
    umask), not mkstemp's private 0600; a folder or unwritable place is one clear error
    before anything is written.
    """
    final = Path(final)
    if final.is_dir():
        raise _scratch_error(final, IsADirectoryError(21, "Is a directory"))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    except OSError as exc:
        raise _scratch_error(final, exc) from None
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
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
    files accept both), with one clear error for a missing, binary, non-UTF-8 or unparsable
    file. YAML is read with `safe_load` (no Python objects), JSON without NaN/Infinity."""
    from .checks import parse_json, read_text
    from .errors import RefusalScopeError

    path = Path(path)
    text = read_text(path, what)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            raise RefusalScopeError(f"cannot parse the {what} {path}: {exc}", "fix the YAML syntax") from None
    return parse_json(text, f"the {what} {path}")
