"""How fast each refusal judge reads replies, on 2 CPU cores.

Replies are XSTest completions (all five sets, shuffled with a fixed seed, cycled up to
`--n`), so lengths are those of real chat replies. Each judge's model is loaded before
the clock starts (a user judges many replies per load); load time is printed apart.
Target (issue #12): the default judge reads 1,000 replies in under 2 minutes.

    python benchmarks/judges.py                      # substring, learned (n=1000), rubric (n=48)
    python benchmarks/judges.py --judges learned --n 1000 --repeats 3
    python benchmarks/judges.py --hub wildguard=/path/to/allenai-wildguard   # hub judges, where you have them

Each judge runs `--repeats` times in turn and the median time is kept; the rubric judge
(one forward of the 0.5B default model per rubric item per reply) runs on `--rubric-n`
replies and is extrapolated to 1,000, which the table says.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch


def replies(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    from refusalscope.data import load_dataset

    data = list(load_dataset("xstest/completions", "all", data_dir=os.environ.get("REFUSALSCOPE_DATA")))
    random.Random(seed).shuffle(data)
    rows = [data[i % len(data)] for i in range(n)]
    return [r.prompt for r in rows], [r.completion for r in rows]


def build(name: str):
    from refusalscope.judges.named import load_judge

    if "=" in name:  # hub judge: kind=folder-or-id
        from refusalscope.judges.hub import HubJudge

        kind, spec = name.split("=", 1)
        return HubJudge.from_pretrained(kind, spec, dtype="fp32")
    judge = load_judge(name)
    if hasattr(judge, "feature_model"):
        judge.feature_model()
    return judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", default="substring,learned,rubric")
    parser.add_argument(
        "--hub",
        action="append",
        default=[],
        help="kind=folder-or-hub-id (harmbench, llama-guard-3, wildguard, strongreject); repeatable",
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rubric-n", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
    names = [n for n in args.judges.split(",") if n] + args.hub
    rows = []
    for name in names:
        n = args.rubric_n if name == "rubric" or "=" in name else args.n
        prompts, texts = replies(n)
        started = time.perf_counter()
        judge = build(name)
        load = time.perf_counter() - started
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            judge.judge(prompts, texts)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        rows.append((getattr(judge, "name", name), n, load, median, n / median, 1000 * median / n))
        print(f"{rows[-1][0]}: {n} replies in {median:.1f} s (median of {args.repeats}), load {load:.1f} s", flush=True)
    print(f"\ntorch threads: {torch.get_num_threads()}; replies: XSTest completions, shuffled (seed 0)\n")
    print("| judge | replies timed | load (s) | replies/s | seconds per 1,000 replies |")
    print("|---|---|---|---|---|")
    for name, n, load, _median, rate, per_k in rows:
        note = "" if n >= 1000 else f" (extrapolated from {n})"
        print(f"| {name} | {n} | {load:.1f} | {rate:.1f} | {per_k:.0f}{note} |")


if __name__ == "__main__":
    main()
