"""Why does an SAE reconstruct the refusal direction well or badly? Training ablations on
the quick preset's cached harvest, scored without running the model per variant.

The model runs once (cached next to the harvest, `ablation-eval-<layer>.pt`) to capture
  - the rows `evaluate_sae` computes FVU on (the preset's held-out text and chat
    documents, first-token / template-prefix / massive-norm positions left out), and
  - the post-instruction residuals of the refusal-direction validation prompts
    (harmful and harmless), from which `refusal_direction_cosine` is computed;
so every variant's FVU, dead fraction and refusal-direction cosine equal what
`evaluate_sae` would report for it (checked: the cached quick SAE scores the same here).
Each variant trains with `train_sae` on the cached rows (same split, same permutations);
it differs from the preset's TrainConfig only in the overrides its name lists.

    python benchmarks/sae_ablations.py                          # the default set (~1 min each on a quiet 2-core CPU)
    python benchmarks/sae_ablations.py --variants preset 'lr=0.0023' 'lr=0.0023,epochs=20'
    python benchmarks/sae_ablations.py --sae ~/.cache/refusalscope/saes/<model>/quick/layer_16   # score a trained SAE

A variant is `key=value[,key=value…]` over TrainConfig fields (`preset` = no override).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import fields, replace

import torch
import torch.nn.functional as F

from refusalscope.sae.activations import ActivationStore
from refusalscope.sae.io import load_sae
from refusalscope.sae.presets import get_preset, preset_folder
from refusalscope.sae.training import TrainConfig, train_sae

DEFAULT_VARIANTS = [
    "preset",
    "normalise_inputs=False",
    "lr=0.0023",
    "lr=0.0057",
]


def capture(chat, layer: int, n_docs: int, data_dir) -> dict:
    """Evaluation rows and refusal-direction activations at `layer`, as evaluate_sae sees them."""
    from refusalscope.sae.metrics import keep_mask
    from refusalscope.sae.presets import eval_corpora, load_training_data

    data = load_training_data(data_dir)
    harmful, harmless = data.harmful_val, data.harmless_val[: len(data.harmful_val)]
    refusal = {
        name: chat.residual(list(prompts), [layer], positions="post_instruction", batch_size=16, progress=False)[layer]
        for name, prompts in (("harmful", harmful), ("harmless", harmless))
    }
    rows = {}
    for name, documents in eval_corpora(chat, data, n_docs).items():
        got: list[torch.Tensor] = []
        state: dict = {}

        def hook(hidden, ctx, got=got, state=state):
            got.append(hidden[keep_mask(hidden, ctx.chunk_mask, state["skip"], 10.0)].float().clone())

        with torch.no_grad(), chat.hooks.attached([(layer, hook)]):
            for batch in chat.batches([d.tokens for d in documents], 8):
                state["skip"] = torch.tensor([documents[i].skip for i in batch.index])
                chat.forward(batch)
        rows[name] = torch.cat(got)
    return {"refusal": refusal, "eval": rows}


@torch.no_grad()
def score(sae, captured: dict) -> dict:
    rows = torch.cat(list(captured["eval"].values()))
    recon, f = sae(rows)
    out = {"fvu": float((recon - rows).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum())}
    for name, x in captured["eval"].items():
        r, _ = sae(x)
        out[f"fvu {name}"] = float((r - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    out["l0"] = float((f > 0).sum(-1).float().mean())
    out["dead %"] = 100 * float(((f > 0).sum(0) == 0).float().mean())
    ref = captured["refusal"]
    direction = ref["harmful"].mean(0) - ref["harmless"].mean(0)  # [positions, d]
    rebuilt = sae(ref["harmful"])[0].mean(0) - sae(ref["harmless"])[0].mean(0)
    out["refusal cos"] = float(F.cosine_similarity(direction.flatten(), rebuilt.flatten(), dim=0))
    # per post-instruction position (Qwen: <|im_end|> \n <|im_start|> assistant \n)
    out["cos by position"] = [round(float(F.cosine_similarity(d, r, dim=0)), 2) for d, r in zip(direction, rebuilt)]
    return out


def parse_variant(text: str) -> dict:
    if text == "preset":
        return {}
    types = {f.name: f.type for f in fields(TrainConfig)}
    over = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in types:
            raise SystemExit(f"unknown TrainConfig field '{key}' in variant '{text}'")
        over[key] = value == "True" if value in ("True", "False") else json.loads(value) if value != "None" else None
    return over


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS)
    parser.add_argument("--sae", nargs="*", default=[], help="also score these trained SAEs (folders)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="append one JSON line per variant to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from refusalscope import load_model

    preset = get_preset(args.preset)
    chat = load_model(args.model, dtype=args.dtype, progress=False)
    layer = preset.layers(chat.n_layers)[0]
    root = preset_folder(chat, preset)
    store = ActivationStore(root / f"harvest-{layer}")
    if not store.manifest.complete:
        raise SystemExit(
            f"no complete harvest in {store.folder}: run `refusalscope train-sae --preset {preset.name}` first"
        )
    cache = root / f"ablation-eval-{layer}.pt"
    if cache.is_file():
        captured = torch.load(cache)
    else:
        started = time.perf_counter()
        captured = capture(chat, layer, preset.eval_docs, args.data_dir)
        torch.save(captured, cache)
        print(f"captured evaluation activations in {time.perf_counter() - started:.0f} s -> {cache}")
    print(f"{chat.info.name} layer {layer}, harvest {store.manifest.rows} rows; preset {asdict_short(preset.train)}")
    results = []
    for path in args.sae:
        results.append({"variant": f"SAE {path}", **score(load_sae(path), captured)})
        print(json.dumps(results[-1]), flush=True)
    for text in args.variants:
        cfg = replace(preset.train, **parse_variant(text))
        with tempfile.TemporaryDirectory() as tmp:
            result = train_sae(store, layer, cfg, tmp, {"model_name": chat.info.name}, progress=False)
        row = {
            "variant": text,
            "train s": round(result.seconds),
            "steps": result.steps,
            "lr": cfg.learning_rate(),
            **score(result.sae, captured),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps({**row, "model": chat.info.name, "layer": layer}) + "\n")
    print("\n| variant | steps | lr | FVU | FVU text / chat | L0 | dead | refusal cos | cos by position |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r.get('steps', '')} | {r['lr']:.2g} | " if "lr" in r else f"| {r['variant']} | | | ",
            end="",
        )
        print(
            f"{r['fvu']:.3f} | {r['fvu text']:.3f} / {r['fvu chat']:.3f} | {r['l0']:.1f} | {r['dead %']:.1f}% | "
            f"{r['refusal cos']:.3f} | {' '.join(map(str, r['cos by position']))} |"
        )


def asdict_short(cfg: TrainConfig) -> str:
    return (
        f"{cfg.architecture} d_sae {cfg.d_sae} k {cfg.k}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"lr {cfg.learning_rate():.2g}"
    )


if __name__ == "__main__":
    main()
