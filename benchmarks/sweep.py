"""Where the quick profile's sweep spends its time: seconds, items/s and model tokens per
task and per kind of configuration (unsteered, feature clamp, ActAdd, gated), against the
prefill roofline measured in the same process, for one or more variants of the runner
side by side (same model, grid and tasks, one process).

The grid and tasks are the ones `refusalscope run --profile quick` builds (pipeline.py:
the selected latents clamped at 1× and 2× their harmful peak, ungated and behind the
refusal-direction gate, ActAdd at 1×, the unsteered model; first-token refusal tasks with
the reply check, example replies, MMLU, TruthfulQA-MC1, WikiText loss), but the direction
and the latents come from an existing run folder (`direction/`, `discovery/features.json`)
so that only the sweep is measured. `--scale` shrinks every task's item count (the
per-item costs are what matter; the table extrapolates to the full sweep).

Variants (`--variants`, comma-separated, run in that order, each into a fresh results
database): `plain` computes chunk by chunk, every layer for every configuration (the
runner before this session), `shared` shares the layers below the first steered layer
and decodes the refusal tasks' replies for all configurations in one batch
(`run_sweep(share=True)`, the default), and a `+fp32` suffix runs it with the float32
attention core (`models/attention.py`; otherwise the model's own, fp64 by default).
Every variant's stored results are compared with the first one's: values bit-identical,
items whose verdicts (refused, correct) agree, and the largest difference of any other
metric.

Every forward of the model is counted by a pre-hook: token positions computed (padding
included, layers a variant skips too), split into prefill (more than one position per
row) and decode (one). The load average is printed beside each figure.

    python benchmarks/sweep.py --run runs/demo-s5 --scale 0.25 --variants plain,shared,shared+fp32
    python benchmarks/sweep.py --run runs/demo-s5 --scale 1            # the quick profile's full sweep
    python benchmarks/sweep.py --run runs/demo-s5 --profile-out sweep.prof   # + cProfile of the (last) sweep
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import math
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import prefill_rate  # benchmarks/common.py: the roofline's timing, shared with pipeline.py
from pipeline import TokenCounter  # benchmarks/pipeline.py: the same per-forward token count


def roofline(chat, batch: int = 16, length: int = 64, repeats: int = 3) -> float:
    """Prefill tokens/s of a plain batched forward over equal-length rows of random ids
    (no hooks); the timing is `common.prefill_rate`, shared with pipeline.py."""
    vocab = chat.unembed.weight.shape[0]
    rows = torch.randint(100, min(vocab, 20000), (batch, length), generator=torch.Generator().manual_seed(0))
    return prefill_rate(chat, rows, repeats)


def config_kind(cfg) -> str:
    if cfg.family == "none":
        return "unsteered"
    return f"{cfg.family}{' gated' if cfg.conditional else ''}"


VERDICTS = ("refused", "correct", "reply_refused", "first_token_agrees", "gate_fired")


def load() -> float:
    return os.getloadavg()[0]


def compare(reference: Path, other: Path) -> str:
    """How far `other`'s stored results are from `reference`'s (same grid and tasks)."""
    from refusalscope.evaluation.store import ResultsStore

    def values(path: Path) -> dict:
        with ResultsStore(path) as db:
            return {(r["config_id"], r["task"], r["item_id"], r["metric"]): r["value"] for r in db.rows()}

    a, b = values(reference), values(other)
    if a.keys() != b.keys():
        return f"different result rows ({len(a.keys() ^ b.keys())} not in both)"
    verdicts = [k for k in a if k[3] in VERDICTS]
    same = sum(a[k] == b[k] for k in verdicts)
    changed = sorted({(k[1], k[3]) for k in verdicts if a[k] != b[k]})
    numbers = [abs(a[k] - b[k]) for k in a if k[3] not in VERDICTS and a[k] is not None and b[k] is not None]
    worst = max(numbers, default=0.0)
    identical = sum(a[k] == b[k] for k in a)
    where = f"; changed in {changed}" if changed else ""
    return (
        f"{identical}/{len(a)} values bit-identical; verdicts equal on {same}/{len(verdicts)}{where}; "
        f"largest other difference {worst:.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo-s5", help="a folder with direction/ and discovery/features.json")
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--scale", type=float, default=0.25, help="fraction of each task's items (quick profile sizes × this)"
    )
    parser.add_argument("--variants", default="shared", help="comma-separated: plain, shared, plain+fp32, shared+fp32")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--profile-out", default=None, help="write a cProfile of the last sweep here and print its top functions"
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v.split("+")[0] not in ("plain", "shared") or v.count("+") > 1 or ("+" in v and not v.endswith("+fp32")):
            parser.error(f"unknown variant '{v}': use plain or shared, optionally with +fp32")

    from refusalscope.direction import RefusalDirection, sample_direction_data
    from refusalscope.discovery.features import FeatureSet, ScoreTables
    from refusalscope.discovery.validation import clamp_values, feature_interventions
    from refusalscope.evaluation import sweep
    from refusalscope.evaluation.grid import Grid, Method
    from refusalscope.models import load_model
    from refusalscope.models.attention import attention_core, set_attention_core
    from refusalscope.pipeline import PROFILES, build_tasks, harm_gate
    from refusalscope.sae import load_sae

    run = Path(args.run)
    t0 = time.perf_counter()
    chat = load_model(args.model)
    direction = RefusalDirection.load(run / "direction")
    features_file = next(
        (f for f in (run / "discovery" / "features.json", run / "discover" / "features.json") if f.exists()), None
    )
    if features_file is None:
        parser.error(f"{run} has no discovery/features.json")
    found = FeatureSet.load(features_file)
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
    configs = grid.configurations(chat)
    own_core = attention_core(chat.model.config)
    print(
        f"model {chat.info.name} ({chat.dtype}, attention core {own_core}), {torch.get_num_threads()} threads; "
        f"setup {setup:.0f} s; {len(configs)} configurations, first steered/gated layer "
        f"{sweep.shared_layers(chat, configs)}; quick profile × {args.scale:g}\n"
    )

    counter = TokenCounter(chat.model)
    real, real_group = sweep.compute_chunk, sweep.compute_group
    memos: list = []
    make_memo = type(chat).share_lower_layers

    def spy(self, upto, max_bytes=2**30):
        memo = make_memo(self, upto, max_bytes)
        memos.append(memo)
        return memo

    type(chat).share_lower_layers = spy  # type: ignore[method-assign]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        dbs = []
        for k, variant in enumerate(variants):
            set_attention_core(chat.model, "fp32" if variant.endswith("+fp32") else own_core)
            per: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])  # items, s, prefill, decode

            def timed(chat_, chunk, per=per, **kwargs):
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

            def timed_group(chat_, chunks, per=per, **kwargs):
                """A group's time and tokens, shared out over its chunks by item count."""
                _, p0, d0 = counter.snapshot()
                start = time.perf_counter()
                out = real_group(chat_, chunks, **kwargs)
                seconds = time.perf_counter() - start
                _, p1, d1 = counter.snapshot()
                total = sum(len(c.ids) for c in chunks)
                for chunk in chunks:
                    share = len(chunk.ids) / total
                    row = per[chunk.spec.name, config_kind(chunk.config)]
                    row[0] += len(chunk.ids)
                    row[1] += seconds * share
                    row[2] += (p1 - p0) * share
                    row[3] += (d1 - d0) * share
                return out

            sweep.compute_chunk = timed
            sweep.compute_group = timed_group
            load_start = load()
            roof_before = roofline(chat)
            memos.clear()
            last = k == len(variants) - 1
            profiler = cProfile.Profile() if args.profile_out and last else None
            db = Path(tmp) / f"{k}.db"
            start = time.perf_counter()
            if profiler:
                profiler.enable()
            result = sweep.run_sweep(
                chat,
                grid,
                tasks,
                db,
                data_dir=args.data_dir,
                batch_size=profile.batch_size,
                progress=False,
                share=variant.startswith("shared"),
            )
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile_out)
            seconds = time.perf_counter() - start
            roof = (roof_before + roofline(chat)) / 2
            dbs.append(db)
            rate = result.computed / seconds
            loads = f"load {load_start:.1f} -> {load():.1f}"
            print(f"=== {variant}: {result.computed} items in {seconds:.1f} s = {rate:.2f} items/s ({loads})")
            print(f"prefill roofline {roof:.0f} tok/s (batch 16 × 64)")
            if memos:
                print(f"shared layers 0..{memos[0].upto}: {memos[0].stats}")
            if k:
                print(f"results against {variants[0]}: {compare(dbs[0], db)}")
            print()
            table(per, roof, lambda key: key[0], "task")
            table(per, roof, lambda key: key[1], "configuration kind")
            table(per, roof, lambda key: f"{key[0]} · {key[1]}", "task · configuration kind")
            summary.append((variant, result.computed, seconds, rate, loads))
    if len(summary) > 1:
        print(f"{'variant':14} {'items':>6} {'s':>8} {'items/s':>8} {'× first':>8}  load")
        for variant, n, seconds, rate, loads in summary:
            print(f"{variant:14} {n:>6} {seconds:>8.1f} {rate:>8.2f} {rate / summary[0][3]:>8.2f}  {loads}")
    if args.profile_out:
        pstats.Stats(args.profile_out, stream=sys.stdout).sort_stats("cumulative").print_stats(30)


def table(per: dict, roof: float, key_of, title: str) -> None:
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


if __name__ == "__main__":
    main()
