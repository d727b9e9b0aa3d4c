"""The command line: help on every command, clear errors with exit code 2."""

import pytest
from typer.testing import CliRunner

from refusalscope.cli import app

runner = CliRunner()


def command_names():
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in command_names():
        assert name in result.output


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_prints_square_brackets_verbatim():
    """An install hint such as refusalscope[ray] must survive the help printer (Rich markup would eat it)."""
    result = runner.invoke(app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "refusalscope[ray]" in result.output


def test_unknown_model_exits_2_with_problem_and_fix():
    result = runner.invoke(app, ["generate", "--model", "no-such-model", "hello"])
    assert result.exit_code == 2
    assert "error: unknown model spec 'no-such-model'" in result.output
    assert "fix:" in result.output


def test_missing_prompt_file_exits_2(tmp_path):
    result = runner.invoke(app, ["generate", "--file", str(tmp_path / "absent.txt")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_prompt_file_formats(tmp_path):
    from refusalscope.commands._app import read_prompts

    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n"b"\n')
    assert read_prompts([], tmp_path / "p.txt") == ["one", "two"]
    assert read_prompts(["x"], tmp_path / "p.jsonl") == ["x", "a", "b"]
