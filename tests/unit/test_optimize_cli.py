"""Bad inputs of `refusalscope optimize` that need a valid refusal direction to be reached
(the rows that fail earlier are in tests/unit/test_bad_inputs.py): each is one clear
error, exit 2, before any model loads, with nothing written."""

import pytest
from typer.testing import CliRunner

from refusalscope.cli import app

runner = CliRunner()


CASES = {
    "judge": (["--judge", "no-such-judge"], "unknown judge 'no-such-judge'"),
    "too-many-prompts": (["--n-val", "200", "--n-test", "200"], "fewer than the 400 the splits need"),
    "mc-task-not-mc": (["--mc-task", "wikitext"], "--mc-task wikitext is not a multiple-choice task"),
    "mc-task-unknown": (["--mc-task", "mmlux"], "unknown capability task 'mmlux'"),
    "mc-too-many": (["--n-mc", "5000"], "fewer than the 5000 the splits need"),
    "data-dir": (["--data-dir", "{d}/nodata"], "data folder"),
    "harmful-dataset": (["--harmful", "harmful/nosuch"], "harmful/nosuch"),
    "search": (["--search", "fast"], "unknown --search 'fast'"),
    "too-few-behaviours": (
        ["--harmful", "jailbreak/pair", "--n-val", "50", "--n-test", "50"],
        "'jailbreak/pair' (one prompt per behaviour) has 91 items, fewer than the 100",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_optimize_input(name, optimize_ws, data_dir):
    extra, fragment = CASES[name]
    args = [
        "optimize",
        "--methods",
        "actadd",
        "--direction",
        str(optimize_ws / "direction"),
        "--data-dir",
        str(data_dir),
        "-o",
        str(optimize_ws / "out"),
    ] + [a.replace("{d}", str(optimize_ws)) for a in extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "error:" in result.output and "fix:" in result.output, result.output
    assert "Traceback" not in result.output
    assert not (optimize_ws / "out").exists()
