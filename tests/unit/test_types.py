"""The Literal aliases in refusalscope.types admit exactly the choices the code checks at run time."""

from typing import Literal

import pytest

from refusalscope import types as t


@pytest.mark.parametrize(
    ("alias", "module", "name"),
    [
        (t.Mode, "refusalscope.steering.interventions", "MODES"),
        (t.PositionKeyword, "refusalscope.steering.positions", "POSITION_KEYWORDS"),
        (t.Reduction, "refusalscope.steering.conditional", "REDUCTIONS"),
        (t.Architecture, "refusalscope.sae.model", "ARCHITECTURES"),
        (t.DiscoveryMethod, "refusalscope.discovery.features", "METHODS"),
        (t.SelectivityOrder, "refusalscope.discovery.selectivity", "ORDERS"),
        (t.ProbeKind, "refusalscope.probes.linear", "KINDS"),
        (t.JudgeName, "refusalscope.judges.named", "JUDGE_NAMES"),
        (t.HubJudgeName, "refusalscope.judges.named", "HUB_JUDGES"),
        (t.TaskRole, "refusalscope.evaluation.store", "ROLES"),
    ],
)
def test_literal_matches_runtime_choices(alias, module, name):
    import importlib

    assert t.choices(alias) == tuple(getattr(importlib.import_module(module), name))


def test_dtype_names_are_the_ones_resolve_dtype_accepts():
    from refusalscope.errors import RefusalScopeError
    from refusalscope.models.dtypes import resolve_dtype

    for name in t.choices(t.DtypeName):
        resolve_dtype(name)  # none raises
    with pytest.raises(RefusalScopeError):
        resolve_dtype("fp8")


def test_attribution_methods_are_the_ones_scoring_accepts():
    assert set(t.choices(t.AttributionMethod)) <= set(t.choices(t.DiscoveryMethod))


def test_choices_refuses_what_is_not_a_literal_of_strings():
    assert t.choices(Literal["a", "b"]) == ("a", "b")
    with pytest.raises(TypeError):
        t.choices(t.Positions)  # a Union, not a Literal
    with pytest.raises(TypeError):
        t.choices(Literal[1, 2])


def test_types_imports_nothing_from_refusalscope_at_run_time():
    """Any module may import refusalscope.types without an import cycle: its only package
    imports sit under `if TYPE_CHECKING:`."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(t.__file__).read_text())
    runtime = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert runtime  # the scan sees the module's imports
    for node in runtime:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        assert node.__class__ is ast.Import or node.level == 0, ast.dump(node)
        assert not any(n.startswith("refusalscope") for n in names), ast.dump(node)
