"""Every command line the README shows parses as written.

The README's command table, its shell code blocks and its inline `refusalscope …` examples
are read here; each becomes an argument list that the real command-line parser must accept
(arguments and options known, types right, nothing extra or missing), and that command's
`--help` must answer. A README that says `chat SPEC` while the command wants `--spec` fails
this test, not a new user.

Notation: `[x]` is optional (the test includes it), `a|b` alternatives (the test takes the
first), `…` repeatable (dropped), `<what>` one placeholder value; a form that starts with
global options (`--debug COMMAND …`) checks those options.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from refusalscope.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_forms(text: str) -> list[str]:
    """First-column command forms of the '| command | what it does |' table."""
    forms = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| command |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                in_table = False
                continue
            cell = re.split(r"(?<!\\)\|", line)[1].strip()
            if cell.startswith("`") and cell.endswith("`"):
                forms.append(cell.strip("`"))
    return forms


def _code_block_forms(text: str) -> list[str]:
    """`refusalscope …` lines of ```bash/```sh/```console code blocks (comments removed)."""
    forms = []
    for block in re.findall(r"```(?:bash|sh|console|shell)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            if line.startswith("refusalscope "):
                forms.append(line.removeprefix("refusalscope "))
    return forms


def _inline_forms(text: str) -> list[str]:
    """Inline code spans of prose that start with `refusalscope ` (they may span lines)."""
    outside_blocks = re.sub(r"```.*?```", "", text, flags=re.S)
    return [" ".join(m.split()) for m in re.findall(r"`refusalscope ([^`]+)`", outside_blocks)]


def readme_forms() -> list[str]:
    text = README.read_text()
    forms = _table_forms(text) + _code_block_forms(text) + _inline_forms(text)
    assert len(forms) >= 15, "the README's command table was not found"
    return list(dict.fromkeys(forms))


def to_argv(form: str) -> list[str]:
    form = re.sub(r"<([^>]*)>", lambda m: "-".join(m.group(1).split()), form)  # <quick layer 8> -> one value
    form = form.replace("\\|", "|").replace("…", "")
    form = re.sub(r"([^\s|]+)(\|[^\s|]+)+", r"\1", form)  # a|b|c -> a
    form = form.replace("[", "").replace("]", "")
    return shlex.split(form)


COMMANDS = typer.main.get_command(app)


def parse_error(argv: list[str]) -> str | None:
    """Why the command-line parser rejects `argv` (None when it accepts it); the command
    itself does not run."""
    global_options = {opt for param in COMMANDS.params for opt in param.opts}
    while argv and argv[0].startswith("-"):
        if argv[0] not in global_options:
            return f"no global option {argv[0]}"
        argv = argv[1:]
    if not argv or argv[0] == "COMMAND":
        return None
    name, args = argv[0], argv[1:]
    command = COMMANDS.commands.get(name)
    if command is None:
        return f"there is no command '{name}'"
    while hasattr(command, "commands"):  # a command group (`attack gcg`): descend to the subcommand
        if not args:
            return None  # the group alone lists its subcommands
        sub, args = args[0], args[1:]
        if sub not in command.commands:
            return f"'{name}' has no subcommand '{sub}'"
        name, command = f"{name} {sub}", command.commands[sub]
    try:
        command.make_context(name, list(args))
    except Exception as exc:  # noqa: BLE001 - click's (vendored) usage and parameter errors
        return exc.format_message() if hasattr(exc, "format_message") else str(exc)
    return None


@pytest.mark.parametrize("form", readme_forms())
def test_readme_command_parses_as_written(form):
    argv = to_argv(form)
    problem = parse_error(argv)
    assert problem is None, f"README shows `refusalscope {form}`, which the parser rejects: {problem}"
    if "COMMAND" in argv:  # global options only: the top-level help
        argv = argv[: argv.index("COMMAND")]
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, result.output


def test_notation_and_the_parser_check():
    assert to_argv("run [--profile quick\\|paper]") == ["run", "--profile", "quick"]
    assert to_argv("attack gcg\\|suite\\|multiturn") == ["attack", "gcg"]
    assert to_argv("generate PROMPT… [-f prompts.txt]") == ["generate", "PROMPT", "-f", "prompts.txt"]
    assert to_argv("discover --sae <quick layer 8>") == ["discover", "--sae", "quick-layer-8"]
    assert "unexpected extra argument" in parse_error(["chat", "spec.json"])  # what the issue met
    assert parse_error(["chat", "--spec", "spec.json"]) is None
    assert "no such option" in parse_error(["run", "--profiel", "quick"]).lower()
    if "attack" in COMMANDS.commands:  # a command group
        assert parse_error(["attack", "no-such-attack"]) == "'attack' has no subcommand 'no-such-attack'"


def test_every_data_dir_option_describes_the_same_default():
    """Where benchmark files come from by default is one fact; every command states it
    alike ($REFUSALSCOPE_DATA; `sweep` first takes its grid's)."""
    helps = {}
    for name, command in COMMANDS.commands.items():
        for param in command.params:
            if "--data-dir" in getattr(param, "opts", ()):
                helps[name] = param.help or ""
    assert len(helps) >= 5
    for name, text in helps.items():
        assert "$REFUSALSCOPE_DATA" in text, (name, text)
        assert "shared/data" not in text, (name, text)  # not a default anywhere in the code
