"""Grid files' `pairs:` entries: checked where the file is read, named when the name is left out."""

from __future__ import annotations

import pytest

from refusalscope import RefusalScopeError
from refusalscope.evaluation.grid_file import load_grid_file

TASKS = (
    "tasks:\n  - {name: mph, dataset: builtin/minimal-pairs, split: harmful, limit: 2}\n"
    "  - {name: mpb, dataset: builtin/minimal-pairs, split: benign, limit: 2}\n"
)


def test_a_pair_without_a_name_is_named_after_its_tasks(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(TASKS + "pairs: [{harmful: mph, benign: mpb}, {name: mine, harmful: mph, benign: mpb}]\n")
    plan = load_grid_file(grid)
    assert plan.pairs == [
        {"name": "mph − mpb", "harmful": "mph", "benign": "mpb"},
        {"name": "mine", "harmful": "mph", "benign": "mpb"},
    ]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ("[{name: p, benign: mpb}]", "pairs[0]: harmful must be a task name, got None"),
        ("[{name: p, harmful: 3, benign: mpb}]", "pairs[0]: harmful must be a task name, got 3"),
        ("[{name: p, harmful: mph, benign: [mpb]}]", "pairs[0]: benign must be a task name"),
        ("[{name: 7, harmful: mph, benign: mpb}]", "pairs[0]: name must be a string"),
        ("[{name: p, harmful: mph, benign: mpb, extra: 1}]", "pairs[0]"),
    ],
)
def test_malformed_pairs_are_one_clear_error(tmp_path, pairs, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(TASKS + f"pairs: {pairs}\n")
    with pytest.raises(RefusalScopeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid_file(grid)
