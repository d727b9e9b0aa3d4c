"""Where the time of `refusalscope run` goes: per stage wall time, tokens, tokens/s, and
how close each stage comes to the machine's prefill roofline measured in the same run.

Every forward pass of the model is counted (a pre-hook on the model): the token positions
it computed (padding included: the CPU computes those too), split into prefill (chunks of
more than one token) and decode (one token per row), and the number of forwards. Backward
passes (integrated gradients in discovery) are not counted, only their forwards. The
roofline is a plain batched forward of the same model in the same dtype over equal-length
prompts (batch 16 × 64 tokens, no hooks, no padding), median of 3, measured before and
after the run; a stage at ratio 1.0 runs as fast as the model can prefill here.

The run is cold by default: it uses a fresh temporary $REFUSALSCOPE_CACHE holding links
to only the cache folders named by --warm (default: the converted models and the SAEs),
so the direction, discovery, gate, calibration and generation caches are recomputed, and
the sweep writes a fresh results database. --warm with more folders makes those stages
lookups, to profile the rest.

    python benchmarks/pipeline.py                          # the whole quick run (~15-30 min on 2 cores)
    python benchmarks/pipeline.py --only direction         # refusal direction alone, with its parts
    python benchmarks/pipeline.py --only direction --ref 31a453e~1   # and the selection of an older direction.py
    python benchmarks/pipeline.py --warm models,saes,directions,discovery --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import prefill_rate  # benchmarks/common.py: the roofline's timing, shared with sweep.py

REPO = Path(__file__).resolve().parents[1]


class TokenCounter:
    """Counts the token positions every forward of `model` computes."""

    def __init__(self, model: torch.nn.Module):
        self.forwards = self.prefill = self.decode = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        rows, length = int(ids.shape[0]), int(ids.shape[1])
        self.forwards += 1
        if length == 1:
            self.decode += rows
        else:
            self.prefill += rows * length

    def snapshot(self) -> tuple[int, int, int]:
        return self.forwards, self.prefill, self.decode


def roofline(chat, batch: int = 16, length: int = 64, repeats: int = 3) -> float:
    """Prefill tokens/s of a plain batched forward over equal-length prompts of real text
    (no hooks); the timing is `common.prefill_rate`, shared with sweep.py."""
    from refusalscope.data.builtin import minimal_pairs

    text = " ".join(f"{p.benign} {p.harmful}" for p in minimal_pairs())
    ids = chat.encode(chat.format(text))
    rows = torch.tensor([ids[i : i + length] for i in range(batch)], dtype=torch.long, device=chat.device)
    return prefill_rate(chat, rows, repeats)


class StageTable:
    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.rows: list[dict] = []
        self.last = counter.snapshot()
        self.t0 = time.perf_counter()

    def mark(self, name: str, seconds: float | None = None) -> None:
        now = self.counter.snapshot()
        forwards, prefill, decode = (a - b for a, b in zip(now, self.last))
        elapsed = time.perf_counter() - self.t0 if seconds is None else seconds
        self.rows.append(
            {
                "stage": name,
                "seconds": elapsed,
                "forwards": forwards,
                "prefill_tokens": prefill,
                "decode_tokens": decode,
            }
        )
        self.last, self.t0 = now, time.perf_counter()

    def render(self, peak: float) -> str:
        total = {
            "stage": "total",
            "seconds": sum(r["seconds"] for r in self.rows),
            **{k: sum(r[k] for r in self.rows) for k in ("forwards", "prefill_tokens", "decode_tokens")},
        }
        lines = [
            f"{'stage':<28}{'seconds':>9}{'forwards':>10}{'prefill tok':>12}{'decode tok':>11}"
            f"{'tok/s':>8}{'/roofline':>10}"
        ]
        for r in [*self.rows, total]:
            tps = (r["prefill_tokens"] + r["decode_tokens"]) / r["seconds"] if r["seconds"] > 0 else 0.0
            r["tokens_per_s"], r["roofline_ratio"] = tps, tps / peak
            lines.append(
                f"{r['stage']:<28}{r['seconds']:>9.1f}{r['forwards']:>10}{r['prefill_tokens']:>12}"
                f"{r['decode_tokens']:>11}{tps:>8.0f}{tps / peak:>10.2f}"
            )
        return "\n".join(lines)


def cold_cache(warm: list[str]) -> Path:
    """A temporary cache dir linking only the `warm` folders of the real cache."""
    from refusalscope.paths import cache_dir

    real = cache_dir()
    tmp = Path(tempfile.mkdtemp(prefix="refusalscope-bench-cache-"))
    for name in warm:
        if (real / name).exists():
            (tmp / name).symlink_to(real / name)
    os.environ["REFUSALSCOPE_CACHE"] = str(tmp)
    return tmp


def direction_module_at(ref: str):
    """src/refusalscope/direction.py as of git `ref`, imported inside the package."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:src/refusalscope/direction.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "direction_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("refusalscope.direction_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_direction(chat, table: StageTable, data_dir, profile_name: str, ref: str | None, screen_z) -> dict:
    """The direction stage of `run` in its parts, uncached, with the profile's settings; with
    `ref`, the selection is run a second time with direction.py as of that commit, on the same
    candidates and refusal tokens, and the two selections are compared."""
    from refusalscope import direction as current
    from refusalscope.judges.first_token import find_refusal_tokens
    from refusalscope.pipeline import get_profile

    d = get_profile(profile_name).direction
    data = current.sample_direction_data(data_dir, d["n_train"], d["n_val"], seed=0)
    table.mark("direction: data")
    tokens = find_refusal_tokens(
        chat, data.harmful_train[:48], data.harmless_train[:48], batch_size=current.REFUSAL_TOKEN_BATCH
    )
    table.mark("direction: refusal tokens")
    cands = current.candidate_directions(chat, data.harmful_train, data.harmless_train, progress=False)
    table.mark("direction: candidates")
    settings = dict(
        layer_stride=d["layer_stride"], n_screen=d["n_screen"], n_finalists=d["n_finalists"], progress=False
    )

    def select(module, name, **extra) -> dict:
        best, grid, baseline = module.select_direction(
            chat, cands, data.harmful_val, data.harmless_val, tokens.ids, **settings, **extra
        )
        table.mark(name)
        return {
            "layer": best.layer,
            "position": best.position,
            "ablation_score": best.ablation_score,
            "kl": best.kl,
            "induction_score": best.induction_score,
            "finalists": [(c.layer, c.position) for c in grid if c.kl is not None],
            "baseline": baseline,
        }

    out = {"selection": select(current, "direction: selection", screen_z=screen_z)}
    if ref:
        out[f"selection at {ref}"] = select(direction_module_at(ref), f"selection at {ref}")
        same = all(out["selection"][k] == out[f"selection at {ref}"][k] for k in ("layer", "position"))
        out["same_selection"] = same
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--only", choices=["direction"], help="profile one stage alone (its parts as rows)")
    parser.add_argument(
        "--ref",
        help="with --only direction: also select with direction.py as of this git commit "
        "(same candidates and refusal tokens) and compare",
    )
    parser.add_argument("--screen-z", default="3.0", help="with --only direction: the adaptive screen's z, or 'none'")
    parser.add_argument(
        "--warm", default="models,saes", help="cache folders reused (comma-separated); the rest is cold"
    )
    parser.add_argument("--json", type=Path, help="also write the table and settings here")
    args = parser.parse_args()

    cold_cache([w for w in args.warm.split(",") if w])
    from refusalscope import load_model
    from refusalscope.pipeline import run_pipeline
    from refusalscope.provenance import cpu_info

    data_dir = os.environ.get("REFUSALSCOPE_DATA")
    load_before = os.getloadavg()
    started = time.perf_counter()
    chat = load_model(args.model, dtype=args.dtype, progress=False)
    load_seconds = time.perf_counter() - started
    peak_before = roofline(chat)
    counter = TokenCounter(chat.model)
    table = StageTable(counter)
    result: dict = {}
    if args.only == "direction":
        screen_z = None if args.screen_z.lower() == "none" else float(args.screen_z)
        result = run_direction(chat, table, data_dir, args.profile, args.ref, screen_z)
    else:
        import refusalscope.models as models_pkg

        # run_pipeline loads the model itself: hand it the one already loaded (and counted)
        original = models_pkg.load_model
        models_pkg.load_model = lambda *a, **k: chat
        try:
            with tempfile.TemporaryDirectory() as out:
                summary = run_pipeline(
                    args.model,
                    args.profile,
                    Path(out) / "run",
                    data_dir=data_dir,
                    dtype=args.dtype,
                    progress=False,
                    on_stage=lambda name, _chat: table.mark(name),
                )
        finally:
            models_pkg.load_model = original
        result = {"direction": summary["direction"], "selected": summary["selected"], "sweep": summary["sweep"]}
    counter.handle.remove()
    peak_after = roofline(chat)
    peak = statistics.mean([peak_before, peak_after])
    cpu = cpu_info()
    print(
        f"model {chat.info.name}, dtype {chat.dtype}, profile {args.profile}; cpu {cpu.get('model')}, "
        f"torch threads {torch.get_num_threads()}; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(
        f"model load {load_seconds:.1f} s (not in the table); prefill roofline {peak_before:.0f} tok/s before, "
        f"{peak_after:.0f} after (batch 16 x 64, fp forward, no hooks)"
    )
    print(table.render(peak))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    print(json.dumps(result, default=str))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "cpu": cpu,
                    "dtype": str(chat.dtype),
                    "roofline": [peak_before, peak_after],
                    "load_average": [load_before, os.getloadavg()],
                    "stages": table.rows,
                    "result": result,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
