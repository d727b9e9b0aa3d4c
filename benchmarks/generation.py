"""Prompt-processing and generation throughput of the embedded models, against a roofline.

For each model, dtype (bf16, fp32) and batch size (1, 8, 32) this measures, through the
public ChatModel API:
  - prefill tokens/s: `next_token_logits` over chat-formatted prompts;
  - decode tokens/s: `generate(max_new_tokens=N, stop_at_eos=False)` minus its prefill;
and, side by side in the same run, the time the same forward would take if it were nothing
but its matmuls: every nn.Linear of the model timed alone (`F.linear` at that shape and
row count, same dtype). achieved/roofline says how much of the machine's matmul speed the
whole stack (attention, norms, Python, cache handling) keeps.

    python benchmarks/generation.py            # full grid (~10 minutes on 2 cores)
    python benchmarks/generation.py --quick    # batch 1 and 8, smaller model only
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
import torch.nn.functional as F

from refusalscope import load_model
from refusalscope.data.builtin import minimal_pairs
from refusalscope.models.dtypes import native_bf16, resolve_dtype
from refusalscope.provenance import cpu_info


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def linear_shapes(chat) -> Counter:
    shapes = Counter()
    for module in chat.model.modules():
        if isinstance(module, torch.nn.Linear) and module is not chat.unembed:
            shapes[(module.out_features, module.in_features)] += 1
    return shapes


def linear_seconds(out_f: int, in_f: int, rows: int, dtype: torch.dtype) -> float:
    weight = torch.randn(out_f, in_f, dtype=dtype) / in_f**0.5
    x = torch.randn(rows, in_f, dtype=dtype)
    F.linear(x, weight)  # warm-up
    return median_time(lambda: F.linear(x, weight), 3)


def matmul_seconds(
    shapes: Counter, rows: int, dtype: torch.dtype, unembed: tuple[int, int], unembed_rows: int
) -> float:
    """Time of the forward's matmuls alone, at `rows` tokens (lm_head at `unembed_rows`)."""
    total = sum(count * linear_seconds(o, i, rows, dtype) for (o, i), count in shapes.items())
    return total + linear_seconds(*unembed, unembed_rows, dtype)


def bench(spec: str, dtype: str, batch: int, new_tokens: int, repeats: int) -> dict:
    chat = load_model(spec, dtype=dtype, progress=False)
    pairs = minimal_pairs()
    prompts = [p.harmful if i % 2 else p.benign for i, p in enumerate(pairs)]
    prompts = (prompts * (batch // len(prompts) + 1))[:batch]
    n_prompt = sum(len(chat.encode(chat.format(p))) for p in prompts)
    chat.next_token_logits(prompts, batch_size=batch)  # warm-up
    t_prefill = median_time(lambda: chat.next_token_logits(prompts, batch_size=batch), repeats)
    t_gen = median_time(
        lambda: chat.generate(prompts, max_new_tokens=new_tokens, batch_size=batch, stop_at_eos=False, progress=False),
        repeats,
    )
    # generate = prefill + (new_tokens - 1) decode steps
    t_decode = max(t_gen - t_prefill, 1e-9)
    decoded = batch * (new_tokens - 1)
    shapes = linear_shapes(chat)
    unembed = tuple(chat.unembed.weight.shape)
    torch_dtype = chat.dtype
    roof_prefill = matmul_seconds(shapes, n_prompt, torch_dtype, unembed, batch)
    roof_step = matmul_seconds(shapes, batch, torch_dtype, unembed, batch)
    return {
        "model": chat.info.name,
        "dtype": str(torch_dtype).replace("torch.", ""),
        "batch": batch,
        "prefill_tok_s": n_prompt / t_prefill,
        "prefill_roof_tok_s": n_prompt / roof_prefill,
        "decode_tok_s": decoded / t_decode,
        "decode_roof_tok_s": batch / roof_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", help="model specs (default: both embedded models)")
    args = parser.parse_args()
    models = ["smollm2-135m-instruct"] if args.quick else ["smollm2-135m-instruct", "default"]
    models = args.models or models
    batches = [1, 8] if args.quick else [1, 8, 32]
    cpu = cpu_info()
    print(
        f"cpu={cpu['model']} flags=[{' '.join(cpu['flags'])}] kernels={torch.backends.cpu.get_cpu_capability()} "
        f"threads={torch.get_num_threads()} native_bf16={native_bf16()} auto={resolve_dtype('auto')}"
    )
    header = f"{'model':30} {'dtype':9} {'batch':>5} | {'prefill tok/s':>13} {'roofline':>9} {'ratio':>6} | {'decode tok/s':>12} {'roofline':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    rows = []
    for spec in models:
        for dtype in ("bf16", "fp32"):
            for batch in batches:
                repeats = 1 if (batch == 32 and dtype == "bf16") else args.repeats
                r = bench(spec, dtype, batch, args.new_tokens, repeats)
                rows.append(r)
                print(
                    f"{r['model']:30} {r['dtype']:9} {r['batch']:>5} | {r['prefill_tok_s']:>13.1f} {r['prefill_roof_tok_s']:>9.1f} "
                    f"{r['prefill_tok_s'] / r['prefill_roof_tok_s']:>6.2f} | {r['decode_tok_s']:>12.1f} "
                    f"{r['decode_roof_tok_s']:>9.1f} {r['decode_tok_s'] / r['decode_roof_tok_s']:>6.2f}",
                    flush=True,
                )
    print("\nfp32 / bf16 speed (same model, batch; above 1 means fp32 is faster):")
    for r in rows:
        if r["dtype"] == "float32":
            bf = next(
                x for x in rows if x["model"] == r["model"] and x["batch"] == r["batch"] and x["dtype"] == "bfloat16"
            )
            print(
                f"  {r['model']:30} batch {r['batch']:>2}: prefill x{r['prefill_tok_s'] / bf['prefill_tok_s']:.2f}, "
                f"decode x{r['decode_tok_s'] / bf['decode_tok_s']:.2f}"
            )


if __name__ == "__main__":
    main()
