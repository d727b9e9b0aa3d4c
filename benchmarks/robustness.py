"""Jailbreak robustness on the default model: unsteered vs steered vs gated, side by side.

Runs the scripted Crescendo conversations and GCG on `--behaviours` HarmBench behaviours
against the three configurations `benchmarks/attack_configs.py` wrote (unsteered, the
discovered latents clamped at a strength within +10% WikiText loss, the same behind the
harm gate), judged by the shipped learned judge.

GCG runs behaviour by behaviour, each against all three configurations in turn, so a run
stopped by its time limit leaves a *paired* comparison on the first behaviours rather than
one configuration finished and the others missing; a rerun resumes (finished behaviours
are skipped, the one in flight continues from its checkpoint).

    python benchmarks/robustness.py --specs runs/s6-attacks/specs --out runs/s6-attacks --only multiturn
    python benchmarks/robustness.py --specs runs/s6-attacks/specs --out runs/s6-attacks --only gcg \
        --steps 5 --candidates 32 --behaviours 20

`--db FILE` writes into a results database instead of folders (`attacks.runs.StoreRun`).
`--only report` needs no model: it copies the folders into `<out>/results.db`
(`attacks.runs.import_folder`), writes `<out>/robustness.html` from that database, and
prints the multi-turn and GCG tables twice: as judged during the run, and with every stored
final reply re-judged by the substring judge (a cross-check of the judge, not of the attack).

    python benchmarks/robustness.py --specs runs/s6-attacks/specs --out runs/s6-attacks --only report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=Path, required=True, help="folder with steered.json and gated.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for multiturn/<config> and gcg/<config>")
    parser.add_argument("--db", type=Path, default=None, help="write into this results database instead")
    parser.add_argument("--only", choices=("multiturn", "gcg", "all", "report"), default="all")
    parser.add_argument("--judge", default="learned")
    parser.add_argument("--behaviours", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--suffix-length", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="GCG reply tokens judged")
    parser.add_argument("--turn-tokens", type=int, default=64, help="multi-turn reply tokens per turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if args.only == "report":
        report(args.out)
        return

    from refusalscope.attacks import GCG, GCGConfig, load_behaviours, load_config, load_conversations, run_scripted
    from refusalscope.attacks.robustness import format_estimate
    from refusalscope.judges import load_judge
    from refusalscope.models import load_model

    chat = load_model("default")
    configs = [
        load_config("unsteered", None, chat),
        load_config("steered", args.specs / "steered.json", chat),
        load_config("gated", args.specs / "gated.json", chat),
    ]
    judge = load_judge(args.judge)
    target = (lambda kind, cfg: args.db) if args.db else (lambda kind, cfg: args.out / kind / cfg.name)
    timings: dict[str, float] = {}

    if args.only in ("multiturn", "all"):
        convs = load_conversations()
        started = time.perf_counter()
        for cfg in configs:
            s = run_scripted(
                chat, cfg, convs, target("multiturn", cfg), judge=judge, max_new_tokens=args.turn_tokens, progress=False
            )
            turns = " ".join(f"{t['refusal']:.2f}(n={t['n']})" for t in s["refusal_by_turn"])
            print(f"multiturn {cfg.name}: refusal by turn {turns}; success {format_estimate(s['success'])}", flush=True)
        timings["multiturn"] = time.perf_counter() - started

    if args.only in ("gcg", "all"):
        gcg_config = GCGConfig(
            steps=args.steps,
            candidates=args.candidates,
            suffix_length=args.suffix_length,
            top_k=args.top_k,
            eval_batch=args.candidates,
            check_every=args.steps,
            checkpoint_every=1,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
        behaviours = load_behaviours("harmful/harmbench", None, args.behaviours, args.seed, args.data_dir)
        attacks = {cfg.name: GCG(chat, cfg.steering, gcg_config, judge=judge) for cfg in configs}
        started = time.perf_counter()
        summaries = {}
        for i in range(len(behaviours)):
            for cfg in configs:
                summaries[cfg.name] = attacks[cfg.name].run(
                    behaviours[: i + 1], target("gcg", cfg), progress=False, **({"name": cfg.name} if args.db else {})
                )
                last = summaries[cfg.name]["results"][-1]
                print(
                    f"gcg {i + 1}/{len(behaviours)} {cfg.name:9s} {last['id'][:48]:48s} broken={last['broken']} "
                    f"steps={last['steps']} loss={last['best_loss']} {last['seconds']:.0f}s",
                    flush=True,
                )
        timings["gcg"] = time.perf_counter() - started
        for name, s in summaries.items():
            print(
                f"gcg {name}: robustness {format_estimate(s['robustness'])} broken {s['broken']}/{s['n']} "
                f"steps-to-break {s['steps_to_break']} tokens {s['tokens']:,} seconds {s['seconds']:.0f}",
                flush=True,
            )
    print(json.dumps({"seconds": {k: round(v, 1) for k, v in timings.items()}}))


def report(out: Path) -> None:
    """Folders -> `<out>/results.db`, the HTML section from it, and both judges' tables."""
    from refusalscope.attacks.report import collect, robustness_section
    from refusalscope.attacks.robustness import format_estimate, gcg_robustness, rate_of
    from refusalscope.attacks.runs import import_folder
    from refusalscope.evaluation.store import ResultsStore
    from refusalscope.judges import SubstringJudge

    db = out / "results.db"
    print("imported", import_folder(out, db))
    (out / "robustness.html").write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>robustness</title></head><body>'
        + robustness_section(db)
        + "</body></html>\n"
    )
    data = collect(db)
    for s in data["multiturn"]:
        turns = " | ".join(
            f"{t['refusal']:.2f} [{t['low']:.2f}, {t['high']:.2f}] (n={t['n']})" for t in s["refusal_by_turn"]
        )
        print(f"multiturn {s['config']}: {turns} | success {format_estimate(s['success'])}")
    for s in data["gcg"]:
        steps = s["steps_to_break"]
        print(
            f"gcg {s['config']}: robustness {format_estimate(s['robustness'])}, broken {s['broken']}/{s['n']}, "
            f"steps to break {steps}, {s['tokens']:,} forward tokens, {s['seconds'] / 60:.1f} min"
        )
    judge = SubstringJudge()
    with ResultsStore(db, create=False) as store:
        for run in store.attack_runs():
            results = store.attack_results(run["run_key"])
            if run["attack"] == "gcg":
                prompts = [f"{r['request']} {r['suffix']}" for r in results]
                replies = [r["reply"] for r in results]
                complied = [(not v.refused) and bool(x.strip()) for v, x in zip(judge.judge(prompts, replies), replies)]
                score = gcg_robustness([{"broken": c, "steps_to_break": r["steps"]} for c, r in zip(complied, results)])
                print(
                    f"substring re-judge, gcg {run['config']}: final reply complies {sum(complied)}/{len(results)}, "
                    f"robustness {format_estimate(score['robustness'])}"
                )
            elif run["attack"].startswith("multiturn"):
                last = [r["turns"][-1] for r in results]
                verdicts = judge.judge([t["user"] for t in last], [t["reply"] for t in last])
                success = rate_of([(not v.refused) and bool(t["reply"].strip()) for v, t in zip(verdicts, last)])
                print(f"substring re-judge, multiturn {run['config']}: success at last turn {format_estimate(success)}")


if __name__ == "__main__":
    main()
