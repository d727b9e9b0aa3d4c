"""Checks for values a user hands refusalscope: file keys, numbers, choices, text files, output paths.

Every reader of a user file (steering specs, sweep grids, SAE configs, prompt files,
lm-eval CSVs) and every CLI option goes through these, for two reasons. A misspelled key
that is silently ignored changes what runs (a spec with `valeu: 8` clamps to the default
0.0), and a value of the wrong type or a NaN fails much later, inside a forward pass,
as a traceback. Checking where the value is read turns each into one `RefusalScopeError`
that names the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import RefusalScopeError

S = TypeVar("S", bound=str)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys outside `allowed`: a typo must not silently fall back to a default."""
    allowed = sorted(set(allowed))
    for key in mapping:
        if key not in allowed:
            raise RefusalScopeError(
                f"{where}: unknown field '{key}'{did_you_mean(key, allowed)}",
                f"the fields here are {', '.join(allowed)}",
            )


def need_mapping(value: Any, where: str, what: str = "a mapping") -> dict:
    if not isinstance(value, dict):
        raise RefusalScopeError(f"{where} must be {what}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(
    value: Any,
    where: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> Any:
    """`value` as an int (`integer`) or float, finite and within [minimum, maximum].

    Booleans and strings are refused (YAML reads `yes` as True and `1e3` as a string);
    an integer field accepts a float only when it is whole (JSON writers emit 64.0).
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RefusalScopeError(f"{where} must be {kind}, got {_shown(value)}", f"write {where} as {kind}")
    if not math.isfinite(value):
        raise RefusalScopeError(
            f"{where} must be a finite number, got {value}", "NaN and infinite values steer nothing sensible"
        )
    if integer:
        if value != int(value):
            raise RefusalScopeError(f"{where} must be a whole number, got {value}", f"write {where} as an integer")
        value = int(value)
    else:
        value = float(value)
    if positive and value <= 0:
        raise RefusalScopeError(f"{where} must be positive, got {value}", f"give {where} a value above 0")
    if minimum is not None and value < minimum:
        raise RefusalScopeError(
            f"{where} must be at least {minimum:g}, got {value}", f"give {where} a value >= {minimum:g}"
        )
    if maximum is not None and value > maximum:
        raise RefusalScopeError(
            f"{where} must be at most {maximum:g}, got {value}", f"give {where} a value <= {maximum:g}"
        )
    return value


def parse_number(text: str, where: str, *, integer: bool = False, **limits: Any) -> Any:
    """A number written as text (a CSV cell, a comma-separated option), then `number`'s checks."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise RefusalScopeError(
            f"{where} must be a number, got {_shown(text)}", "write it as a number, e.g. 2 or -0.5"
        ) from None
    return number(value, where, integer=integer, **limits)


def number_list(text: str, where: str, **limits: Any) -> tuple[float, ...]:
    """'-1,-2,-3' as finite floats; an empty list is an error (it would run nothing)."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise RefusalScopeError(f"{where} lists no numbers", f"give {where} as comma-separated numbers, e.g. 1,2,4")
    return tuple(parse_number(p, f"{where} value '{p.strip()}'", **limits) for p in parts)


def choice(value: Any, where: str, choices: Iterable[S]) -> S:
    """`value` if it is one of `choices`, else an error listing them (with a close match).
    Typed by the choices: a tuple of a `Literal` alias's values gives that alias back."""
    allowed = list(choices)
    if not isinstance(value, str) or value not in allowed:
        raise RefusalScopeError(
            f"{where}: unknown value {_shown(value)}{did_you_mean(str(value), allowed)}",
            f"use one of {', '.join(allowed)}",
        )
    return value


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a user file; missing, folder, unreadable, binary or non-UTF-8 → one error."""
    path = Path(path)
    if not path.exists():
        raise RefusalScopeError(f"{what} {path} does not exist", "check the path")
    if path.is_dir():
        raise RefusalScopeError(f"{what} {path} is a folder, not a file", "pass the file inside it")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RefusalScopeError(
            f"cannot read the {what} {path}: {exc.strerror or exc}", "check its permissions"
        ) from None
    if b"\x00" in data[:8192]:
        raise RefusalScopeError(f"the {what} {path} is a binary file, not text", "pass a text file (UTF-8)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RefusalScopeError(
            f"the {what} {path} is not UTF-8 text (byte {exc.start})", "save the file as UTF-8"
        ) from None


def parse_json(text: str, where: str) -> Any:
    """JSON with NaN/Infinity refused (Python's json accepts them; nothing here wants them)."""

    def constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise RefusalScopeError(
            f"cannot parse {where}: not valid JSON ({exc})", "fix the syntax (a JSON validator shows where)"
        ) from None


def output_file(path: str | Path, what: str) -> Path:
    """Check, before any work, that `path` can be written as a file: not a folder, under a
    folder that exists or can be made, writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise RefusalScopeError(f"the {what} {path} is a folder", f"name a file for the {what}, e.g. {path / 'out'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise RefusalScopeError(f"the {what} {path} is not writable", "choose another path or fix its permissions")
    writable_parent(path.parent, what, path)
    return path


def output_dir(path: str | Path, what: str) -> Path:
    """Check that `path` is (or can be made) a writable folder."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RefusalScopeError(f"the {what} {path} is a file, not a folder", "choose a folder name")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise RefusalScopeError(
                f"the {what} {path} is not writable", "choose another folder or fix its permissions"
            )
        return path
    writable_parent(path.parent, what, path)
    return path


def writable_parent(parent: Path, what: str, path: Path) -> None:
    """The nearest existing ancestor of `parent` must be a writable folder."""
    probe = parent if str(parent) else Path(".")
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RefusalScopeError(
            f"cannot write the {what} {path}: {probe} is a file, not a folder", "choose another path"
        )
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise RefusalScopeError(f"cannot write the {what} {path}: {probe} is not writable", "choose another path")
