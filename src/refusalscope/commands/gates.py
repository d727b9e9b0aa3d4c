"""`refusalscope compare-gates`: what each gate of a sweep did (the refusal-direction gate
beside a probe gate), read from the results database the sweep wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import RefusalScopeError
from ._app import command, console


@command("compare-gates")
def compare_gates_cmd(
    results: Path = typer.Argument(..., help="Results database written by `refusalscope sweep`."),
    harmful: Optional[list[str]] = typer.Option(None, help="In-distribution harmful tasks (default: role harmful)."),
    harmless: Optional[list[str]] = typer.Option(None, help="In-distribution harmless tasks (default: role benign)."),
    ood_harmful: Optional[list[str]] = typer.Option(
        None, help="Out-of-distribution harmful tasks (default: role jailbreak)."
    ),
    ood_harmless: Optional[list[str]] = typer.Option(
        None, help="Out-of-distribution harmless tasks, e.g. XSTest-safe (default: the harmless tasks)."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the rows as JSON here."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
) -> None:
    """Compare the gates of a sweep's conditional configurations: fire rates, gate accuracy in
    and out of distribution, capability left unsteered and bought back (gated − ungated)."""
    from rich.markup import escape
    from rich.table import Table

    from ..evaluation.gate_comparison import compare_gates, gate_table
    from ..paths import atomic_file

    if not results.is_file():
        raise RefusalScopeError(
            f"results database {results} does not exist", "run `refusalscope sweep -o RESULTS.db` first"
        )
    rows = compare_gates(
        results, harmful=harmful, harmless=harmless, ood_harmful=ood_harmful, ood_harmless=ood_harmless, seed=seed
    )
    if not rows:
        raise RefusalScopeError(
            f"{results} holds no gated (conditional) configuration",
            "give grid methods `conditional: true` and a gate (a spec file or a probe folder)",
        )
    lines = gate_table(rows)
    table = Table(title="gates: balanced accuracy and capability left unsteered [95% CI]")
    for name in lines[0]:
        table.add_column(escape(name))
    for line in lines[1:]:
        table.add_row(*[escape(c) for c in line])
    console.print(table)
    fire = Table(title="gate fire rate per task [95% CI]")
    tasks = list(dict.fromkeys(t for r in rows for t in r.fire))
    fire.add_column("configuration")
    for t in tasks:
        fire.add_column(escape(t))
    for r in rows:
        fire.add_row(escape(r.config.label), *[escape(str(r.fire[t])) if t in r.fire else "" for t in tasks])
    console.print(fire)
    if output is not None:
        with atomic_file(output) as handle:
            json.dump([r.to_dict() for r in rows], handle, indent=2)
        console.print(f"wrote {output}", highlight=False, markup=False)
