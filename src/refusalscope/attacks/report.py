"""The report's robustness section, from a results database or attack output folders.

It reads what `refusalscope attack …` (or the pipeline's attack tasks) wrote: either the
attack tables of a results database (`results.db`, the pipeline's and `--db`'s home) or the
folders under one root — `suite/suite.json`, `gcg/<config>/summary.json`,
`multiturn/<config>/results.jsonl` — and renders three tables with a row per configuration (unsteered, steered, gated):
per-attack compliance, GCG robustness with its steps-to-break distribution, and refusal
by turn in multi-turn escalation. Every rate has its Wilson interval and n; model output
is HTML-escaped.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from .robustness import format_estimate


def _ci(row: dict[str, Any], key: str = "compliance") -> str:
    return f"{row[key]:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _configs(folder: Path) -> list[Path]:
    return (
        sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: (p.name != "unsteered", p.name))
        if folder.is_dir()
        else []
    )


def collect_store(path: str | Path) -> dict[str, Any]:
    """`collect` for a results database: every attack run in its attack tables, opened
    read-only. A configuration attacked with two budgets (or two multi-turn modes) gives
    two rows, each with its settings; the suite's compliance is over every prompt stored."""
    from ..evaluation.store import ResultsStore
    from .multiturn import summarise
    from .robustness import gcg_robustness
    from .suite import compliance_rows

    data: dict[str, Any] = {"suite": None, "gcg": [], "multiturn": []}
    with ResultsStore(path, create=False) as store:
        runs = sorted(store.attack_runs(), key=lambda r: r["config"] != "unsteered")  # then in the order run
        suite_rows, judges = [], []
        for run in runs:
            results = store.attack_results(run["run_key"])
            if not results:
                continue
            identity = run["identity"]
            if run["attack"] == "suite":
                suite_rows.extend(compliance_rows(run["config"], results))
                judges.append(identity.get("judge"))
            elif run["attack"] == "gcg":
                data["gcg"].append(
                    {
                        "attack": "gcg",
                        **gcg_robustness(results),
                        "steering": identity.get("steering"),
                        "budget": identity.get("config", {}),
                        "model": identity.get("model"),
                        "judge": identity.get("judge"),
                        "tokens": sum(r["tokens"] for r in results),
                        "seconds": sum(r["seconds"] for r in results),
                        "config": run["config"],
                    }
                )
            elif run["attack"].startswith("multiturn"):
                s = summarise(results, run["config"])
                s.pop("results")
                s["kind"] = run["attack"].removeprefix("multiturn-")
                data["multiturn"].append(s)
        if suite_rows:
            data["suite"] = {"attack": "suite", "judge": ", ".join(sorted(set(map(str, judges)))), "rows": suite_rows}
    kinds = {s["kind"] for s in data["multiturn"]}
    if len(kinds) > 1:  # scripted and attacker rows side by side: say which is which
        for s in data["multiturn"]:
            s["config"] = f"{s['config']} ({s['kind']})"
    return data


def collect(root: str | Path) -> dict[str, Any]:
    """Everything the section shows, as data (also what the report exports). `root` is a
    results database (a `.db` file) or a folder of attack outputs."""
    from .runs import is_store

    if is_store(root):
        return collect_store(root)
    root = Path(root)
    data: dict[str, Any] = {"suite": None, "gcg": [], "multiturn": []}
    suite = root / "suite" / "suite.json"
    if suite.is_file():
        data["suite"] = json.loads(suite.read_text())
    for folder in _configs(root / "gcg"):
        if (folder / "summary.json").is_file():
            entry = json.loads((folder / "summary.json").read_text())
            entry["budget"] = entry.pop("config", {})  # the GCG settings; "config" names the row
            data["gcg"].append({**entry, "config": folder.name})
    from .multiturn import summarise
    from .runs import AttackRun

    for folder in _configs(root / "multiturn"):
        marker = folder / "attack.json"
        if marker.is_file():
            results = AttackRun(folder, json.loads(marker.read_text())).results()
            if results:
                s = summarise(results, folder.name)
                s.pop("results")
                data["multiturn"].append(s)
    return data


def robustness_section(root: str | Path) -> str:
    """HTML for the report (empty string when `root`, a results database or a folder of
    attack outputs, holds no attack results)."""
    data = collect(root)
    parts = []
    if data["suite"]:
        rows = data["suite"]["rows"]
        configs = list(dict.fromkeys(r["config"] for r in rows))
        cell = {(r["config"], r["family"]): r for r in rows}
        families = list(dict.fromkeys(r["family"] for r in rows))
        table = [
            [f, cell[(configs[0], f)]["n"]] + [_ci(cell[(c, f)]) if (c, f) in cell else "–" for c in configs]
            for f in families
        ]
        parts.append(
            '<h3>Static attacks: compliance per attack family</h3><p class="note">Share of attack prompts '
            f"answered (judge: {escape(str(data['suite'].get('judge')))}; lower is more robust), Wilson 95% "
            "interval; <em>direct</em> is the request without any attack.</p>"
            + _table(["attack", "n"] + configs, table)
        )
    if data["gcg"]:
        rows = []
        for s in data["gcg"]:
            steps = s.get("steps_to_break") or []
            dist = ", ".join(str(x) for x in steps) or "–"
            cfg = s.get("budget") or {}
            rows.append(
                [
                    s["config"],
                    format_estimate(s["robustness"]),
                    s["n"],
                    s["broken"],
                    s.get("median_steps_to_break") if s.get("median_steps_to_break") is not None else "–",
                    dist,
                    f"{cfg.get('steps')} steps × {cfg.get('candidates')} candidates, suffix "
                    f"{cfg.get('suffix_length')}; {s.get('tokens', 0):,} forward tokens",
                ]
            )
        parts.append(
            '<h3>GCG robustness</h3><p class="note">Share of behaviours GCG did not break within its '
            "budget (O'Brien et al.'s robustness score; higher is more robust), attacking each configuration "
            "adaptively (gradients through its steering).</p>"
            + _table(
                [
                    "configuration",
                    "robustness [95% CI]",
                    "n",
                    "broken",
                    "median steps to break",
                    "steps to break (each broken behaviour)",
                    "budget",
                ],
                rows,
            )
        )
    if data["multiturn"]:
        turns = max(len(s["refusal_by_turn"]) for s in data["multiturn"])
        rows = []
        for s in data["multiturn"]:
            cells = [f"{t['refusal']:.2f} [{t['low']:.2f}, {t['high']:.2f}] (n={t['n']})" for t in s["refusal_by_turn"]]
            rows.append([s["config"], *cells, *["–"] * (turns - len(cells)), format_estimate(s["success"])])
        parts.append(
            '<h3>Multi-turn escalation: refusal by turn</h3><p class="note">Refusal rate at each turn of '
            "Crescendo-style conversations (n = conversations that reached the turn) and attack success "
            "(compliance) at the last turn.</p>"
            + _table(["configuration"] + [f"turn {t + 1}" for t in range(turns)] + ["success at last turn"], rows)
        )
    if not parts:
        return ""
    return '<section id="robustness"><h2>Robustness under attack</h2>' + "".join(parts) + "</section>"
