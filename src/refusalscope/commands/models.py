"""Commands about models: list the embedded ones, answer prompts, the `run` main job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._app import DtypeOpt, ModelOpt, at_least, check_dtype, command, console, output_file_path, read_prompts


@command("models")
def models_cmd() -> None:
    """List the embedded models and whether each is converted in the cache."""
    from ..models.embedded import EMBEDDED
    from ..paths import cache_dir

    table = Table(title="embedded models")
    for col in ("name", "aliases", "cached", "description"):
        table.add_column(col)
    seen = set()
    for model in EMBEDDED.values():
        if model.name in seen:
            continue
        seen.add(model.name)
        cached = (cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}").is_dir()
        table.add_row(model.name, ", ".join(model.aliases), "yes" if cached else "no", model.description)
    console.print(table)
    console.print(f"cache: {cache_dir()}", markup=False)


@command("generate")
def generate_cmd(
    prompts: list[str] = typer.Argument(None, help="Prompts to answer."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="File of prompts (.txt/.json/.jsonl)."),
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per reply."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    sample: bool = typer.Option(False, help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0),
    seed: int = typer.Option(0),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", parser=output_file_path, help="Write replies as JSON here."
    ),
) -> None:
    """Answer prompts with a chat model (greedy by default) and print the replies."""
    from ..checks import number, output_file
    from ..models import load_model

    check_dtype(dtype)
    at_least(max_new_tokens, "--max-new-tokens", 1)
    at_least(batch_size, "--batch-size", 1)
    at_least(seed, "--seed", 0)
    if sample:
        number(temperature, "--temperature", positive=True)
    if output is not None:
        output_file(output, "output file")
    items = read_prompts(prompts or [], file)
    chat = load_model(model, dtype=dtype)
    gen = chat.generate(
        items,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system=system,
        do_sample=sample,
        temperature=temperature,
        seed=seed,
    )
    table = Table(show_lines=True)
    table.add_column("prompt", ratio=1)
    table.add_column("reply", ratio=2)
    for prompt, text in zip(items, gen.texts):
        table.add_row(escape(prompt), escape(text))
    console.print(table)
    console.print(
        f"{gen.n_generated} tokens in {gen.seconds:.1f}s ({gen.n_generated / max(gen.seconds, 1e-9):.1f} tokens/s)"
    )
    if output is not None:
        from ..paths import atomic_file
        from ..provenance import environment

        with atomic_file(output) as handle:
            json.dump(
                {
                    "model": chat.info.to_dict(),
                    "settings": gen.settings,
                    "environment": environment(),
                    "replies": [
                        {"prompt": p, "reply": t, "finish_reason": r}
                        for p, t, r in zip(items, gen.texts, gen.finish_reasons)
                    ],
                },
                handle,
                indent=2,
            )


@command("run")
def run_cmd(
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    profile: str = typer.Option(
        "quick", help="quick (~15 min on 2 cores from a warm cache) or paper (full sets, hours)."
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder of benchmark files (default $REFUSALSCOPE_DATA)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Output folder (default runs/<model>-<profile>)."
    ),
    ray: Optional[str] = typer.Option(
        None,
        "--ray",
        help="Compute discovery's attribution and the sweep on a Ray cluster: 'auto' (a running cluster), "
        "an address (host:port, ray://host:port) or 'local' (start one here). "
        "Needs the extra: pip install 'refusalscope[ray]'.",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="With --ray: model replicas in the pool (default: one per CPU, or GPU, of the cluster)."
    ),
) -> None:
    """The whole pipeline: SAEs → refusal direction → discovery → steering sweep → evaluation → HTML report."""
    from ..checks import output_dir
    from ..errors import RefusalScopeError
    from ..pipeline import get_profile, run_pipeline

    check_dtype(dtype)
    spec = get_profile(profile)
    at_least(workers, "--workers", 1)
    if ray is not None:
        from ..distributed.pool import require_ray

        require_ray()
    elif workers is not None:
        raise RefusalScopeError("--workers needs --ray", "add --ray local (or auto, or a cluster address)")
    if output is not None:
        output_dir(output, "output folder")
    if data_dir is not None:
        from ..data.registry import resolve_data_dir

        resolve_data_dir(data_dir)
    console.print(f"[bold]refusalscope run[/bold] --profile {spec.name}: {spec.description}")
    executor = None
    run_dtype = dtype
    if ray is not None:  # started first: the workers load their models while the driver trains SAEs
        from ..distributed import ModelSetup, RayExecutor
        from ..models.dtypes import resolve_dtype

        where = Path(model).expanduser()
        spec_model = str(where.resolve()) if where.exists() else model  # a folder: the same path on every node
        run_dtype = str(resolve_dtype(dtype)).replace("torch.", "")  # 'auto' could resolve otherwise on a worker
        executor = RayExecutor(ModelSetup(spec_model, run_dtype), address=ray, workers=workers).start()
    try:
        summary = run_pipeline(model, profile, output, data_dir=data_dir, dtype=run_dtype, executor=executor)
    finally:
        if executor is not None:
            executor.close()
    console.print(f"[bold]{escape(summary['model']['name'])}: steering sweep ({profile})[/bold]")
    console.print(summary["table"], markup=False, highlight=False, soft_wrap=True)
    timings = ", ".join(f"{k} {v / 60:.1f} min" for k, v in summary["timings"].items())
    console.print(f"stages: {timings}; total {summary['total_seconds'] / 60:.1f} min")
    console.print(f"report: [bold]{escape(str(summary['report']))}[/bold]")
