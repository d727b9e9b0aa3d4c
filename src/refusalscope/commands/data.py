"""Commands about data and judges: list the datasets, validate judges on human labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._app import command, console

DataDirOpt = typer.Option(
    None, "--data-dir", "-d", envvar="REFUSALSCOPE_DATA",
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
    console.print("* default split; (n) = rows in the full release, not read here; local paths are relative "
                  "to the data folder")


@command("judge-validate")
def judge_validate_cmd(
    data_dir: Optional[Path] = DataDirOpt,
    classifier: Optional[str] = typer.Option(
        None, "--classifier", "-c", help="Also validate this judge model (hub id or folder)."
    ),
    kind: str = typer.Option("auto", help="Classifier kind: auto, sequence-classification or generative."),
    refusal_label: list[str] = typer.Option(
        None, "--refusal-label", help="Classifier class(es) meaning refusal (name or index); repeatable."
    ),
    classifier_input: str = typer.Option("reply", "--input", help="Classifier input: reply or pair."),
    mode: str = typer.Option("guard", help="Generative judge mode: guard (Llama Guard) or template."),
    phrases: Optional[Path] = typer.Option(None, help="Refusal phrase file for the substring judge."),
    window: int = typer.Option(250, help="Substring judge: characters of the reply searched (0 = all)."),
    partial: str = typer.Option("refusal", help="Map XSTest partial refusals to: refusal, compliance or exclude."),
    limit: Optional[int] = typer.Option(None, help="Seeded subset of each completion set (quick runs)."),
    batch_size: int = typer.Option(16),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report as JSON here."),
) -> None:
    """Validate refusal judges against the human labels of the XSTest completion sets."""
    from ..judges import ClassifierJudge, SubstringJudge, validate_judge

    judges = [SubstringJudge(phrases, window=window or None)]
    if classifier:
        judges.append(
            ClassifierJudge.from_pretrained(
                classifier, kind=kind, refusal_labels=refusal_label or None, input=classifier_input,
                mode=mode, batch_size=batch_size,
            )
        )
    reports = [validate_judge(j, data_dir, partial=partial, limit=limit) for j in judges]
    table = Table(title=f"judges vs XSTest human labels (partial refusal -> {partial})")
    for col in ("judge", "set", "n", "accuracy", "precision", "recall", "TN", "FP", "FN", "TP"):
        table.add_column(col, justify="left" if col in ("judge", "set") else "right")
    for report in reports:
        for s in [*report.sets, report.pooled]:
            table.add_row(
                report.judge, s.name, str(s.n), f"{s.accuracy:.3f}", f"{s.precision:.3f}", f"{s.recall:.3f}",
                str(s.tn), str(s.fp), str(s.fn), str(s.tp),
            )
    console.print(table)
    console.print("confusion: rows = human (complied, refused), columns = judge; TN/FP/FN/TP with refusal as positive")
    if output is not None:
        from ..paths import atomic_file

        with atomic_file(output) as handle:
            json.dump([r.to_dict() for r in reports], handle, indent=2)
