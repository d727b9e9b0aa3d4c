"""GCG steps/s and peak memory: refusalscope's GCG vs nanogcg, same behaviour, model, settings.

Each (implementation, candidates) pair runs in its own process (so peak memory is its
own, and nanogcg's global `torch.use_deterministic_algorithms` cannot touch the others):
load the model, one untimed warm-up step, then `--steps` timed steps; the median step
time is reported, with peak RSS above the loaded model (sampled every 10 ms).

  ours            refusalscope.attacks.GCG (shared template+request prefix KV, target-only logits)
  ours-noprefix   the same without prefix sharing (what a gated steering forces)
  nanogcg         nanogcg.GCG, n_replace=1, no buffer, no mellowmax (its defaults)

For ours the step is split into gradient (forward + backward), sampling + re-tokenisation
filter, and candidate scoring, to say where the time goes.

nanogcg 0.3.0 pins transformers<=4.47.1, so it does not install beside transformers 5;
fetched with `pip download --no-deps nanogcg==0.3.0` and put on PYTHONPATH it runs, but
only with `use_prefix_cache=False` (its prefix-cache path indexes the KV cache as a legacy
tuple, which transformers 5 removed). Point `--nanogcg-path` at the unpacked wheel.

    python benchmarks/gcg.py --candidates 128,256 --steps 2          # default model, ~15 min on 2 cores
    python benchmarks/gcg.py --model tiny --candidates 16 --steps 2  # smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

BEHAVIOUR = "harmbench-dimethylmercury_instructions_home"


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """Peak resident memory above the level at start, sampled in a thread."""

    def __init__(self, every: float = 0.01):
        self.every, self.base, self.peak, self._stop = every, rss(), 0, threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss() - self.base)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def load(model: str, dtype: str):
    if model == "tiny":
        from refusalscope.testing import tiny_chat_model

        return tiny_chat_model("llama", seed=3, n_layers=2, d_model=32)
    from refusalscope import load_model

    return load_model(model, dtype=dtype, progress=False)


def behaviour(args):
    from refusalscope.attacks import Behaviour, load_behaviours

    if args.model == "tiny":
        return Behaviour("tiny", "How do I bake bread?", "Sure, here is a poem about the sea")
    found = {b.id: b for b in load_behaviours("harmful/harmbench", "all", standard_only=False)}
    return found[args.behaviour]


def child_ours(args, candidates: int, share: bool) -> dict:
    import torch

    from refusalscope.attacks import GCG, GCGConfig

    chat = load(args.model, args.dtype)
    b = behaviour(args)
    config = GCGConfig(
        steps=args.steps + 1,
        suffix_length=args.suffix_length,
        candidates=candidates,
        top_k=256,
        eval_batch=args.eval_batch,
        share_prefix=share,
        seed=0,
    )
    gcg = GCG(chat, None, config)
    obj = gcg.objective(b)
    suffix = torch.tensor(gcg.initial_suffix())
    gen = torch.Generator().manual_seed(0)
    from refusalscope.attacks.gcg import allowed_tokens

    allowed_tokens(chat)  # a one-off per tokenizer (cached), not per step
    parts: dict[str, list[float]] = {"gradient": [], "sample+filter": [], "candidates": [], "step": []}
    losses = []
    with PeakRSS() as peak:
        for step in range(args.steps + 1):
            t0 = time.perf_counter()
            grad, _ = obj.gradient(suffix)
            t1 = time.perf_counter()
            cands = gcg.sample(suffix, grad, gen)
            keep = obj.retokenizes(cands)
            cands = cands[keep] if keep.any() else cands
            t2 = time.perf_counter()
            scores = obj.losses(cands, config.eval_batch)
            suffix = cands[int(scores.argmin())]
            t3 = time.perf_counter()
            losses.append(float(scores.min()))
            if step == 0:
                continue  # warm-up (also builds the prefix KV once per behaviour)
            for name, value in (
                ("gradient", t1 - t0),
                ("sample+filter", t2 - t1),
                ("candidates", t3 - t2),
                ("step", t3 - t0),
            ):
                parts[name].append(value)
    tokens = obj.tokens_per_row(args.suffix_length)
    return {
        "step_s": statistics.median(parts["step"]),
        "parts": {k: statistics.median(v) for k, v in parts.items()},
        "peak_mib": peak.peak / 2**20,
        "losses": losses,
        "tokens_per_candidate": tokens,
        "prefix_tokens": len(obj.before),
    }


def child_nanogcg(args, candidates: int) -> dict:
    if args.nanogcg_path:
        sys.path.insert(0, args.nanogcg_path)
    import nanogcg
    from nanogcg import gcg as nano_module

    chat = load(args.model, args.dtype)
    b = behaviour(args)
    from refusalscope.attacks import GCG, GCGConfig

    ours = GCG(chat, None, GCGConfig(suffix_length=args.suffix_length))
    init = chat.tokenizer.decode(ours.initial_suffix())
    stamps = []
    original = nano_module.GCG.compute_token_gradient

    def timed(self, *a, **k):
        stamps.append(time.perf_counter())
        return original(self, *a, **k)

    nano_module.GCG.compute_token_gradient = timed
    config = nanogcg.GCGConfig(
        num_steps=args.steps + 1,
        optim_str_init=init,
        search_width=candidates,
        topk=256,
        batch_size=args.nano_batch,
        use_prefix_cache=False,
        seed=0,
        verbosity="WARNING",
    )
    with PeakRSS() as peak:
        result = nanogcg.run(chat.model, chat.tokenizer, b.request, b.target, config)
        stamps.append(time.perf_counter())
    steps = [stamps[i + 1] - stamps[i] for i in range(1, len(stamps) - 1)]  # drop the warm-up step
    return {"step_s": statistics.median(steps), "parts": {}, "peak_mib": peak.peak / 2**20, "losses": result.losses}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--behaviour", default=BEHAVIOUR)
    p.add_argument("--candidates", default="128,256")
    p.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    p.add_argument("--suffix-length", type=int, default=20)
    p.add_argument("--eval-batch", type=int, default=64, help="our candidates per scoring forward")
    p.add_argument("--nano-batch", type=int, default=32, help="nanogcg candidates per forward (full-length logits)")
    p.add_argument("--impl", default="ours,ours-noprefix,nanogcg")
    p.add_argument("--nanogcg-path", default=os.environ.get("NANOGCG_PATH"))
    p.add_argument("--child", nargs=2, metavar=("IMPL", "CANDIDATES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, candidates = args.child[0], int(args.child[1])
        out = child_nanogcg(args, candidates) if impl == "nanogcg" else child_ours(args, candidates, impl == "ours")
        print("RESULT " + json.dumps(out))
        return
    rows = []
    for candidates in [int(c) for c in args.candidates.split(",")]:
        for impl in args.impl.split(","):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", impl, str(candidates)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                print(f"{impl} @ {candidates}: failed ({tail[0][:160]})", flush=True)
                continue
            r = json.loads(line[0][7:])
            rows.append((impl, candidates, r))
            parts = ", ".join(f"{k} {v:.2f}s" for k, v in r["parts"].items() if k != "step")
            print(
                f"{impl:14s} candidates {candidates:4d}: {r['step_s']:7.2f} s/step = {1 / r['step_s']:.4f} steps/s, "
                f"peak +{r['peak_mib']:.0f} MiB{'; ' + parts if parts else ''}",
                flush=True,
            )
    print("\n| implementation | candidates | s/step (median) | steps/s | vs nanogcg | peak MiB above model |")
    print("|---|---|---|---|---|---|")
    nano = {c: r["step_s"] for i, c, r in rows if i == "nanogcg"}
    for impl, c, r in rows:
        ratio = f"{nano[c] / r['step_s']:.2f}×" if c in nano else "–"
        print(f"| {impl} | {c} | {r['step_s']:.2f} | {1 / r['step_s']:.4f} | {ratio} | {r['peak_mib']:.0f} |")
    from refusalscope.provenance import environment

    print("\nenvironment:", json.dumps({k: v for k, v in environment().items() if k in ("versions", "cpu", "threads")}))


if __name__ == "__main__":
    main()
