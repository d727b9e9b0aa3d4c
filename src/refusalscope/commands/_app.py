"""The typer app every command module registers on, and the shared CLI plumbing.

Every command turns a `RefusalScopeError` into two lines on stderr (problem, fix) and exit
code 2; any other exception is a bug and says so (exit 1; `--debug` adds the traceback).
Commands import their machinery lazily so that `--help` answers instantly.
"""

from __future__ import annotations

import functools
import traceback
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.markup import escape

from ..errors import RefusalScopeError

app = typer.Typer(
    name="refusalscope",
    help="Find, steer and evaluate the SAE features that mediate refusal in chat models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # help is plain text: under Rich markup `pip install 'refusalscope[ray]'` printed as
    # `'refusalscope'`, the extra's name read as a style tag and dropped
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)

ModelOpt = typer.Option("default", "--model", "-m", help="Embedded name, hub id, model folder or .gguf file.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16 on GPU), bf16 or fp32.")


DEBUG = {"on": False}  # set by the global --debug option, per invocation


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", envvar="REFUSALSCOPE_DEBUG", help="On an internal error (a bug), print its full traceback."
    ),
) -> None:
    """Find, steer and evaluate the SAE features that mediate refusal in chat models."""
    DEBUG["on"] = debug


def print_error(problem: str, fix: str | None) -> None:
    """'error: …' / 'fix: …' on stderr. User text (paths, names, replies) is escaped: a path
    like `[/x]` must not crash the printer and `[bold]` must not vanish from the path it names."""
    err_console.print(f"[bold red]error:[/bold red] {escape(str(problem))}", highlight=False, soft_wrap=True)
    if fix:
        err_console.print(f"[bold]fix:[/bold] {escape(str(fix))}", highlight=False, soft_wrap=True)


def handle_errors(fn):
    """Print user errors as 'error: …' / 'fix: …' and exit 2, without a traceback.

    An OSError that names a file (unwritable output, a vanished input) is the user's to fix
    too. Anything else is a bug in refusalscope: it says so in two lines and exits 1, and
    `refusalscope --debug …` shows the traceback to put in a bug report.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RefusalScopeError as exc:
            print_error(exc.problem, exc.fix)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; cached and checkpointed work is kept", highlight=False)
            raise typer.Exit(130) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:
            if exc.filename is None:
                report_bug(exc)
            target = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            print_error(
                f"{exc.strerror or exc}: {target}", "check the path, that its folder exists, and its permissions"
            )
            raise typer.Exit(2) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug reports itself as one
            report_bug(exc)

    return wrapper


def report_bug(exc: BaseException) -> None:
    if DEBUG["on"]:
        err_console.print(
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), markup=False, highlight=False
        )
    print_error(
        f"internal error (a bug in refusalscope): {type(exc).__name__}: {exc}",
        "rerun with `refusalscope --debug ...` for the traceback and report it with the command you ran",
    )
    raise typer.Exit(1) from None


DTYPES = ("auto", "bf16", "bfloat16", "fp32", "float32", "fp16", "float16")


def check_dtype(dtype: str | None) -> None:
    """--dtype, checked before any model is loaded or converted (a conversion takes minutes)."""
    from ..checks import choice

    if dtype is not None:
        choice(dtype, "--dtype", DTYPES)


def at_least(value: int | None, option: str, minimum: int) -> None:
    """An integer option's lower bound, checked before any expensive stage."""
    from ..checks import number

    if value is not None:
        number(value, option, integer=True, minimum=minimum)


def command(*args, **kwargs):
    def register(fn):
        return app.command(*args, **kwargs)(handle_errors(fn))

    return register


def output_file_path(value: str | Path) -> Path:
    """Parser for options that name an output *file*: `-o out/` names a folder, and a file
    called `out` appearing in its place would surprise everyone, so it is refused while the
    command line is read (exit 2), before any work."""
    text = str(value)
    if text.endswith(("/", "\\")):
        raise typer.BadParameter(
            f"'{text}' ends with a slash, so it names a folder; give a file name, e.g. {text}out.json"
        )
    return Path(text)


def read_prompts(prompts: list[str], file: Optional[Path]) -> list[str]:
    """Prompts from arguments and/or a file (.txt: one per line; .json: a list of strings or
    objects with a 'prompt' field; .jsonl: one such string or object per line).

    Every malformed file (binary, not UTF-8, bad JSON, an item that is not a non-empty
    string) is one error naming the file and the item, before any model is loaded.
    """
    from ..checks import parse_json, read_text

    out = list(prompts)
    if file is not None:
        text = read_text(file, "prompt file")
        suffix = file.suffix.lower()
        if suffix == ".json":
            items = parse_json(text, f"the prompt file {file}")
            if not isinstance(items, list):
                raise RefusalScopeError(
                    f"the prompt file {file} holds a JSON {type(items).__name__}, not a list",
                    'write a list: ["first prompt", {"prompt": "second"}]',
                )
            labels = [f"item {i}" for i in range(len(items))]
        elif suffix == ".jsonl":
            items, labels = [], []
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    items.append(parse_json(line, f"line {n} of the prompt file {file}"))
                    labels.append(f"line {n}")
        else:
            items = [line for line in text.splitlines() if line.strip()]
            labels = [f"line {i}" for i in range(1, len(items) + 1)]
        for item, label in zip(items, labels):
            if isinstance(item, dict):
                if "prompt" not in item:
                    raise RefusalScopeError(f"{file}: {label} has no 'prompt' field", 'write {"prompt": "..."}')
                item = item["prompt"]
            if not isinstance(item, str) or not item.strip():
                raise RefusalScopeError(
                    f"{file}: {label} is not a non-empty prompt string (got {type(item).__name__})",
                    'each item is a string or {"prompt": "..."}',
                )
            out.append(item)
    if not out:
        raise RefusalScopeError("no prompts given", "pass prompts as arguments or --file prompts.txt")
    return out
