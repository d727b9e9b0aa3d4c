"""`refusalscope serve`: the steering playground, a local web page (see `refusalscope.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import RefusalScopeError
from ._app import DtypeOpt, command, console

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@command("serve")
def serve_cmd(
    run: Optional[Path] = typer.Option(
        None, "--run", help="A run folder (from `run` or `discover -o`): its SAEs, latents, cards and direction."
    ),
    sae: list[str] = typer.Option(
        [], "--sae", help="SAE folder or release/id (repeatable; default: the ones features.json names)."
    ),
    features: Optional[Path] = typer.Option(None, "--features", help="features.json to list (default: the run's)."),
    direction: Optional[Path] = typer.Option(
        None, "--direction", help="Refusal direction folder (default: the run's direction/)."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model (default: the one features.json was discovered on, else 'default')."
    ),
    dtype: str = DtypeOpt,
    spec_dir: Optional[Path] = typer.Option(
        None, "--spec-dir", help="The only folder specs are saved to and loaded from (default: <run>/specs or ./specs)."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to bind. Anything but localhost exposes the model to your network: say so explicitly.",
    ),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
) -> None:
    """Serve the steering playground: steered vs unsteered replies side by side, latent
    sliders, gate, feature cards, refusal-vs-strength curves, spec files."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise RefusalScopeError(
            "the playground needs FastAPI and uvicorn", "pip install 'refusalscope[serve]'"
        ) from None
    if not 0 < port < 65536:
        raise RefusalScopeError(f"port {port} is not a TCP port", "use a port in 1..65535, e.g. --port 8000")
    from ..serve.loading import load_playground, resolve_sources

    sources = resolve_sources(run, sae, features, direction, model, spec_dir)
    for note in sources.notes:
        console.print(f"[dim]{note}[/dim]")
    playground = load_playground(sources, dtype=dtype)
    from ..serve.app import create_app

    allowed = [*LOCAL_HOSTS, host] if host not in ("0.0.0.0", "::") else None
    app = create_app(playground, allowed_hosts=allowed)
    if host not in LOCAL_HOSTS:
        console.print(
            f"[bold yellow]serving on {host}: anyone who can reach this address can run the model[/bold yellow]"
        )
    shown = f"[{host}]" if ":" in host else host
    console.print(f"playground for {playground.chat.info.name} at http://{shown}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
