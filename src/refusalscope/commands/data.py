"""Commands about data: list the datasets (judge validation lives in commands/judge.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._app import command, console

DataDirOpt = typer.Option(
    None,
    "--data-dir",
    "-d",
    envvar="REFUSALSCOPE_DATA",
    help="Folder with the original release files (default: $REFUSALSCOPE_DATA).",
)


@command("datasets")
def datasets_cmd(
    data_dir: Optional[Path] = DataDirOpt,
    counts: bool = typer.Option(True, "--counts/--no-counts", help="Read local files to count rows."),
    name: Optional[str] = typer.Argument(None, help="Show only datasets whose name contains this."),
) -> None:
    """List the registered datasets, where each resolves from, and row counts."""
    from ..data.registry import REGISTRY, load_dataset, locate, resolve_data_dir

    root = resolve_data_dir(data_dir)
    if name and not any(name in spec.name for spec in REGISTRY.values()):
        from ..checks import did_you_mean
        from ..errors import RefusalScopeError

        raise RefusalScopeError(
            f"no dataset name contains '{name}'{did_you_mean(name, REGISTRY)}",
            "run `refusalscope datasets` without a filter to list them all",
        )
    table = Table(title=escape(f"datasets (data folder: {root or 'none; set --data-dir or $REFUSALSCOPE_DATA'})"))
    for col in ("name", "kind", "split", "rows", "resolves from"):
        table.add_column(col, overflow="fold")
    for spec in REGISTRY.values():
        if name and name not in spec.name:
            continue
        for split in spec.splits:
            found = locate(spec.name, split, root)
            rows = "-"
            if counts and found.origin in ("local", "builtin"):
                rows = str(len(load_dataset(spec.name, split, data_dir=root)))
            elif spec.counts.get(split):
                rows = f"({spec.counts[split]})"
            where = found.where if found.origin != "missing" else f"missing: {spec.upstream}"
            if root is not None:
                where = where.replace(f"{root}/", "")
            label = split + (" *" if split == spec.default_split else "")
            table.add_row(spec.name, spec.kind, label, rows, escape(where))
    console.print(table)
    console.print(
        "* default split; (n) = rows in the full release, not read here; local paths are relative to the data folder"
    )
