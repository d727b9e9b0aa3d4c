"""What steering costs in generation throughput, side by side in one run.

For each embedded model (batch 8, 64 new tokens, `stop_at_eos=False` so every run makes
the same number of tokens), through the public API (`generate(..., interventions=...)`):

  unsteered                  no hooks
  clamp 1 latent, 1 layer    FeatureSteer 'set' on one latent of a JumpReLU SAE, middle layer
  clamp 20 latents, 1 layer  the same with 20 latents
  clamp 20, TopK, 1 layer    a TopK SAE: the exact latent needs the full encoder (no decoder)
  encode/decode, 1 layer     the published approach at one layer: full encode → clamp →
                             decode, replacing the residual (FeatureSteer keep_error=False)
  encode/decode, all layers  the same at every layer, one SAE per layer
  ablation, all layers       DirectionAblation at the embedding and after every block

SAEs are random (SAE.random) with d_sae = 8·d_model: the cost does not depend on training.
Configurations are run round-robin, `--repeats` times each, and the median time is kept, so
load from other processes on the machine hits them alike. On a shared machine tokens/s
still moves by several percent from run to run, so the time spent inside the steering
hooks is also measured directly (a clock around every hook call) and reported as a share
of the generation time: that share is the steering's cost, free of the machine's noise.
Target: steering one layer's latents costs at most 3% of unsteered tokens/s.

    python benchmarks/steering.py                 # both embedded models (Qwen takes minutes)
    python benchmarks/steering.py --quick         # SmolLM2-135M only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from refusalscope import load_model
from refusalscope.data.builtin import minimal_pairs
from refusalscope.sae import SAE, SAEConfig
from refusalscope.steering import DirectionAblation, FeatureSteer


def random_sae(chat, layer: int, arch: str = "jumprelu", seed: int = 0) -> SAE:
    d = chat.d_model
    cfg = SAEConfig(d_in=d, d_sae=8 * d, architecture=arch, k=64 if arch == "topk" else None, layer=layer)
    return SAE.random(cfg, seed=seed)


def configurations(chat) -> dict[str, object]:
    mid = chat.n_layers // 2
    sae = random_sae(chat, mid)
    topk = random_sae(chat, mid, "topk", seed=1)
    twenty = list(range(0, 20 * 37, 37))
    per_layer = [random_sae(chat, layer, seed=100 + layer) for layer in range(chat.n_layers)]
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    return {
        "unsteered": None,
        "clamp 1 latent, 1 layer": FeatureSteer(sae, [123], "set", 10.0),
        "clamp 20 latents, 1 layer": FeatureSteer(sae, twenty, "set", 10.0),
        "clamp 20, TopK SAE, 1 layer": FeatureSteer(topk, twenty, "set", 10.0),
        "encode/decode, 1 layer": FeatureSteer(sae, [123], "set", 10.0, keep_error=False),
        "encode/decode, all layers": [FeatureSteer(s, [123], "set", 10.0, keep_error=False) for s in per_layer],
        "ablation, all layers": DirectionAblation(direction),
    }


class Timed:
    """Wraps interventions; adds up the wall time spent inside their hook functions."""

    def __init__(self, interventions):
        self.interventions = interventions if isinstance(interventions, list) else [interventions]
        self.seconds = 0.0
        # keep ChatModel's shared-prefix prefill exactly when the wrapped steering allows it
        self.prefix_safe = all(getattr(item, "prefix_safe", False) for item in self.interventions)

    def hooks(self, model):
        out = []
        for item in self.interventions:
            for point, fn in item.hooks(model):

                def timed(hidden, ctx, fn=fn):
                    start = time.perf_counter()
                    result = fn(hidden, ctx)
                    self.seconds += time.perf_counter() - start
                    return result

                out.append((point, timed))
        return out


def bench(spec: str, dtype: str, batch: int, new_tokens: int, repeats: int) -> list[tuple[str, float]]:
    chat = load_model(spec, dtype=dtype, progress=False)
    pairs = minimal_pairs()
    prompts = [p.harmful if i % 2 else p.benign for i, p in enumerate(pairs)]
    prompts = (prompts * (batch // len(prompts) + 1))[:batch]
    configs = configurations(chat)

    def run(interventions) -> tuple[float, float]:
        timed = Timed(interventions) if interventions is not None else None
        start = time.perf_counter()
        gen = chat.generate(
            prompts,
            max_new_tokens=new_tokens,
            batch_size=batch,
            stop_at_eos=False,
            progress=False,
            interventions=timed,
        )
        seconds = time.perf_counter() - start
        assert gen.n_generated == batch * new_tokens
        return seconds, (timed.seconds / seconds if timed else 0.0)

    run(None)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in configs}
    shares: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, interventions in configs.items():
            seconds, share = run(interventions)
            times[name].append(seconds)
            shares[name].append(share)
    tokens = batch * new_tokens
    print(
        f"\n{chat.info.name} ({chat.n_layers} layers, d_model {chat.d_model}, SAEs {chat.d_model}×{8 * chat.d_model}), "
        f"{chat.dtype}, batch {batch}, {new_tokens} new tokens, median of {repeats}"
    )
    base = tokens / statistics.median(times["unsteered"])
    header = f"  {'configuration':30} {'tokens/s':>9} {'vs unsteered':>13} {'time in hooks':>14}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    rows = []
    for name, values in times.items():
        rate = tokens / statistics.median(values)
        rows.append((name, rate))
        share = statistics.median(shares[name])
        print(f"  {name:30} {rate:>9.1f} {rate / base:>12.3f}x {share:>13.2%}", flush=True)
    for name in ("clamp 1 latent, 1 layer", "clamp 20 latents, 1 layer"):
        change = dict(rows)[name] / base - 1
        share = statistics.median(shares[name])
        verdict = "within" if share <= 0.03 else "ABOVE"
        print(
            f"  {name}: {share:.2%} of the generation time in its hook, tokens/s {change:+.1%} vs unsteered "
            f"({verdict} the 3% target)"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2-135M only")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = ["smollm2-135m-instruct"] if args.quick else ["smollm2-135m-instruct", "default"]
    print(f"threads={torch.get_num_threads()} cpu={torch.backends.cpu.get_cpu_capability()}")
    for spec in models:
        bench(spec, args.dtype, args.batch, args.new_tokens, args.repeats)


if __name__ == "__main__":
    main()
