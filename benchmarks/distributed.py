"""Distributed sweep scaling: items/s of one sweep computed in-process, and on a local Ray
cluster with 1 and 2 workers (one model replica each, `refusalscope.distributed`).

The grid is what `refusalscope sweep` runs: the unsteered model and ActAdd (a random
direction) at two strengths, on minimal-pair prompts (harmful and benign, generated
`--max-new-tokens` tokens and judged). Every mode writes a fresh results database; the
databases are compared (rows and verdicts) so a speed-up that changes the results shows.

Pool start-up (each worker loads its model) is reported apart from the sweep's own time:
a real study pays it once per hours of work. Each worker gets one CPU and one torch
thread, and so does the in-process run, so the ratio compares like with like. On a
machine whose CPUs are busy with other work, 2 workers cannot reach 2×: the figure says
what this machine gave, `nproc` and the load average are printed beside it.

Then discovery's attribution (`run --ray`'s other distributed stage): IG over
`--attr-prompts` prompts with a random SAE at the middle layer, in-process and sharded
over the same 1- and 2-worker pools (`ModelSetup`: workers load only the model, the SAE
travels by reference), prompts/s and the largest difference from the in-process scores.

    python benchmarks/distributed.py                      # SmolLM2-135M, 24 prompts × 3 configurations (heavy)
    python benchmarks/distributed.py --model tiny --tiny-d-model 512 --items 16 --max-new-tokens 24   # ~2 min
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from refusalscope.distributed import GridFileSetup, ModelSetup, RayExecutor
from refusalscope.evaluation.grid_file import load_grid_file
from refusalscope.evaluation.store import ResultsStore
from refusalscope.evaluation.sweep import run_sweep
from refusalscope.models import load_model
from refusalscope.steering import ActAdd, Steering


def tiny_model(folder: Path, d_model: int, n_layers: int) -> str:
    """A random Llama of the given size saved as a model folder (no embedded model to load)."""
    from refusalscope.testing import save_tiny_model, tiny_chat_model

    return str(save_tiny_model(tiny_chat_model("llama", d_model=d_model, n_layers=n_layers), folder / "tiny"))


def write_grid(folder: Path, model: str, items: int, max_new_tokens: int, batch_size: int) -> Path:
    chat = load_model(model, dtype="float32", progress=False)
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    layer = chat.n_layers // 2
    Steering([ActAdd(direction / direction.norm(), layer, 4.0)], name="push").save(folder / "actadd.json")
    half = max(1, items // 2)
    grid = folder / "grid.yaml"
    grid.write_text(
        f"model: {model}\ndtype: float32\nbatch_size: {batch_size}\nmax_new_tokens: {max_new_tokens}\n"
        "methods:\n  - {name: actadd, method: 'dense:actadd', spec: actadd.json, strengths: [1, 2]}\n"
        f"tasks:\n  - {{name: mp-harm, dataset: builtin/minimal-pairs, split: harmful, limit: {half}}}\n"
        f"  - {{name: mp-ben, dataset: builtin/minimal-pairs, split: benign, limit: {half}}}\n"
    )
    return grid


def rows(db: Path) -> list:
    with ResultsStore(db, create=False) as s:
        return sorted(tuple(r.values()) for r in s.rows())


def sweep_once(grid: Path, db: Path, executor=None) -> tuple[int, float]:
    plan = load_grid_file(grid)
    chat = load_model(plan.model, dtype=plan.dtype, progress=False)
    started = time.perf_counter()
    result = run_sweep(chat, plan.grid, plan.tasks, db, batch_size=plan.batch_size, progress=False, executor=executor)
    return result.computed, time.perf_counter() - started


def attribution_setup(tmp: Path, model: str, args) -> dict:
    """IG attribution inputs: the model, a random SAE saved at the middle layer (so workers
    load it by reference), a random ablation direction, and the prompts; plus the in-process run."""
    from refusalscope.data import load_dataset
    from refusalscope.discovery.scoring import attribution_scores
    from refusalscope.sae import SAE, SAEConfig
    from refusalscope.sae.io import load_sae, save_sae
    from refusalscope.steering import DirectionAblation

    chat = load_model(model, dtype="float32", progress=False)
    layer = chat.n_layers // 2
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=4 * chat.d_model, architecture="standard", layer=layer), seed=0)
    saes = {layer: load_sae(save_sae(sae, tmp / "sae"))}
    prompts = load_dataset("builtin/minimal-pairs", "harmful", limit=args.attr_prompts).prompts
    ablation = DirectionAblation(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)))
    tokens = chat.next_token_logits(prompts[:4]).mean(0).topk(32).indices.tolist()
    request = dict(
        saes=saes,
        prompts=prompts,
        ablation=ablation,
        refusal_token_ids=tokens,
        method="ig",
        steps=args.ig_steps,
        batch_size=2,
        progress=False,
    )
    started = time.perf_counter()
    reference = attribution_scores(chat, **request)
    rate = len(prompts) / (time.perf_counter() - started)
    print(
        f"attribution (IG, {args.ig_steps} steps, {len(prompts)} prompts, SAE d_sae {4 * chat.d_model} at layer {layer})"
    )
    print(f"  {'in-process, 1 thread':22} {rate:7.2f} prompts/s", flush=True)
    return {"chat": chat, "request": request, "reference": reference, "rates": {"in-process": rate}}


def attribution_scaling(model: str, a: dict) -> None:
    rates = a["rates"]
    for workers in (1, 2):
        with RayExecutor(ModelSetup(model, "float32"), address=None, workers=workers) as ex:
            started = time.perf_counter()
            got = ex.attribution_scores(a["chat"], **a["request"])
            rates[workers] = len(a["request"]["prompts"]) / (time.perf_counter() - started)
        diff = max(float((got.per_prompt[l] - a["reference"].per_prompt[l]).abs().max()) for l in got.per_prompt)
        scale = max(float(a["reference"].per_prompt[l].abs().max()) for l in got.per_prompt)
        print(
            f"  {f'ray, {workers} worker' + ('s' if workers > 1 else ''):22} {rates[workers]:7.2f} prompts/s  "
            f"(max |Δ score| {diff:.2g}, largest score {scale:.2g})",
            flush=True,
        )
    print(f"attribution scaling 2 workers / 1 worker: {rates[2] / rates[1]:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="smollm2",
        help="model spec (default: the embedded SmolLM2-135M), "
        "or 'tiny' for a random Llama of --tiny-d-model/--tiny-layers (no embedded model)",
    )
    parser.add_argument("--tiny-d-model", type=int, default=256)
    parser.add_argument("--tiny-layers", type=int, default=8)
    parser.add_argument("--items", type=int, default=24, help="prompts per configuration (half harmful, half benign)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per mode (fresh database each); median kept")
    parser.add_argument("--attr-prompts", type=int, default=16, help="prompts for the attribution part (0 skips it)")
    parser.add_argument("--ig-steps", type=int, default=4)
    args = parser.parse_args()

    import ray

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="rs-dist-"))
    model = tiny_model(tmp, args.tiny_d_model, args.tiny_layers) if args.model == "tiny" else args.model
    grid = write_grid(tmp, model, args.items, args.max_new_tokens, args.batch_size)
    name = (
        f"tiny (random Llama, d_model {args.tiny_d_model}, {args.tiny_layers} layers)"
        if args.model == "tiny"
        else model
    )
    print(
        f"model {name}, {args.items} prompts × 3 configurations, {args.max_new_tokens} new tokens, "
        f"batch {args.batch_size}; nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )

    results: dict[str, float] = {}
    reference = None
    same = True
    k = 0

    def measure(name: str, executor=None) -> None:
        nonlocal reference, same, k
        rates = []
        for _ in range(args.repeats):
            k += 1
            db = tmp / f"run{k}.db"
            computed, seconds = sweep_once(grid, db, executor)
            rates.append(computed / seconds)
            got = rows(db)
            reference = reference or got
            same = same and got == reference
        results[name] = statistics.median(rates)
        print(f"  {name:22} {results[name]:7.2f} items/s  (runs: {', '.join(f'{r:.2f}' for r in rates)})", flush=True)

    measure("in-process, 1 thread")
    # the machine's own parallel capacity, without Ray: the same sweep in 2 processes at once
    # (each into its own database); 2 Ray workers cannot beat this
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        done = pool.starmap(sweep_once, [(grid, tmp / "par-a.db"), (grid, tmp / "par-b.db")])
        results["2 processes, no Ray"] = sum(c / s for c, s in done)  # both sweeps run side by side
    print(
        f"  {'2 processes, no Ray':22} {results['2 processes, no Ray']:7.2f} items/s  (the machine's ceiling "
        "for 2 workers: the sum of 2 sweeps run side by side)",
        flush=True,
    )
    attribution = attribution_setup(tmp, model, args) if args.attr_prompts else None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for workers in (1, 2):
            started = time.perf_counter()
            with RayExecutor(GridFileSetup(str(grid)), address=None, workers=workers) as ex:
                print(f"  pool of {workers} started in {time.perf_counter() - started:.1f}s", flush=True)
                measure(f"ray, {workers} worker{'s' if workers > 1 else ''}", ex)
        if attribution is not None:
            attribution_scaling(model, attribution)
    finally:
        ray.shutdown()
    one, two = results["ray, 1 worker"], results["ray, 2 workers"]
    print(
        f"scaling 2 workers / 1 worker: {two / one:.2f}×   (machine ceiling, 2 processes / 1: "
        f"{results['2 processes, no Ray'] / results['in-process, 1 thread']:.2f}×)   ray 1 worker / in-process: "
        f"{one / results['in-process, 1 thread']:.2f}×   databases identical across modes: {'yes' if same else 'NO'}"
    )


if __name__ == "__main__":
    main()
