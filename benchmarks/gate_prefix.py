"""Gated steering with and without the shared chat-template prefix, on a tiny random model.

Since #18 a `Conditional` whose edits stay out of the template's prefix (generated tokens,
or the end of the prompt: 'post_instruction') is `prefix_safe`: the prefix (system prompt +
user header, the same for every prompt) is computed once per batch and each prompt's suffix
runs over its cache, also when a gate is attached. This measures what that saves: prompt
tokens computed and wall time of first-token logits and greedy generation for gated
configurations, "before" (Conditional.prefix_safe forced False, as it was) and "after" (as
is), on the minimal-pairs prompts (48) with Qwen's default system prompt, and checks that
both give bit-identical logits, the same replies and the same gate counts. A conditional
that steers 'all' tokens is not prefix-safe, so its two columns should match.

    python benchmarks/gate_prefix.py                      # 24 layers, d_model 256, 1 thread
    python benchmarks/gate_prefix.py --layers 4 --d-model 64 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from pipeline import TokenCounter  # benchmarks/pipeline.py: the same per-forward token count

from refusalscope.data.builtin import minimal_pairs
from refusalscope.steering import ActAdd, Conditional, DirectionGate
from refusalscope.testing import tiny_chat_model

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def configurations(chat, layer: int) -> tuple[ActAdd, dict[str, Conditional]]:
    """(the ungated edit, {name: a gated one}): ActAdd at `layer` behind a direction gate there."""
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(chat.d_model, generator=g) * 4
    gate = DirectionGate(torch.randn(chat.d_model, generator=g), layer)
    out = {}
    for inner, positions, reduce in (
        ("post_instruction", "post_instruction", "mean"),
        ("post_instruction", "prompt", "max"),
        ("generated", "post_instruction", "mean"),
        ("all", "post_instruction", "mean"),
    ):
        name = f"steer {inner}, gate {reduce} over {positions}"
        out[name] = Conditional(ActAdd(vec, layer, 1.0, positions=inner), gate, 0.0, reduce=reduce, positions=positions)
    return ActAdd(vec, layer, 1.0), out


def middle(scores: torch.Tensor) -> float:
    """A threshold halfway between the two middle distinct scores: about half the prompts
    fire, and no decision is a tie (a max over the prompt is often the system prompt's)."""
    values = scores.unique()
    if len(values) < 2:
        return float(values[0]) - 1.0
    return float(values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def decisions_seconds(chat, cond, prompts, args) -> float:
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        cond.decisions(chat, prompts, batch_size=args.batch_size, system=SYSTEM)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(chat, cond, prompts, args) -> dict:
    counter = TokenCounter(chat.model)
    gated = isinstance(cond, Conditional)
    try:
        if gated:
            cond.reset_stats()
        times, logits, replies = [], None, None
        for repeat in range(args.repeats):
            start = time.perf_counter()
            logits = chat.next_token_logits(prompts, batch_size=args.batch_size, system=SYSTEM, interventions=cond)
            replies = chat.generate(
                prompts,
                max_new_tokens=args.new_tokens,
                batch_size=args.batch_size,
                system=SYSTEM,
                interventions=cond,
                progress=False,
            ).token_ids
            times.append(time.perf_counter() - start)
            if repeat == 0:
                _, prefill, decode = counter.snapshot()
        counts = (cond.fired // args.repeats, cond.seen // args.repeats) if gated else (0, 0)
    finally:
        counter.handle.remove()
    return {
        "seconds": statistics.median(times),
        "prefill": prefill,
        "decode": decode,
        "logits": logits,
        "replies": replies,
        "counts": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chat = tiny_chat_model("qwen2", seed=0, n_layers=args.layers, d_model=args.d_model)
    prompts = [p.harmful for p in minimal_pairs()] + [p.benign for p in minimal_pairs()]
    tokens = chat.encode_prompts(prompts, SYSTEM)
    print(
        f"tiny qwen2, {args.layers} layers, d_model {args.d_model}, {args.threads} thread(s); {len(prompts)} prompts, "
        f"mean {statistics.mean(map(len, tokens)):.0f} tokens, shared prefix {chat.shared_prefix(tokens)}; "
        f"batch {args.batch_size}, first-token logits + {args.new_tokens} greedy tokens, median of {args.repeats}"
    )
    layer = args.layers // 2
    safe_property = Conditional.prefix_safe
    print("| configuration | prefix-safe | prefill tokens before → after | seconds before → after | same results |")
    print("|---|---|---|---|---|")
    ungated, gated = configurations(chat, layer)
    for name, reference in (("unsteered", None), ("steer all, ungated", ungated)):
        got = measure(chat, reference, prompts, args)
        print(
            f"| {name} | {reference is None or reference.prefix_safe} | {got['prefill']:,} | {got['seconds']:.2f} | |"
        )
    for name, cond in gated.items():
        cond.threshold = middle(cond.decisions(chat, prompts, system=SYSTEM).scores)
        Conditional.prefix_safe = property(lambda self: False)  # type: ignore[method-assign,assignment]
        try:
            before = measure(chat, cond, prompts, args)
        finally:
            Conditional.prefix_safe = safe_property  # type: ignore[method-assign]
        after = measure(chat, cond, prompts, args)
        same = (
            torch.equal(before["logits"], after["logits"])
            and before["replies"] == after["replies"]
            and before["counts"] == after["counts"]
        )
        print(
            f"| {name} | {cond.prefix_safe} | {before['prefill']:,} → {after['prefill']:,} "
            f"({after['prefill'] / before['prefill']:.2f}×) | {before['seconds']:.2f} → {after['seconds']:.2f} "
            f"({before['seconds'] / after['seconds']:.2f}× faster) | {same} (gate fired {after['counts'][0]}/{after['counts'][1]}) |"
        )

    cond = next(iter(gated.values()))
    chat.share_prefix = False
    try:
        whole = decisions_seconds(chat, cond, prompts, args)
    finally:
        chat.share_prefix = True
    shared = decisions_seconds(chat, cond, prompts, args)
    print(
        f"\nConditional.decisions ({cond.gate.describe()}): {whole:.2f} s whole prompts → {shared:.2f} s shared prefix"
    )


if __name__ == "__main__":
    main()
