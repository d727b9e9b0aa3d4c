"""The attention core's precision (models/attention.py, $REFUSALSCOPE_ATTENTION): what fp32
costs in batch invariance and what it saves in time, on real prompts from the shared data.

For each core (fp64, fp32) it measures, on the same prompts:
- first-token logits at batch 1 and at batch 16 (left-padded, shared template prefix):
  the largest absolute logit difference between the two, and how many prompts' top token
  (the greedy first token) or first-token refusal verdict sign differ;
- greedy replies (`--new-tokens`) at batch 1 and batch 16: how many differ;
- the difference between the cores themselves (fp32 vs fp64 logits at batch 16);
- prefill time of the batch-16 logits pass (median of `--repeats`), with the load average.

    python benchmarks/attention_core.py                     # default model, 32 prompts (~5 min on 2 cores)
    python benchmarks/attention_core.py --prompts 16 --new-tokens 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--prompts", type=int, default=32, help="half harmful (JailbreakBench), half XSTest safe")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from refusalscope.data import load_dataset
    from refusalscope.models import load_model
    from refusalscope.models.attention import set_attention_core

    half = args.prompts // 2
    prompts = (
        load_dataset("harmful/jailbreakbench", data_dir=args.data_dir, limit=half, seed=0).prompts
        + load_dataset("xstest/safe", data_dir=args.data_dir, limit=args.prompts - half, seed=0).prompts
    )
    chat = load_model(args.model)
    print(f"model {chat.info.name} ({chat.dtype}), {torch.get_num_threads()} threads, {len(prompts)} prompts")
    logits: dict[str, torch.Tensor] = {}
    for core in ("fp64", "fp32"):
        set_attention_core(chat.model, core)
        load = os.getloadavg()[0]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            batched = chat.next_token_logits(prompts, batch_size=16)
            times.append(time.perf_counter() - start)
        single = chat.next_token_logits(prompts, batch_size=1)
        logits[core] = batched
        diff = float((batched - single).abs().max())
        top = int((batched.argmax(-1) != single.argmax(-1)).sum())
        g1 = chat.generate(prompts, max_new_tokens=args.new_tokens, batch_size=1, progress=False).token_ids
        g16 = chat.generate(prompts, max_new_tokens=args.new_tokens, batch_size=16, progress=False).token_ids
        changed = sum(a != b for a, b in zip(g1, g16))
        print(
            f"{core}: batch 1 vs 16: max |Δlogit| {diff:.3g}, top token differs on {top}/{len(prompts)}, "
            f"greedy {args.new_tokens}-token replies differ on {changed}/{len(prompts)}; "
            f"batch-16 first-token pass {statistics.median(times):.2f} s (median of {args.repeats}, "
            f"load {load:.1f} -> {os.getloadavg()[0]:.1f})"
        )
    cross = float((logits["fp32"] - logits["fp64"]).abs().max())
    top = int((logits["fp32"].argmax(-1) != logits["fp64"].argmax(-1)).sum())
    print(f"fp32 vs fp64 (batch 16): max |Δlogit| {cross:.3g}, top token differs on {top}/{len(prompts)}")


if __name__ == "__main__":
    main()
