"""The HTML report: one self-contained page from a results database.

    from refusalscope.report import build_report
    build_report("results.db", "report.html")        # + report_data/*.csv, *.json

Sections (each with one figure where the sweep has the data for it):

1. the safety trade-off: refusal on harmful prompts (y) against over-refusal on benign
   prompts (x), one line per steering method across strengths, error bars from the
   bootstrap CIs, the unsteered model as a star and the dense-direction baseline dashed;
2. the selective refusal score Δs per dataset pair against strength;
3. jailbreak robustness (refusal on jailbreak artifacts) against strength;
4. capability (each benchmark's primary metric) against strength;
5. conditional vs unconditional steering, with the gate's fire rates;
6. every number with its CI and n; 7. example generations side by side; 8. provenance.

Figures are PNGs embedded as base64 (matplotlib's Agg canvas; pyplot's global state is
never touched), all text from the database is HTML-escaped, and the page loads nothing
from anywhere. Every figure's data is also written to `export_dir` as CSV and JSON.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import RefusalScopeError
from .evaluation.store import ResultsStore
from .evaluation.sweep import Summary, summarise

_KEY = ("config_id", "name", "label", "method", "family", "strength", "conditional")
RATE_METRICS = {"refused", "correct", "p_true", "exact", "f1", "accuracy", "acc", "em", "gate_fired"}
_NA = "n/a"


# ---------------------------------------------------------------------- figure data
def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _line_key(row: dict) -> tuple[str, bool]:
    return row["name"], bool(row["conditional"])


def tradeoff_rows(summary: Summary) -> list[dict]:
    """One row per (dataset pair, configuration): x = over-refusal on the benign task,
    y = refusal on the harmful task, each with its CI and n."""
    cells = {(c["config_id"], c["task"]): c for c in summary.cells}
    pairs = []
    seen = set()
    for d in summary.deltas:
        if (d["pair"], d["harmful_task"], d["benign_task"]) not in seen:
            seen.add((d["pair"], d["harmful_task"], d["benign_task"]))
            pairs.append((d["pair"], d["harmful_task"], d["benign_task"]))
    if not pairs:  # no registered pair: the first harmful and the first benign task
        harm = [t["task"] for t in summary.tasks if t["role"] == "harmful"]
        ben = [t["task"] for t in summary.tasks if t["role"] == "benign"]
        if harm and ben:
            pairs.append((f"{harm[0]} / {ben[0]}", harm[0], ben[0]))
    out = []
    for name, harm, ben in pairs:
        for cfg in summary.configs:
            h, b = cells.get((cfg["config_id"], harm)), cells.get((cfg["config_id"], ben))
            if h is None or b is None:
                continue
            out.append({
                "pair": name, **{k: cfg[k] for k in _KEY}, "harmful_task": harm, "benign_task": ben,
                "refusal_harmful": h["value"], "refusal_harmful_low": h["low"], "refusal_harmful_high": h["high"],
                "n_harmful": h["n"],
                "refusal_benign": b["value"], "refusal_benign_low": b["low"], "refusal_benign_high": b["high"],
                "n_benign": b["n"],
            })
    return out


def _cells(summary: Summary, role: str) -> list[dict]:
    return [dict(c) for c in summary.cells if c["role"] == role]


def conditional_rows(summary: Summary) -> list[dict]:
    """Cells of the methods run both gated and ungated (plus the unsteered model)."""
    modes = defaultdict(set)
    for c in summary.configs:
        modes[c["name"]].add(bool(c["conditional"]))
    both = {m for m, s in modes.items() if s == {False, True}}
    return [dict(c) for c in summary.cells if c["name"] in both or c["family"] == "none"]


def example_rows(db: ResultsStore, summary: Summary, per_task: int = 3, max_columns: int = 6) -> list[dict]:
    """The same prompts answered by the unsteered model and by the strongest setting of
    each method (gated and ungated), for each task that keeps generations."""
    configs = summary.configs
    base = next((c for c in configs if c["family"] == "none"), configs[0] if configs else None)
    if base is None:
        return []
    strongest: dict[tuple[str, bool], dict] = {}
    for c in configs:
        if c is base:
            continue
        key = (c["name"], bool(c["conditional"]))
        s = -math.inf if c["strength"] is None else abs(c["strength"])
        best = strongest.get(key)
        if best is None or s > (-math.inf if best["strength"] is None else abs(best["strength"])):
            strongest[key] = c
    columns = [base] + list(strongest.values())[: max_columns - 1]
    order = {"harmful": 0, "benign": 1, "jailbreak": 2, "capability": 3}
    out = []
    for t in sorted(summary.tasks, key=lambda t: order.get(t["role"], 9)):
        baseline = db.outputs(base["config_id"], t["task"])
        ids = [i for i, r in baseline.items() if r["output"] is not None]
        if not ids:
            continue
        others = {c["config_id"]: db.outputs(c["config_id"], t["task"], ids) for c in columns[1:]}
        shared = [i for i in ids if all(i in o for o in others.values())][:per_task]
        for item_id in shared:
            row = {"task": t["task"], "role": t["role"], "item_id": item_id, "prompt": baseline[item_id]["prompt"],
                   "outputs": [{"label": c["label"], "config_id": c["config_id"],
                                "output": (baseline if c is base else others[c["config_id"]])[item_id]["output"]}
                               for c in columns]}
            out.append(row)
    return out


def _gates(items) -> list[dict]:
    """The conditional gates in a steering spec's interventions."""
    out = []
    for item in items or []:
        if item.get("kind") == "conditional":
            g = item.get("gate", {})
            out.append({"kind": g.get("kind"), "threshold": g.get("threshold"), "reduce": g.get("reduce"),
                        "layer": g.get("layer", (g.get("sae") or {}).get("layer")), "feature": g.get("feature")})
            out.extend(_gates(item.get("interventions")))
    return out


def provenance(db: ResultsStore, summary: Summary) -> dict:
    runs = db.runs()
    configs = []
    for c in summary.configs:
        gates = _gates(c["spec"].get("interventions"))
        configs.append({
            **{k: c[k] for k in _KEY}, "steering_id": c["steering_id"], "model_id": c["model_id"],
            "saes": c["saes"], "gates": gates, "kinds": sorted({i.get("kind") for i in c["spec"].get("interventions", [])}),
        })
    return {
        "runs": [{k: r.get(k) for k in ("run_id", "started", "finished", "status", "model_id", "computed", "skipped", "note")}
                 | {"versions": r.get("versions"), "model": r.get("model"),
                    "platform": (r.get("environment") or {}).get("platform")} for r in runs],
        "configs": configs,
        "tasks": [{k: t[k] for k in ("task", "role", "dataset", "split", "item_limit", "seed", "judge", "primary_metric",
                                     "higher_is_better", "describe")} for t in summary.tasks],
        "pairs": db.pairs(),
    }


# ---------------------------------------------------------------------- plotting
class _Style:
    """One colour per method across every figure; dashed + hollow when gated; squares for
    the dense baseline; the unsteered model grey."""

    def __init__(self, configs: list[dict]):
        from matplotlib import colormaps

        lines = {c["name"]: c["method"] for c in configs if c["family"] != "none"}
        names = sorted(lines, key=lambda n: (lines[n].split(":")[0] == "dense", n))
        cmap = colormaps["tab10"]
        self.colour = {n: cmap(i % 10) for i, n in enumerate(names)}
        self.method = lines

    def kw(self, name: str, family: str, conditional: bool) -> dict:
        method = self.method.get(name, name)
        label = name if method == name else f"{name} ({method})"
        if family == "dense":
            label += " [dense baseline]"
        return {
            "color": self.colour.get(name, "0.3"),
            "linestyle": "--" if conditional else ("-." if family == "dense" else "-"),
            "marker": "s" if family == "dense" else "o",
            "markerfacecolor": "white" if conditional else None,
            "label": label + (" — conditional" if conditional else ""),
        }


def _figure(n_panels: int, width: float = 4.2, height: float = 3.4, cols: int | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = cols or min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.6), dpi=96)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _png(fig) -> str:
    buf = io.BytesIO()
    bottom = getattr(fig, "_legend_inches", 0.0) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)  # never crop a wide legend
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _group_lines(rows: list[dict]) -> dict[tuple[str, bool], list[dict]]:
    lines = defaultdict(list)
    for r in rows:
        if r["family"] == "none":
            continue
        lines[_line_key(r)].append(r)
    for key in lines:
        lines[key].sort(key=lambda r: (r["strength"] is None, r["strength"] or 0.0))
    return dict(lines)


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        # as many columns as fit the figure's width (a one-panel figure is narrow: three
        # columns of long method labels ran off its edges)
        label_inches = 0.6 + 0.062 * max(len(lab) for lab in labels)
        ncol = max(1, min(len(labels), 3, int(fig.get_figwidth() // label_inches)))
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=ncol, fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig._legend_inches = 0.22 * math.ceil(len(labels) / ncol) + 0.1


def plot_tradeoff(rows: list[dict], style: _Style) -> str | None:
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    if not pairs:
        return None
    fig, axes = _figure(len(pairs), 4.6, 4.2)
    for ax, pair in zip(axes, pairs):
        mine = [r for r in rows if r["pair"] == pair]
        for (method, cond), line in _group_lines(mine).items():
            kw = style.kw(method, line[0]["family"], cond)
            xs = [r["refusal_benign"] for r in line]
            ys = [r["refusal_harmful"] for r in line]
            ax.errorbar(xs, ys, xerr=_xerr(line, "refusal_benign"), yerr=_xerr(line, "refusal_harmful"),
                        capsize=2, elinewidth=0.8, **kw)
            for r in line:
                if r["strength"] is not None:
                    ax.annotate(f"{r['strength']:g}", (r["refusal_benign"], r["refusal_harmful"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points", color=kw["color"])
        for r in mine:
            if r["family"] == "none":
                ax.errorbar([r["refusal_benign"]], [r["refusal_harmful"]], xerr=_xerr([r], "refusal_benign"),
                            yerr=_xerr([r], "refusal_harmful"), marker="*", markersize=14, color="black",
                            linestyle="none", capsize=2, label="unsteered")
        ax.plot([0, 1], [0, 1], color="0.85", linewidth=0.8, zorder=0)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("over-refusal on benign prompts")
        ax.set_ylabel("refusal on harmful prompts")
        ax.set_title(pair, fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _png(fig)


def _xerr(line: list[dict], key: str) -> list[list[float]]:
    lo, hi = [], []
    for r in line:
        v, a, b = r[key], r[f"{key}_low"], r[f"{key}_high"]
        lo.append(0.0 if _nan(a) or _nan(v) else max(v - a, 0.0))
        hi.append(0.0 if _nan(b) or _nan(v) else max(b - v, 0.0))
    return [lo, hi]


def _yerr(line: list[dict]) -> list[list[float]]:
    return _xerr([{"v": r["value"], "v_low": r["low"], "v_high": r["high"]} for r in line], "v")


def plot_vs_strength(rows: list[dict], panel_key: str, style: _Style, ylabel, hline: float | None = None,
                     ylim: tuple[float, float] | str | None = "auto") -> str | None:
    """One panel per `panel_key` value, x = strength, a line per (method, gated), the
    unsteered value as a grey band."""
    panels = list(dict.fromkeys(r[panel_key] for r in rows))
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, panel in zip(axes, panels):
        mine = [r for r in rows if r[panel_key] == panel]
        for (method, cond), line in _group_lines(mine).items():
            line = [r for r in line if r["strength"] is not None] or line
            xs = [r["strength"] if r["strength"] is not None else 0.0 for r in line]
            ax.errorbar(xs, [r["value"] for r in line], yerr=_yerr(line), capsize=2, elinewidth=0.8,
                        **style.kw(method, line[0]["family"], cond))
        for r in mine:
            if r["family"] == "none":
                ax.axhline(r["value"], color="0.4", linestyle=":", linewidth=1.2, label="unsteered")
                if not _nan(r["low"]) and not _nan(r["high"]):
                    ax.axhspan(r["low"], r["high"], color="0.6", alpha=0.15, linewidth=0)
        if hline is not None:
            ax.axhline(hline, color="0.8", linewidth=0.8, zorder=0)
        if ylim == "auto":
            if all(r.get("metric") in RATE_METRICS for r in mine):
                ax.set_ylim(-0.03, 1.03)
        elif ylim:
            ax.set_ylim(*ylim)
        ax.set_xlabel("steering strength (method's own units)")
        ax.set_ylabel(ylabel(mine[0]) if callable(ylabel) else ylabel)
        ax.set_title(str(panel), fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _png(fig)


# ---------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.gen{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.82em;max-width:28em}
img{max-width:100%}.note{color:#666;font-size:.9em}code{font-size:.9em}
details{margin:.5em 0}
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if _nan(v):
        return _NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(value, low, high, n) -> str:
    if _nan(value):
        return _NA
    return f"{value:.3f} [{_fmt(low)}, {_fmt(high)}] (n={n})"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"num\">{_e(v)}</td>" if i in numeric else f"<td>{_e(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f"<p class=\"note\">No data for this figure in this database ({_e(alt)}).</p>"
    return f"<img alt=\"{_e(alt)}\" src=\"data:image/png;base64,{b64}\">"


def _strength(v) -> str:
    return "—" if v is None else f"{v:g}"


def _section(ident: str, title: str, *parts: str) -> str:
    return f"<section id=\"{ident}\"><h2>{_e(title)}</h2>{''.join(parts)}</section>"


# ---------------------------------------------------------------------- exports
def _flat(row: dict) -> dict:
    return {k: (json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v) for k, v in row.items()}


def _clean(obj):
    """JSON-safe: NaN becomes null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


CELL_COLUMNS = [*_KEY, "task", "role", "dataset", "metric", "higher_is_better", "value", "low", "high", "n",
                "fire_rate", "fire_low", "fire_high", "fire_n"]
COLUMNS = {
    "tradeoff": ["pair", *_KEY, "harmful_task", "benign_task", "refusal_harmful", "refusal_harmful_low",
                 "refusal_harmful_high", "n_harmful", "refusal_benign", "refusal_benign_low", "refusal_benign_high", "n_benign"],
    "selective_refusal": [*_KEY, "pair", "harmful_task", "benign_task", "value", "low", "high", "n", "n_harmful",
                          "n_benign", "refusal_harmful", "refusal_benign"],
    "jailbreak": CELL_COLUMNS, "capability": CELL_COLUMNS, "conditional": CELL_COLUMNS, "refusal": CELL_COLUMNS,
    "summary": CELL_COLUMNS, "examples": ["task", "role", "item_id", "prompt"],
}


def _publish(path: Path) -> Path:
    """Files written through a temporary are private; make them ordinary (umask applies)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return path


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV value a spreadsheet shows as text: model replies (and prompts, names) that begin
    with = + - @ (or a tab / carriage return) would otherwise run as formulas when the file is
    opened (OWASP's CSV-injection advice: prefix them with a single quote). Numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def report_outputs(out_html: str | Path, export_dir: str | Path | None) -> tuple[Path, Path]:
    """(page, export folder) for the user's -o/--export-dir, checked before anything is read
    or written: `-o out/` (or an existing folder) means out/report.html, a file is never
    written where a folder is meant, and an unwritable place is an error up front."""
    from .checks import output_dir, output_file

    text = str(out_html)
    page = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or page.is_dir():
        page = page / "report.html"
    output_file(page, "report page")
    folder = Path(export_dir).expanduser() if export_dir is not None else page.with_name(page.stem + "_data")
    output_dir(folder, "figure data folder")
    return page, folder


def export(data: dict[str, Any], folder: Path) -> list[Path]:
    """Write each entry as `<name>.json`, and lists of rows also as `<name>.csv` (with a
    header of the expected columns even when there are no rows)."""
    from .paths import atomic_file

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in data.items():
        path = folder / f"{name}.json"
        with atomic_file(path) as handle:
            json.dump(_clean(rows), handle, indent=1, sort_keys=False, default=str)
            handle.write("\n")
        written.append(_publish(path))
        if isinstance(rows, list):
            flat = [_flat(r) for r in rows]
            columns = list(dict.fromkeys([*COLUMNS.get(name, []), *(k for r in flat for k in r)]))
            path = folder / f"{name}.csv"
            with atomic_file(path) as handle:
                writer = csv.DictWriter(handle, columns, lineterminator="\n")
                writer.writeheader()
                for r in flat:
                    writer.writerow({k: ("" if _nan(v) else csv_cell(v)) for k, v in r.items()})
            written.append(_publish(path))
    return written


# ---------------------------------------------------------------------- the page
def build_report(db_path: str | Path, out_html: str | Path = "report.html", export_dir: str | Path | None = None,
                 *, title: str | None = None, examples: int = 3, attacks_dir: str | Path | None = None) -> Path:
    """Write the HTML report of a results database, and every figure's data as CSV/JSON
    into `export_dir` (default: `<report name>_data/` beside the page). Returns the page."""
    db_path = Path(db_path)
    out_html, export_dir = report_outputs(out_html, export_dir)
    with ResultsStore(db_path, create=False) as db:
        summary = summarise(db)
        if not summary.configs or not summary.tasks:
            raise RefusalScopeError(f"{db_path} holds no results yet", "run `refusalscope sweep` into it first")
        tradeoff = tradeoff_rows(summary)
        deltas = [dict(d) for d in summary.deltas]
        jailbreak = _cells(summary, "jailbreak")
        capability = _cells(summary, "capability")
        conditional = conditional_rows(summary)
        refusal = [dict(c) for c in summary.cells if c["role"] in ("harmful", "benign")]
        examples_rows = example_rows(db, summary, examples)
        prov = provenance(db, summary)
        runs = db.runs()

    style = _Style(summary.configs)
    fig_tradeoff = plot_tradeoff(tradeoff, style)
    fig_delta = plot_vs_strength(deltas, "pair", style, "Δs = refusal(harmful) − refusal(benign)", hline=0.0, ylim=(-1.05, 1.05))
    fig_jail = plot_vs_strength(jailbreak, "task", style, "refusal rate on jailbreak prompts", ylim=(-0.03, 1.03))
    fig_cap = plot_vs_strength(capability, "task", style,
                               lambda r: f"{r['metric']} ({'higher' if r['higher_is_better'] else 'lower'} is better)")
    cond_panels = [r for r in conditional if r["role"] in ("harmful", "benign", "capability", "jailbreak")]
    for r in cond_panels:
        r["panel"] = f"{r['task']} · {r['metric']}"
    fig_cond = plot_vs_strength(cond_panels, "panel", style, lambda r: r["metric"])

    data = {
        "tradeoff": tradeoff, "selective_refusal": deltas, "jailbreak": jailbreak, "capability": capability,
        "conditional": conditional, "refusal": refusal, "summary": summary.cells,
        "examples": [{**{k: v for k, v in e.items() if k != "outputs"}, **{f"output[{o['label']}]": o["output"] for o in e["outputs"]}}
                     for e in examples_rows],
        "provenance": prov,
    }

    # ---- numbers table
    num_rows = [[c["label"], c["task"], c["role"], c["metric"], _ci(c["value"], c["low"], c["high"], c["n"]), c["n"],
                 "" if c["fire_rate"] is None else _ci(c["fire_rate"], c["fire_low"], c["fire_high"], c["fire_n"]),
                 c["config_id"]] for c in summary.cells]
    delta_rows = [[d["label"], d["pair"], _ci(d["value"], d["low"], d["high"], d["n"]), d["n_harmful"], d["n_benign"],
                   d["config_id"]] for d in deltas]
    gate_rows = [[r["label"], r["task"], _ci(r["fire_rate"], r["fire_low"], r["fire_high"], r["fire_n"])]
                 for r in summary.cells if r["fire_rate"] is not None]

    # ---- examples
    ex_parts = []
    for task in dict.fromkeys(e["task"] for e in examples_rows):
        mine = [e for e in examples_rows if e["task"] == task]
        headers = ["prompt"] + [o["label"] for o in mine[0]["outputs"]]
        rows = "".join(
            "<tr><td class=\"gen\">" + _e(e["prompt"]) + "</td>"
            + "".join(f"<td class=\"gen\">{_e(o['output'])}</td>" for o in e["outputs"]) + "</tr>"
            for e in mine
        )
        ex_parts.append(f"<h3>{_e(task)} <span class=\"note\">({_e(mine[0]['role'])})</span></h3><table><thead><tr>"
                        + "".join(f"<th>{_e(h)}</th>" for h in headers) + f"</tr></thead><tbody>{rows}</tbody></table>")

    # ---- provenance
    versions: dict[str, set] = defaultdict(set)
    for r in runs:
        for k, v in (r.get("versions") or {}).items():
            versions[k].add(str(v))
    models = sorted({r["model_id"] for r in runs if r.get("model_id")})
    prov_parts = [
        f"<p>Model{'s' if len(models) != 1 else ''}: {', '.join(f'<code>{_e(m)}</code>' for m in models) or _NA}. "
        f"Database: <code>{_e(db_path.name)}</code>. Report written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        "<h3>Runs</h3>" + _table(["run", "started", "status", "model", "items computed", "items reused", "platform"], [
            [r["run_id"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])), r["status"], r["model_id"],
             r["computed"], r["skipped"], (r.get("environment") or {}).get("platform")] for r in runs]),
        "<h3>Package versions</h3>" + _table(["package", "version(s)"], [[k, ", ".join(sorted(v))] for k, v in sorted(versions.items())]),
        "<h3>Configurations</h3>" + _table(
            ["label", "config id", "method", "strength", "gated", "steering spec id", "interventions", "SAEs", "gate"],
            [[c["label"], c["config_id"], c["method"], _strength(c["strength"]), "yes" if c["conditional"] else "no",
              c["steering_id"] or "—", ", ".join(k for k in c["kinds"] if k) or "—",
              "; ".join(f"{s.get('source') or '(in memory)'} #{(s.get('sha256') or '')[:12]}" for s in c["saes"]) or "—",
              "; ".join(f"{g['kind']} gate (layer {g['layer']}{'' if g['feature'] is None else ', latent ' + str(g['feature'])}) "
                        f"{g['reduce']} > {g['threshold']}" for g in c["gates"]) or "—"]
             for c in prov["configs"]]),
        "<h3>Tasks</h3>" + _table(
            ["task", "role", "dataset", "split", "limit", "seed", "judge", "primary metric", "settings"],
            [[t["task"], t["role"], t["dataset"], t["split"], t["item_limit"] if t["item_limit"] is not None else "all",
              t["seed"], t["judge"] or "—", t["primary_metric"] + (" ↑" if t["higher_is_better"] else " ↓"),
              json.dumps(t["describe"], sort_keys=True, default=str)] for t in prov["tasks"]]),
    ]
    if prov["pairs"]:
        prov_parts.append("<h3>Dataset pairs (Δs)</h3>" + _table(["pair", "harmful task", "benign task"],
                                                                  [[p["name"], p["harmful_task"], p["benign_task"]] for p in prov["pairs"]]))

    n_items = sum(c["n"] for c in summary.cells)
    title = title or f"refusalscope report — {', '.join(models) or db_path.stem}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>{len(summary.configs)} configurations × {len(summary.tasks)} tasks, {n_items} scored items. "
        "Every number is a mean over items with a 95% percentile-bootstrap interval and its sample size n. "
        "Strengths are in each method's own units (e.g. multiples of the features' peak activation, ActAdd "
        "coefficients), so compare methods on the trade-off curve rather than at equal strength. "
        f"The figures' data are in <code>{_e(export_dir.name)}/</code> (CSV and JSON).</p>",
        "<nav><ol>" + "".join(f"<li><a href=\"#{i}\">{_e(t)}</a></li>" for i, t in [
            ("tradeoff", "Safety trade-off"), ("delta", "Selective refusal Δs"), ("jailbreak", "Jailbreak robustness"),
            ("capability", "Capability"), ("conditional", "Conditional vs unconditional"), ("numbers", "All numbers"),
            ("examples", "Example generations"), ("provenance", "Provenance")]) + "</ol></nav>",
        _section("tradeoff", "Safety trade-off: refusal on harmful vs over-refusal on benign prompts",
                 "<p class=\"note\">Up and to the left is better. Numbers next to points are strengths; the star is the "
                 "unsteered model; dash-dot squares are the dense-direction baseline; dashed hollow markers are the gated "
                 "(conditional) versions.</p>", _img(fig_tradeoff, "trade-off curve")),
        _section("delta", "Selective refusal score Δs = refusal(harmful) − refusal(benign)",
                 "<p class=\"note\">Per dataset pair, against steering strength; the dotted line and band are the "
                 "unsteered model.</p>", _img(fig_delta, "selective refusal")),
        _section("jailbreak", "Jailbreak robustness", "<p class=\"note\">Refusal rate on jailbreak artifact prompts "
                 "(higher is more robust).</p>", _img(fig_jail, "jailbreak robustness")),
        _section("capability", "Capability against steering strength", _img(fig_cap, "capability")),
        _section("conditional", "Conditional vs unconditional steering",
                 "<p class=\"note\">Solid: steer every prompt; dashed: steer only where the gate fires. The gate's fire "
                 "rate per task says on what share of inputs the gated version paid the steering's cost.</p>",
                 _img(fig_cond, "conditional vs unconditional"),
                 _table(["configuration", "task", "gate fire rate"], gate_rows) if gate_rows else ""),
        _section("numbers", "All numbers",
                 _table(["configuration", "task", "role", "metric", "mean [95% CI] (n)", "n", "gate fire rate", "config id"],
                        num_rows, {4, 5, 6}),
                 ("<h3>Δs per dataset pair</h3>" + _table(["configuration", "pair", "Δs [95% CI] (n)", "n harmful", "n benign",
                                                           "config id"], delta_rows, {2, 3, 4})) if delta_rows else ""),
        _section("examples", "Example generations", "<p class=\"note\">The same prompts, unsteered and at each method's "
                 "strongest setting.</p>", *(ex_parts or ["<p class=\"note\">No stored generations.</p>"])),
        _section("provenance", "Provenance", *prov_parts),
    ]
    if attacks_dir is not None:  # jailbreak robustness from `refusalscope attack` folders (attacks.report)
        from .attacks.report import robustness_section

        body.insert(-3, robustness_section(attacks_dir))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    from .paths import atomic_file

    export(data, export_dir)  # only now: a failure above must not leave exports without their page
    with atomic_file(out_html) as handle:
        handle.write(page)
    return _publish(out_html)
