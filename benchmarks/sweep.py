"""Where the quick profile's sweep spends its time: seconds, items/s and model tokens per
task and per kind of configuration (unsteered, feature clamp, ActAdd, gated), against the
prefill roofline measured in the same process.

The grid and tasks are the ones `refusalscope run --profile quick` builds (pipeline.py:
the selected latents clamped at 1× and 2× their harmful peak, ungated and behind the
refusal-direction gate, ActAdd at 1×, the unsteered model; first-token refusal tasks with
the reply check, example replies, MMLU, TruthfulQA-MC1, WikiText loss), but the direction
and the latents come from an existing run folder (`direction/`, `discover/features.json`)
so that only the sweep is measured. `--scale` shrinks every task's item count (the
per-item costs are what matter; the table extrapolates to the full sweep).

Every forward of the model is counted by a pre-hook: token positions computed (padding
included), split into prefill (more than one position per row) and decode (one).

    python benchmarks/sweep.py --run runs/mech --scale 0.25          # ~4 min on 2 cores
    python benchmarks/sweep.py --run runs/mech --profile-out sweep.prof   # + cProfile of the sweep
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import math
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from pipeline import TokenCounter  # benchmarks/pipeline.py: the same per-forward token count


@torch.no_grad()
def roofline(chat, batch: int = 16, length: int = 64, repeats: int = 3) -> float:
    """Prefill tokens/s of a plain batched forward over equal-length rows (no hooks)."""
    vocab = chat.unembed.weight.shape[0]
    rows = torch.randint(100, min(vocab, 20000), (batch, length), generator=torch.Generator().manual_seed(0))
    chat.model(input_ids=rows, use_cache=False, logits_to_keep=1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        chat.model(input_ids=rows, use_cache=False, logits_to_keep=1)
        times.append(time.perf_counter() - start)
    return batch * length / statistics.median(times)


def config_kind(cfg) -> str:
    if cfg.family == "none":
        return "unsteered"
    return f"{cfg.family}{' gated' if cfg.conditional else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/mech", help="a folder with direction/ and discover/features.json")
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--scale", type=float, default=0.25, help="fraction of each task's items (quick profile sizes × this)"
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--profile-out", default=None, help="write a cProfile of the sweep here and print its top functions"
    )
    args = parser.parse_args()

    from refusalscope.direction import RefusalDirection, sample_direction_data
    from refusalscope.discovery.features import FeatureSet, ScoreTables
    from refusalscope.discovery.validation import clamp_values, feature_interventions
    from refusalscope.evaluation import sweep
    from refusalscope.evaluation.grid import Grid, Method
    from refusalscope.models import load_model
    from refusalscope.pipeline import PROFILES, build_tasks, harm_gate
    from refusalscope.sae import load_sae

    run = Path(args.run)
    t0 = time.perf_counter()
    chat = load_model(args.model)
    direction = RefusalDirection.load(run / "direction")
    found = FeatureSet.load(run / "discover" / "features.json")
    saes = {int(layer): load_sae(info["source"]) for layer, info in found.saes.items()}  # the SAEs the latents are from
    tables = ScoreTables.load(Path(found.provenance["scores"]))
    pairs = found.pairs()
    peaks = tables.peak_harmful
    base = PROFILES["quick"]

    def scaled(limits: dict) -> dict:
        return {k: (max(1, math.ceil(v * args.scale)) if v else v) for k, v in limits.items()}

    profile = dataclasses.replace(base, refusal_limits=scaled(base.refusal_limits), capability=scaled(base.capability))
    d = profile.direction
    data = sample_direction_data(args.data_dir, d["n_train"], d["n_val"], seed=0)
    gate_layer = min(layer for layer, _ in pairs)
    gate, _ = harm_gate(chat, direction, gate_layer, data.harmful_val, data.harmless_val)
    tasks, _ = build_tasks(chat, profile, direction, args.data_dir, data.harmful_val + data.harmless_val)
    setup = time.perf_counter() - t0

    def features(strength):
        return feature_interventions(saes, pairs, "set", clamp_values(pairs, peaks, float(strength)))

    grid = Grid(
        [
            Method(
                "features", features, profile.clamp_strengths, method="features:cossim+ig", conditional=(False, True)
            ),
            Method.actadd(direction.raw, direction.layer, profile.actadd_strengths, name="refusal direction"),
        ],
        gate=gate,
    )

    counter = TokenCounter(chat.model)
    per: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])  # items, seconds, prefill, decode
    real = sweep.compute_chunk

    def timed(chat_, chunk, **kwargs):
        _, p0, d0 = counter.snapshot()
        start = time.perf_counter()
        out = real(chat_, chunk, **kwargs)
        row = per[chunk.spec.name, config_kind(chunk.config)]
        _, p1, d1 = counter.snapshot()
        row[0] += len(chunk.ids)
        row[1] += time.perf_counter() - start
        row[2] += p1 - p0
        row[3] += d1 - d0
        return out

    sweep.compute_chunk = timed
    roof_before = roofline(chat)
    with tempfile.TemporaryDirectory() as tmp:
        profiler = cProfile.Profile() if args.profile_out else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        result = sweep.run_sweep(
            chat,
            grid,
            tasks,
            Path(tmp) / "results.db",
            data_dir=args.data_dir,
            batch_size=profile.batch_size,
            progress=False,
        )
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile_out)
        seconds = time.perf_counter() - start
    roof = (roof_before + roofline(chat)) / 2

    print(
        f"model {chat.info.name} ({chat.dtype}), {torch.get_num_threads()} threads; setup {setup:.0f} s; "
        f"prefill roofline {roof:.0f} tok/s (batch 16 × 64)"
    )
    print(
        f"sweep: {result.computed} items in {seconds:.1f} s = {result.computed / seconds:.2f} items/s "
        f"(quick profile × {args.scale:g})\n"
    )

    def table(key_of, title):
        groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])
        for key, row in per.items():
            g = groups[key_of(key)]
            for i in range(4):
                g[i] += row[i]
        print(
            f"{title:28} {'items':>6} {'s':>7} {'share':>6} {'items/s':>8} {'s/item':>7} {'prefill tok':>11} "
            f"{'decode tok':>10} {'tok/s':>7} {'÷roof':>6}"
        )
        total = sum(r[1] for r in groups.values())
        for name, (n, s, pre, dec) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
            print(
                f"{name[:28]:28} {n:>6} {s:>7.1f} {s / total:>6.0%} {n / s:>8.2f} {s / n:>7.2f} {pre:>11,} {dec:>10,} "
                f"{(pre + dec) / s:>7.0f} {(pre + dec) / s / roof:>6.2f}"
            )
        print()

    table(lambda k: k[0], "task")
    table(lambda k: k[1], "configuration kind")
    table(lambda k: f"{k[0]} · {k[1]}", "task · configuration kind")
    if args.profile_out:
        pstats.Stats(args.profile_out, stream=sys.stdout).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
