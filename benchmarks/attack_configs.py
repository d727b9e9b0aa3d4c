"""The three model configurations the robustness measurements attack, from a `make demo`
(or `refusalscope run`) folder: unsteered, the discovered latents clamped, and the same
clamp behind the harm gate.

Why a strength search: O'Brien et al. steer at a strength that keeps the model usable, and
with the new quick SAE a 1x-peak clamp of all 20 latents breaks the model on plain text
(WikiText loss 3.81 -> 8.92). So this script measures WikiText loss (the first `--window`
tokens of `--n-texts` test documents, seeded) unsteered and at each `--strengths`
multiple of the latents' peak harmful activation, picks the largest strength whose loss is
within `--max-loss-increase` of unsteered, and writes:

    <out>/steered.json   the clamp at the chosen strength (a steering spec)
    <out>/gated.json     the same clamp behind the run's harm gate (threshold from run.json)
    <out>/strengths.json the loss at every strength, with intervals and n, and the choice

    python benchmarks/attack_configs.py --run runs/demo-s5 -o runs/s6-attacks/specs
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a make demo / refusalscope run folder")
    parser.add_argument("--strengths", default="0.1,0.2,0.3,0.5", help="multiples of each latent's peak")
    parser.add_argument("--max-loss-increase", type=float, default=0.10, help="relative WikiText loss budget")
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()

    from refusalscope.direction import RefusalDirection
    from refusalscope.discovery.features import FeatureSet, ScoreTables
    from refusalscope.discovery.validation import clamp_values, feature_interventions
    from refusalscope.evaluation.capability import capability_task
    from refusalscope.evaluation.grid import GateSpec
    from refusalscope.evaluation.loss import per_document_ce
    from refusalscope.mechanism.latents import load_feature_groups
    from refusalscope.models import load_model
    from refusalscope.stats import bootstrap
    from refusalscope.steering import DirectionGate, Steering

    started = time.perf_counter()
    run = json.loads((args.run / "run.json").read_text())
    features_path = args.run / "discovery" / "features.json"
    fs = FeatureSet.load(features_path)
    chat = load_model(fs.model.get("spec", "default") if isinstance(fs.model, dict) else "default")
    group, _ = load_feature_groups(features_path, chat)
    saes = {sae.layer: sae for sae, _ in group.parts}
    pairs = fs.pairs()
    peaks = ScoreTables.load(Path(fs.provenance["scores"])).peak_harmful
    direction = RefusalDirection.load(args.run / "direction")
    gate_info = run["gate"]
    gate = GateSpec(
        DirectionGate(direction.at_layer(gate_info["layer"]), gate_info["layer"]),
        float(gate_info["threshold"]),
        reduce="mean",
        positions="post_instruction",
    )

    task = capability_task("wikitext", window=args.window)
    items = task.items(args.data_dir, args.n_texts, 0)
    docs = task.documents(chat, items)

    def loss(interventions) -> dict:
        values = [v for v in per_document_ce(chat, docs, interventions, 8) if not math.isnan(v)]
        e = bootstrap(values, seed=0)
        return {"ce": e.value, "low": e.low, "high": e.high, "n": e.n}

    table = {"unsteered": loss(None)}
    base = table["unsteered"]["ce"]
    print(f"unsteered: CE {base:.3f} [{table['unsteered']['low']:.3f}, {table['unsteered']['high']:.3f}]", flush=True)
    chosen = None
    for s in (float(x) for x in args.strengths.split(",")):
        row = loss(feature_interventions(saes, pairs, "set", clamp_values(pairs, peaks, s)))
        row["increase"] = row["ce"] / base - 1
        table[f"{s:g}x"] = row
        ok = row["increase"] <= args.max_loss_increase
        print(
            f"{s:g}x peak: CE {row['ce']:.3f} [{row['low']:.3f}, {row['high']:.3f}] ({row['increase']:+.1%})",
            flush=True,
        )
        if ok and (chosen is None or s > chosen):
            chosen = s
    if chosen is None:
        raise SystemExit(f"no strength keeps WikiText loss within {args.max_loss_increase:.0%}: try lower --strengths")
    steered = feature_interventions(saes, pairs, "set", clamp_values(pairs, peaks, chosen))
    args.out.mkdir(parents=True, exist_ok=True)
    note = (
        f"the {len(pairs)} latents of {features_path} clamped to {chosen:g} x their peak harmful activation "
        f"(largest of {args.strengths} within +{args.max_loss_increase:.0%} WikiText loss)"
    )
    Steering(steered, name="steered", description=note).for_model(chat).save(args.out / "steered.json")
    Steering(
        [gate.wrap(steered)], name="gated", description=f"{note}, behind the harm gate ({gate.describe()})"
    ).for_model(chat).save(args.out / "gated.json")
    summary = {
        "run": str(args.run),
        "features": str(features_path),
        "chosen_strength": chosen,
        "max_loss_increase": args.max_loss_increase,
        "wikitext": {"n_texts": args.n_texts, "window": args.window, "seed": 0},
        "loss": table,
        "gate": gate_info,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "strengths.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"chosen {chosen:g}x; specs in {args.out} ({summary['seconds']} s)")


if __name__ == "__main__":
    main()
