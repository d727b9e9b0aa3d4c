"""Evaluation commands: `sweep` (a grid of steering configurations over tasks, into a
results database, resumable) and `report` (that database as one HTML page + CSV/JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import RefusalScopeError
from ._app import at_least, check_dtype, command, console, output_file_path


@command("sweep")
def sweep_cmd(
    spec: Path = typer.Option(
        ...,
        "--spec",
        "-s",
        help="Grid file (.yaml/.json): steering spec files × strengths, conditional on/off, tasks with limits.",
    ),
    output: Path = typer.Option(
        Path("results.db"), "--output", "-o", parser=output_file_path, help="Results database (SQLite) to write."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model spec (default: the grid's, else 'default')."
    ),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, bf16 or fp32 (default: the grid's, else auto)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder of dataset files (default: the grid's, else $REFUSALSCOPE_DATA)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Prompts per forward pass (default: the grid's)."
    ),
    resume: bool = typer.Option(
        True,
        "--resume/--restart",
        help="Resume into an existing database (default), or delete it and start over (once the model has loaded).",
    ),
    report: Optional[str] = typer.Option(
        None, "--report", help="Also write the HTML report here when done (a folder, e.g. out/, gets out/report.html)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with an ETA."),
    ray: Optional[str] = typer.Option(
        None,
        "--ray",
        help="Compute on a Ray cluster: 'auto' (a running cluster), "
        "an address (host:port, ray://host:port) or 'local' (start one here). "
        "Needs the extra: pip install 'refusalscope[ray]'.",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="With --ray: model replicas in the pool (default: one per CPU of the cluster)."
    ),
) -> None:
    """Run a steering sweep into a results database; a rerun computes only what is missing."""
    from ..evaluation.grid_file import load_grid_file
    from ..evaluation.summary import summarise
    from ..evaluation.sweep import run_sweep
    from ..models import load_model

    plan = load_grid_file(spec)
    check_sweep_options(output, dtype, batch_size, report)
    at_least(workers, "--workers", 1)
    if ray is not None:
        from ..distributed.pool import require_ray

        require_ray()
    elif workers is not None:
        raise RefusalScopeError("--workers needs --ray", "add --ray local (or auto, or a cluster address)")
    if data_dir is not None:
        from ..data.registry import resolve_data_dir

        resolve_data_dir(data_dir)
    for task in plan.tasks:  # a missing or damaged dataset file is found before the model loads, not after
        task.task.items(data_dir=data_dir or plan.data_dir, limit=task.limit, seed=task.seed)
    chat = load_model(model or plan.model or "default", dtype=dtype or plan.dtype, progress=progress)
    if output.exists() and not resume:
        # only now: a model that fails to load (or a Ctrl-C while it converts) leaves the old results
        for suffix in ("", "-wal", "-shm"):
            Path(str(output) + suffix).unlink(missing_ok=True)
    executor = None
    if ray is not None:  # workers build the same model and grid from these (absolute) paths, never from pickled weights
        from ..distributed import GridFileSetup, RayExecutor

        spec_model = model or plan.model or "default"
        if Path(spec_model).expanduser().exists():
            spec_model = str(Path(spec_model).expanduser().resolve())
        resolved = str(chat.dtype).replace("torch.", "")  # 'auto' could resolve otherwise on another machine
        folder = data_dir or plan.data_dir
        executor = RayExecutor(
            GridFileSetup(
                str(spec.resolve()),
                spec_model,
                resolved,
                data_dir=None if folder is None else str(Path(folder).resolve()),
            ),
            address=ray,
            workers=workers,
        ).start()
    try:
        result = run_sweep(
            chat,
            plan.grid,
            plan.tasks,
            output,
            data_dir=data_dir or plan.data_dir,
            batch_size=batch_size or plan.batch_size,
            chunk_size=plan.chunk_size,
            pairs=plan.pairs,
            progress=progress,
            note=plan.note,
            executor=executor,
        )
    finally:
        if executor is not None:
            executor.close()
    console.print(
        f"{result.computed} items computed, {result.skipped} reused from {output} in {result.seconds:.1f}s",
        highlight=False,
    )
    console.print(summarise(output).table(), highlight=False, markup=False, soft_wrap=True)
    if report is not None:
        from ..report import build_report

        console.print(f"report written to {build_report(output, report)}", highlight=False, markup=False)


def check_sweep_options(output: Path, dtype: str | None, batch_size: int | None, report: str | None) -> None:
    """What `sweep` can check without a model: before the model loads and before --restart
    touches the database."""
    from ..checks import output_file

    check_dtype(dtype)
    at_least(batch_size, "--batch-size", 1)
    output_file(output, "results database")
    if report is not None:
        from ..report import report_outputs

        report_outputs(report, None)


@command("report")
def report_cmd(
    results: Path = typer.Argument(..., help="Results database written by `refusalscope sweep`."),
    output: str = typer.Option(
        "report.html", "--output", "-o", help="HTML page to write (a folder, e.g. out/, gets out/report.html)."
    ),
    export_dir: Optional[Path] = typer.Option(
        None,
        "--export-dir",
        help="Folder for every figure's data as CSV/JSON (default: <report name>_data/ beside the page).",
    ),
    title: Optional[str] = typer.Option(None, help="Page title."),
    examples: int = typer.Option(3, help="Example generations per task."),
) -> None:
    """Turn a results database into one self-contained HTML report (+ CSV/JSON of every figure)."""
    from ..report import build_report, report_outputs

    if not results.is_file():
        raise RefusalScopeError(
            f"results database {results} does not exist", "run `refusalscope sweep -o RESULTS.db` first"
        )
    at_least(examples, "--examples", 0)
    page, folder = report_outputs(output, export_dir)
    page = build_report(results, page, folder, title=title, examples=examples)
    console.print(f"report written to {page}; figure data in {folder}/", highlight=False, markup=False)
