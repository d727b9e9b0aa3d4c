"""Commands about SAEs: train one (or a preset's set) and evaluate any SAE on any model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._app import DtypeOpt, ModelOpt, at_least, check_dtype, command, console, output_file_path

DataDirOpt = typer.Option(None, "--data-dir", help="Folder of benchmark files (default $REFUSALSCOPE_DATA).")


def metrics_table(title: str, rows: dict[str, dict]) -> Table:
    table = Table(title=escape(title))  # titles name user paths and models: never markup
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    for key in keys:
        values = []
        for r in rows.values():
            v = r.get(key)
            values.append("—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
        table.add_row(key, *values)
    return table


@command("train-sae")
def train_sae_cmd(
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    preset: str = typer.Option(
        "quick", help="quick (one layer at 65% depth, ~10 min) or standard (three layers, ~20 min)."
    ),
    layers: Optional[list[int]] = typer.Option(None, "--layer", help="Override the preset's layers (repeatable)."),
    data_dir: Optional[Path] = DataDirOpt,
    force: bool = typer.Option(False, help="Retrain even if the cache holds these SAEs."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also copy the SAEs (SAELens layout) here."),
) -> None:
    """Harvest activations and train SAEs with a preset; cached per model, preset and layer."""
    from ..checks import output_dir
    from ..models import load_model
    from ..sae.io import save_sae
    from ..sae.presets import get_preset, preset_folder, train_preset

    check_dtype(dtype)
    spec = get_preset(preset)
    for layer in layers or ():
        at_least(layer, "--layer", 0)
    if output is not None:
        output_dir(output, "output folder")
    if data_dir is not None:
        from ..data.registry import resolve_data_dir

        resolve_data_dir(data_dir)
    chat = load_model(model, dtype=dtype)
    console.print(f"[bold]{escape(str(chat))}[/bold] preset [bold]{spec.name}[/bold]: {spec.description}")
    saes = train_preset(chat, preset, data_dir=data_dir, layers=layers, force=force)
    rows = {}
    for layer, sae in sorted(saes.items()):
        prov = sae.cfg.provenance
        m = dict(prov.get("metrics", {}))
        row = {"d_sae": sae.d_sae, "k": sae.cfg.k}
        for key in ("fvu", "l0", "dead_frac", "dense_frac", "refusal_cosine"):
            row[key] = m.get(key)
        for name, value in m.get("ce_recovered", {}).items():
            row[f"ce_recovered/{name}"] = value
        for name, value in m.get("kl", {}).items():
            row[f"kl/{name}"] = value
        row["train tok/s"] = prov.get("train_tokens_per_second")
        row["harvest tok/s"] = prov.get("harvest_tokens_per_second")
        rows[f"layer {layer}"] = row
        if output is not None:
            save_sae(sae, output / f"layer_{layer}")
    console.print(metrics_table(f"{chat.info.name}: {preset} SAEs", rows))
    console.print(f"cached in {preset_folder(chat, spec)}", markup=False)


@command("sae-eval")
def sae_eval_cmd(
    sae: str = typer.Argument(..., help="SAE folder (SAELens layout), params.npz, or pretrained 'release/id'."),
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    layer: Optional[int] = typer.Option(None, help="Layer the SAE reads, if its config does not say."),
    data_dir: Optional[Path] = DataDirOpt,
    n_docs: int = typer.Option(32, help="Documents per evaluation corpus."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", parser=output_file_path, help="Write the metrics as JSON."
    ),
) -> None:
    """Quality metrics of any SAE on any model: FVU, L0, dead/dense, CE recovered, KL, refusal cosine."""
    from ..checks import output_file
    from ..models import load_model
    from ..paths import atomic_file
    from ..sae.io import load_sae
    from ..sae.metrics import evaluate_sae
    from ..sae.presets import eval_corpora, load_training_data

    check_dtype(dtype)
    at_least(layer, "--layer", 0)
    at_least(n_docs, "--n-docs", 1)
    if output is not None:
        output_file(output, "output file")
    loaded = load_sae(sae)  # read (and checked) before the model: a bad SAE path costs no model load
    data = load_training_data(data_dir)
    if layer is not None:
        loaded.cfg.layer = layer
    chat = load_model(model, dtype=dtype)
    loaded.check_model(chat)
    metrics = evaluate_sae(
        chat, loaded, eval_corpora(chat, data, n_docs), data.harmful_val, data.harmless_val[: len(data.harmful_val)]
    )
    console.print(metrics_table(f"{sae} on {chat.info.name} (layer {loaded.layer})", {"value": metrics.summary()}))
    if output is not None:
        with atomic_file(output) as handle:
            json.dump({"sae": sae, "model": chat.info.to_dict(), "metrics": metrics.to_dict()}, handle, indent=2)
