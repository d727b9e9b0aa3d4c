"""The typer app every command module registers on, and the shared CLI plumbing.

Every command turns a `RefusalScopeError` into two lines on stderr (problem, fix) and exit
code 2; commands import their machinery lazily so that `--help` answers instantly.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import RefusalScopeError

app = typer.Typer(
    name="refusalscope",
    help="Find, steer and evaluate the SAE features that mediate refusal in chat models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

ModelOpt = typer.Option("default", "--model", "-m", help="Embedded name, hub id, model folder or .gguf file.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (bf16 where native, else fp32), bf16 or fp32.")


def handle_errors(fn):
    """Print user errors as 'error: …' / 'fix: …' and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RefusalScopeError as exc:
            err_console.print(f"[bold red]error:[/bold red] {exc.problem}", highlight=False, soft_wrap=True)
            if exc.fix:
                err_console.print(f"[bold]fix:[/bold] {exc.fix}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; cached and checkpointed work is kept")
            raise typer.Exit(130) from None

    return wrapper


def command(*args, **kwargs):
    def register(fn):
        return app.command(*args, **kwargs)(handle_errors(fn))

    return register


def read_prompts(prompts: list[str], file: Optional[Path]) -> list[str]:
    """Prompts from arguments and/or a file (.txt: one per line; .json/.jsonl: strings or
    objects with a 'prompt' field)."""
    out = list(prompts)
    if file is not None:
        if not file.is_file():
            raise RefusalScopeError(f"prompt file {file} does not exist", "check the path")
        text = file.read_text()
        if file.suffix == ".json":
            items = json.loads(text)
        elif file.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = [line for line in text.splitlines() if line.strip()]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                if "prompt" not in item:
                    raise RefusalScopeError(f"{file}: item {i} has no 'prompt' field")
                item = item["prompt"]
            out.append(str(item))
    if not out:
        raise RefusalScopeError("no prompts given", "pass prompts as arguments or --file prompts.txt")
    return out
