"""The HTML report: one self-contained page from a results database.

    from refusalscope.report import build_report
    build_report("results.db", "report.html")        # + report_data/*.csv, *.json

Sections (each with one figure where the sweep has the data for it):

0. the headline table (`evaluation.headline`): the unsteered model and each method at its
   best Δs point on the headline pair, capability beside it with paired changes, and
   whether the issue's target is met; then the Pareto figure: harmful refusal against
   over-refusal and against each capability task's paired cost, one point per
   configuration with CI error bars and the frontier drawn;
1. the safety trade-off: refusal on harmful prompts (y) against over-refusal on benign
   prompts (x), one line per steering method across strengths, error bars from the
   bootstrap CIs, the unsteered model as a star and the dense-direction baseline dashed;
2. the selective refusal score Δs per dataset pair against strength;
3. jailbreak robustness (refusal on jailbreak artifacts) against strength;
4. capability (each benchmark's primary metric) against strength;
5. conditional vs unconditional steering, with the gate's fire rates;
6. every number with its CI and n; 7. example generations side by side; 8. provenance.

Tasks that only hold example generations (`examples-…`, a few items) appear in section 7
only: plotted, they looked like a dataset of two prompts.

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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .errors import RefusalScopeError
from .evaluation.deltas import Delta
from .evaluation.first_token_check import FirstTokenAgreement, pooled_agreement
from .evaluation.headline import (
    LOSS_METRICS,
    Headline,
    ParetoPoint,
    build_headline,
    is_example_task,
    measured,
    pareto_points,
)
from .evaluation.pareto import TARGET, frontier
from .evaluation.rows import ConfigRow, TaskRow, read_pairs, read_runs
from .evaluation.store import CONFIG_KEY_COLUMNS, ResultsStore
from .evaluation.summary import Cell, Summary, summarise
from .stats import Estimate

RATE_METRICS = {"refused", "correct", "p_true", "exact", "f1", "accuracy", "acc", "em", "gate_fired"}
_NA = "n/a"
ROLE_ORDER = {"harmful": 0, "benign": 1, "jailbreak": 2, "capability": 3}


# ---------------------------------------------------------------------- figure data
def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class _OnePoint(Protocol):
    """A point of a figure's line: it belongs to one configuration."""

    @property
    def config(self) -> ConfigRow: ...


@dataclass(frozen=True)
class TradeoffPoint:
    """One configuration on one dataset pair: refusal on the harmful task (y) against
    over-refusal on the benign task (x), each the task's cell with its CI and n."""

    pair: str
    harmful: Cell
    benign: Cell

    @property
    def config(self) -> ConfigRow:
        return self.harmful.config

    def row(self) -> dict[str, Any]:
        h, b = self.harmful.estimate, self.benign.estimate
        return {
            "pair": self.pair,
            **self.config.key(),
            "harmful_task": self.harmful.task.name,
            "benign_task": self.benign.task.name,
            "refusal_harmful": h.value,
            "refusal_harmful_low": h.low,
            "refusal_harmful_high": h.high,
            "n_harmful": h.n,
            "refusal_benign": b.value,
            "refusal_benign_low": b.low,
            "refusal_benign_high": b.high,
            "n_benign": b.n,
        }


@dataclass(frozen=True)
class StrengthPoint:
    """One configuration's estimate in one panel of a figure against steering strength."""

    panel: str
    config: ConfigRow
    estimate: Estimate
    metric: str | None = None
    higher_is_better: bool | None = None

    @classmethod
    def of_cell(cls, cell: Cell, panel: str | None = None) -> StrengthPoint:
        """A cell in the panel of its task (or `panel`)."""
        return cls(
            cell.task.name if panel is None else panel,
            cell.config,
            cell.estimate,
            cell.metric,
            cell.task.higher_is_better,
        )

    @classmethod
    def of_delta(cls, delta: Delta) -> StrengthPoint:
        """Δs in the panel of its dataset pair."""
        return cls(delta.pair.name, delta.config, delta.estimate)


@dataclass(frozen=True)
class ExampleOutput:
    label: str
    config_id: str
    output: str | None


@dataclass(frozen=True)
class Example:
    """One prompt of a task answered by several configurations."""

    task: TaskRow
    item_id: str
    prompt: str | None
    outputs: list[ExampleOutput]

    def row(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "role": self.task.role,
            "item_id": self.item_id,
            "prompt": self.prompt,
            **{f"output[{o.label}]": o.output for o in self.outputs},
        }


def tradeoff_rows(summary: Summary) -> list[TradeoffPoint]:
    """One point per (dataset pair, configuration): x = over-refusal on the benign task,
    y = refusal on the harmful task, each with its CI and n."""
    cells = {(c.config.config_id, c.task.name): c for c in summary.cells}
    pairs = list(dict.fromkeys((d.pair.name, d.pair.harmful_task, d.pair.benign_task) for d in summary.deltas))
    if not pairs:  # no registered pair: the first harmful and the first benign task
        harmful = [t.name for t in summary.tasks if t.role == "harmful"]
        benign = [t.name for t in summary.tasks if t.role == "benign"]
        if harmful and benign:
            pairs.append((f"{harmful[0]} / {benign[0]}", harmful[0], benign[0]))
    out = []
    for name, harm, ben in pairs:
        for cfg in summary.configs:
            h, b = cells.get((cfg.config_id, harm)), cells.get((cfg.config_id, ben))
            if h is not None and b is not None:
                out.append(TradeoffPoint(name, h, b))
    return out


def role_cells(summary: Summary, *roles: str) -> list[Cell]:
    """The cells of tasks with one of `roles`."""
    return [c for c in summary.cells if c.task.role in roles]


def conditional_rows(summary: Summary) -> list[Cell]:
    """Cells of the methods run both gated and ungated (plus the unsteered model)."""
    modes = defaultdict(set)
    for c in summary.configs:
        modes[c.name].add(c.conditional)
    both = {m for m, s in modes.items() if s == {False, True}}
    return [c for c in summary.cells if c.config.name in both or c.config.unsteered]


def example_rows(db: ResultsStore, summary: Summary, per_task: int = 3, max_columns: int = 6) -> list[Example]:
    """The same prompts answered by the unsteered model and by the strongest setting of
    each method (gated and ungated), for each task that keeps generations."""
    configs = summary.configs
    base = next((c for c in configs if c.unsteered), configs[0] if configs else None)
    if base is None:
        return []

    def size(c: ConfigRow) -> float:
        return -math.inf if c.strength is None else abs(c.strength)

    strongest: dict[tuple[str, bool], ConfigRow] = {}
    for c in configs:
        if c is base:
            continue
        key = (c.name, c.conditional)
        if key not in strongest or size(c) > size(strongest[key]):
            strongest[key] = c
    columns = [base] + list(strongest.values())[: max_columns - 1]
    out = []
    for t in sorted(summary.tasks, key=lambda t: ROLE_ORDER.get(t.role, 9)):
        baseline = db.outputs(base.config_id, t.name)
        ids = [i for i, r in baseline.items() if r["output"] is not None]
        if not ids:
            continue
        others = {c.config_id: db.outputs(c.config_id, t.name, ids) for c in columns[1:]}
        shared = [i for i in ids if all(i in o for o in others.values())][:per_task]
        for item_id in shared:
            outputs = [
                ExampleOutput(c.label, c.config_id, (baseline if c is base else others[c.config_id])[item_id]["output"])
                for c in columns
            ]
            out.append(Example(t, item_id, baseline[item_id]["prompt"], outputs))
    return out


def _gates(items: Any) -> list[dict[str, Any]]:
    """The conditional gates in a steering spec's interventions (spec JSON, as stored)."""
    out = []
    for item in items or []:
        if item.get("kind") == "conditional":
            g = item.get("gate", {})
            out.append(
                {
                    "kind": g.get("kind"),
                    "threshold": g.get("threshold"),
                    "reduce": g.get("reduce"),
                    "layer": g.get("layer", (g.get("sae") or {}).get("layer")),
                    "feature": g.get("feature"),
                }
            )
            out.extend(_gates(item.get("interventions")))
    return out


def _kinds(config: ConfigRow) -> list[str]:
    """The intervention kinds at the top of a configuration's steering spec."""
    return sorted({i.get("kind") for i in config.spec.get("interventions", [])})


def provenance(db: ResultsStore, summary: Summary) -> dict[str, Any]:
    """What produced the numbers (runs, configurations with their SAEs and gates, tasks,
    pairs), as the report's provenance.json."""
    return {
        "runs": [
            {
                "run_id": r.run_id,
                "started": r.started,
                "finished": r.finished,
                "status": r.status,
                "model_id": r.model_id,
                "computed": r.computed,
                "skipped": r.skipped,
                "note": r.note,
                "versions": r.versions,
                "model": r.model,
                "platform": r.platform,
            }
            for r in read_runs(db)
        ],
        "configs": [
            {
                **c.key(),
                "steering_id": c.steering_id,
                "model_id": c.model_id,
                "saes": c.saes,
                "gates": _gates(c.spec.get("interventions")),
                "kinds": _kinds(c),
            }
            for c in summary.configs
        ],
        "tasks": [
            {
                "task": t.name,
                "role": t.role,
                "dataset": t.dataset,
                "split": t.split,
                "item_limit": t.item_limit,
                "seed": t.seed,
                "judge": t.judge,
                "primary_metric": t.primary_metric,
                "higher_is_better": t.higher_is_better,
                "describe": t.describe,
            }
            for t in summary.tasks
        ],
        "pairs": [p.row() for p in read_pairs(db)],
    }


# ---------------------------------------------------------------------- plotting
P = TypeVar("P", bound=_OnePoint)


class FigureStyle:
    """One colour per method across every figure; dashed + hollow when gated; squares for
    the dense baseline; the unsteered model grey."""

    def __init__(self, configs: Sequence[ConfigRow]):
        from matplotlib import colormaps

        lines = {c.name: c.method for c in configs if not c.unsteered}
        names = sorted(lines, key=lambda n: (lines[n].split(":")[0] == "dense", n))
        cmap = colormaps["tab10"]
        self.colour = {n: cmap(i % 10) for i, n in enumerate(names)}
        self.method = lines

    def kw(self, name: str, family: str, conditional: bool) -> dict[str, Any]:
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


def _group_lines(rows: Sequence[P]) -> dict[tuple[str, bool], list[P]]:
    """The steered points of each (method, gated) line, by strength."""
    lines: dict[tuple[str, bool], list[P]] = defaultdict(list)
    for r in rows:
        if r.config.unsteered:
            continue
        lines[r.config.name, r.config.conditional].append(r)
    for key in lines:
        lines[key].sort(key=lambda r: (r.config.strength is None, r.config.strength or 0.0))
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
        fig.legend(
            [handles[lab] for lab in labels],
            labels,
            loc="lower center",
            ncol=ncol,
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, 0.0),
        )
        fig._legend_inches = 0.22 * math.ceil(len(labels) / ncol) + 0.1


def plot_tradeoff(points: list[TradeoffPoint], style: FigureStyle) -> str | None:
    pairs = list(dict.fromkeys(p.pair for p in points))
    if not pairs:
        return None
    fig, axes = _figure(len(pairs), 4.6, 4.2)
    for ax, pair in zip(axes, pairs):
        mine = [p for p in points if p.pair == pair]
        for (method, cond), line in _group_lines(mine).items():
            kw = style.kw(method, line[0].config.family, cond)
            xs = [p.benign.estimate.value for p in line]
            ys = [p.harmful.estimate.value for p in line]
            ax.errorbar(
                xs,
                ys,
                xerr=_err([p.benign.estimate for p in line]),
                yerr=_err([p.harmful.estimate for p in line]),
                capsize=2,
                elinewidth=0.8,
                **kw,
            )
            for p in line:
                if p.config.strength is not None:
                    ax.annotate(
                        f"{p.config.strength:g}",
                        (p.benign.estimate.value, p.harmful.estimate.value),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                        color=kw["color"],
                    )
        for p in mine:
            if p.config.unsteered:
                ax.errorbar(
                    [p.benign.estimate.value],
                    [p.harmful.estimate.value],
                    xerr=_err([p.benign.estimate]),
                    yerr=_err([p.harmful.estimate]),
                    marker="*",
                    markersize=14,
                    color="black",
                    linestyle="none",
                    capsize=2,
                    label="unsteered",
                )
        ax.plot([0, 1], [0, 1], color="0.85", linewidth=0.8, zorder=0)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("over-refusal on benign prompts")
        ax.set_ylabel("refusal on harmful prompts")
        ax.set_title(pair, fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _png(fig)


def plot_pareto(
    pair: str | None, points: list[ParetoPoint], style: FigureStyle, losses: Collection[str] = ()
) -> str | None:
    """Harmful refusal (y) against over-refusal and against each capability task's paired
    cost (x), one point per configuration with its CIs as error bars, the Pareto frontier
    (no other configuration refuses more harmful prompts at a lower cost) drawn in grey."""
    if not points:
        return None
    panels: list[tuple[str, str]] = [("over-refusal", f"over-refusal on benign prompts ({pair})")]
    for task in dict.fromkeys(t for p in points for t in p.costs):
        what = "relative loss increase" if task in losses else "drop"
        panels.append((task, f"{task}: {what} vs unsteered (paired)"))
    fig, axes = _figure(len(panels), 4.4, 3.8)
    for ax, (key, xlabel) in zip(axes, panels):
        xs: list[float] = []
        ys: list[float] = []
        mine: list[ParetoPoint] = []
        for p in points:
            x = p.benign if key == "over-refusal" else p.costs.get(key)
            if x is None or _nan(x.value) or _nan(p.harmful.value):
                continue
            mine.append(p)
            xs.append(x.value)
            ys.append(p.harmful.value)
            if p.config.unsteered:
                kw: dict[str, Any] = {"marker": "*", "markersize": 13, "color": "black", "label": "unsteered"}
            else:
                kw = style.kw(p.config.name, p.config.family, p.config.conditional)
                kw["linestyle"] = "none"
            ax.errorbar([x.value], [p.harmful.value], xerr=_err([x]), yerr=_err([p.harmful]), capsize=2, **kw)
            if p.config.strength is not None:
                ax.annotate(
                    f"{p.config.strength:g}",
                    (x.value, p.harmful.value),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color=kw.get("color", "0.3"),
                )
        front = frontier(list(zip(xs, ys)))
        if len(front) > 1:
            ax.step(
                [xs[i] for i in front],
                [ys[i] for i in front],
                where="post",
                color="0.55",
                linewidth=1.0,
                zorder=0,
                label="Pareto frontier",
            )
        if key == "over-refusal":
            ax.set_xlim(-0.03, 1.03)
        else:
            ax.axvline(0.0, color="0.8", linewidth=0.8, zorder=0)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("refusal on harmful prompts")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _png(fig)


def _err(estimates: Sequence[Estimate]) -> list[list[float]]:
    """Error bar lengths below and above each value (0 where the CI is missing)."""
    lo, hi = [], []
    for e in estimates:
        lo.append(0.0 if _nan(e.low) or _nan(e.value) else max(e.value - e.low, 0.0))
        hi.append(0.0 if _nan(e.high) or _nan(e.value) else max(e.high - e.value, 0.0))
    return [lo, hi]


def plot_vs_strength(
    points: list[StrengthPoint],
    style: FigureStyle,
    ylabel: str | Callable[[StrengthPoint], str],
    hline: float | None = None,
    ylim: tuple[float, float] | str | None = "auto",
) -> str | None:
    """One panel per `panel`, x = strength, a line per (method, gated), the unsteered
    value as a grey band."""
    panels = list(dict.fromkeys(p.panel for p in points))
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, panel in zip(axes, panels):
        mine = [p for p in points if p.panel == panel]
        for (method, cond), line in _group_lines(mine).items():
            line = [p for p in line if p.config.strength is not None] or line
            xs = [p.config.strength if p.config.strength is not None else 0.0 for p in line]
            ax.errorbar(
                xs,
                [p.estimate.value for p in line],
                yerr=_err([p.estimate for p in line]),
                capsize=2,
                elinewidth=0.8,
                **style.kw(method, line[0].config.family, cond),
            )
        for p in mine:
            if p.config.unsteered:
                ax.axhline(p.estimate.value, color="0.4", linestyle=":", linewidth=1.2, label="unsteered")
                if not _nan(p.estimate.low) and not _nan(p.estimate.high):
                    ax.axhspan(p.estimate.low, p.estimate.high, color="0.6", alpha=0.15, linewidth=0)
        if hline is not None:
            ax.axhline(hline, color="0.8", linewidth=0.8, zorder=0)
        if ylim == "auto":
            if all(p.metric in RATE_METRICS for p in mine):
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


def _cell_panel(c: Cell) -> str:
    return f"{c.task.name} · {c.metric}"


def _ci(e: Estimate) -> str:
    if _nan(e.value):
        return _NA
    return f"{e.value:.3f} [{_fmt(e.low)}, {_fmt(e.high)}] (n={e.n})"


def _table(headers: list[str], rows: list[list[Any]], numeric: Collection[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f'<p class="note">No data for this figure in this database ({_e(alt)}).</p>'
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _strength(v) -> str:
    return "—" if v is None else f"{v:g}"


def _section(ident: str, title: str, *parts: str) -> str:
    return f'<section id="{ident}"><h2>{_e(title)}</h2>{"".join(parts)}</section>'


def _change(c: Any) -> str:
    e = c.change
    if e.n == 0 or _nan(e.value):
        return _NA
    if c.relative:
        return f"{e.value:+.1%} [{e.low:+.1%}, {e.high:+.1%}]"
    return f"{e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"


def headline_section(headline: Headline) -> str:
    """The table at the top of the report: unsteered vs each method at its best Δs point."""
    if not headline.rows:
        return '<p class="note">No dataset pair with results on both sides: no headline.</p>'
    headers = ["method", "best Δs point", "harmful refusal", "over-refusal", "Δs"]
    for task in headline.capability_tasks:
        headers += [task, f"{task} change (paired)"]
    headers.append("target met")
    rows = []
    for r in headline.rows:
        by_task = {c.task: c for c in r.capability}
        row: list[Any] = [
            r.method,
            "—" if r.config.unsteered else r.config.label,
            _ci(r.harmful.estimate),
            _ci(r.benign.estimate),
            _ci(r.delta.estimate),
        ]
        for task in headline.capability_tasks:
            c = by_task.get(task)
            row += [_NA, _NA] if c is None else [_ci(c.cell.estimate), "—" if r.config.unsteered else _change(c)]
        row.append("—" if r.target is None else ("yes" if r.target else "no"))
        rows.append(row)
    first = headline.rows[0]
    target = (
        f"Target (issue #13): harmful refusal +{TARGET['harmful_rise']:.2f} or more over unsteered, over-refusal "
        f"+{TARGET['benign_rise']:.2f} at most, text loss +{TARGET['loss_increase']:.0%} at most, multiple choice "
        "unchanged (the paired interval of its change includes 0)."
    )
    return (
        f'<p class="note">Pair: <b>{_e(headline.pair)}</b> (harmful: {_e(first.harmful.task.name)}, benign: '
        f"{_e(first.benign.task.name)}). Each method (gated and ungated apart) at the strength with its highest Δs; "
        "capability changes are paired over the same items (loss: relative change). "
        f"{_e(target)} Rates are point estimates with 95% bootstrap intervals and n.</p>"
        + _table(headers, rows, set(range(2, len(headers) - 1)))
    )


def first_token_section(checks: Sequence[FirstTokenAgreement]) -> str:
    """Where refusal was judged by the first-token proxy: its agreement with the reply judge
    on the sampled items of each configuration (steering can break the link)."""
    if not checks:
        return ""
    flagged = sum(a.flagged for a in checks)
    rows = [
        [
            a.label,
            _ci(a.agreement),
            _fmt(a.first_token_rate, 2),
            _fmt(a.reply_rate, 2),
            "LOW: judge replies instead" if a.flagged else "ok",
        ]
        for a in checks
    ]
    return (
        "<h3>First-token judge against generated replies</h3>"
        f'<p class="note">Refusal rates above come from the first-token proxy; on a sample of items per '
        "configuration (pooled over its refusal tasks) the reply was also generated and judged. "
        f"{flagged} of {len(checks)} configurations agree on less than 90% of their checked items (flagged): "
        "read their refusal rates with care.</p>"
        + _table(
            ["configuration", "agreement [95% CI] (n)", "first-token rate", "reply rate", "check"],
            rows,
            {1, 2, 3},
        )
    )


# ---------------------------------------------------------------------- exports
def _flat(row: dict) -> dict:
    return {
        k: (json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v) for k, v in row.items()
    }


def _clean(obj):
    """JSON-safe: NaN becomes null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


CELL_COLUMNS = [
    *CONFIG_KEY_COLUMNS,
    "task",
    "role",
    "dataset",
    "metric",
    "higher_is_better",
    "value",
    "low",
    "high",
    "n",
    "fire_rate",
    "fire_low",
    "fire_high",
    "fire_n",
]
COLUMNS = {
    "tradeoff": [
        "pair",
        *CONFIG_KEY_COLUMNS,
        "harmful_task",
        "benign_task",
        "refusal_harmful",
        "refusal_harmful_low",
        "refusal_harmful_high",
        "n_harmful",
        "refusal_benign",
        "refusal_benign_low",
        "refusal_benign_high",
        "n_benign",
    ],
    "selective_refusal": [
        *CONFIG_KEY_COLUMNS,
        "pair",
        "harmful_task",
        "benign_task",
        "value",
        "low",
        "high",
        "n",
        "n_harmful",
        "n_benign",
        "refusal_harmful",
        "refusal_benign",
    ],
    "jailbreak": CELL_COLUMNS,
    "capability": CELL_COLUMNS,
    "conditional": CELL_COLUMNS,
    "refusal": CELL_COLUMNS,
    "summary": CELL_COLUMNS,
    "examples": ["task", "role", "item_id", "prompt"],
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
def build_report(
    db_path: str | Path,
    out_html: str | Path = "report.html",
    export_dir: str | Path | None = None,
    *,
    title: str | None = None,
    examples: int = 3,
    attacks_dir: str | Path | None = None,
) -> Path:
    """Write the HTML report of a results database, and every figure's data as CSV/JSON
    into `export_dir` (default: `<report name>_data/` beside the page). Returns the page."""
    db_path = Path(db_path)
    out_html, export_dir = report_outputs(out_html, export_dir)
    with ResultsStore(db_path, create=False) as db:
        everything = summarise(db)
        if not everything.configs or not everything.tasks:
            raise RefusalScopeError(f"{db_path} holds no results yet", "run `refusalscope sweep` into it first")
        summary = measured(everything)  # example-only tasks stay out of figures, Δs and tables
        headline = build_headline(db, everything)
        pareto_pair, pareto = pareto_points(db, everything)
        checks = pooled_agreement(db, skip=is_example_task)
        tradeoff = tradeoff_rows(summary)
        deltas = summary.deltas
        jailbreak = role_cells(summary, "jailbreak")
        capability = role_cells(summary, "capability")
        conditional = conditional_rows(summary)
        refusal = role_cells(summary, "harmful", "benign")
        examples_rows = example_rows(db, everything, examples)
        prov = provenance(db, everything)
        runs = read_runs(db)
        pairs = read_pairs(db)

    style = FigureStyle(summary.configs)
    losses = {t.name for t in summary.tasks if t.primary_metric in LOSS_METRICS}
    fig_pareto = plot_pareto(pareto_pair, pareto, style, losses)
    fig_tradeoff = plot_tradeoff(tradeoff, style)
    fig_delta = plot_vs_strength(
        [StrengthPoint.of_delta(d) for d in deltas],
        style,
        "Δs = refusal(harmful) − refusal(benign)",
        hline=0.0,
        ylim=(-1.05, 1.05),
    )
    fig_jail = plot_vs_strength(
        [StrengthPoint.of_cell(c) for c in jailbreak], style, "refusal rate on jailbreak prompts", ylim=(-0.03, 1.03)
    )
    fig_cap = plot_vs_strength(
        [StrengthPoint.of_cell(c) for c in capability],
        style,
        lambda p: f"{p.metric} ({'higher' if p.higher_is_better else 'lower'} is better)",
    )
    fig_cond = plot_vs_strength(
        [StrengthPoint.of_cell(c, _cell_panel(c)) for c in conditional if c.task.role in ROLE_ORDER],
        style,
        lambda p: str(p.metric),
    )

    data = {
        "headline": [r.row() for r in headline.rows],
        "first_token_check": [a.to_dict() for a in checks],
        "pareto": [p.row() for p in pareto],
        "tradeoff": [p.row() for p in tradeoff],
        "selective_refusal": [d.row() for d in deltas],
        "jailbreak": [c.row() for c in jailbreak],
        "capability": [c.row() for c in capability],
        "conditional": [
            {**c.row(), "panel": _cell_panel(c)} if c.task.role in ROLE_ORDER else c.row() for c in conditional
        ],
        "refusal": [c.row() for c in refusal],
        "summary": [c.row() for c in summary.cells],
        "examples": [e.row() for e in examples_rows],
        "provenance": prov,
    }

    # ---- numbers table
    num_rows = [
        [
            c.config.label,
            c.task.name,
            c.task.role,
            c.metric,
            _ci(c.estimate),
            c.estimate.n,
            "" if c.fire is None else _ci(c.fire),
            c.config.config_id,
        ]
        for c in summary.cells
    ]
    delta_rows = [
        [d.config.label, d.pair.name, _ci(d.estimate), d.n_harmful, d.n_benign, d.config.config_id] for d in deltas
    ]
    gate_rows = [[c.config.label, c.task.name, _ci(c.fire)] for c in summary.cells if c.fire is not None]

    # ---- examples
    ex_parts = []
    for task in dict.fromkeys(e.task.name for e in examples_rows):
        mine = [e for e in examples_rows if e.task.name == task]
        headers = ["prompt"] + [o.label for o in mine[0].outputs]
        rows = "".join(
            '<tr><td class="gen">'
            + _e(e.prompt)
            + "</td>"
            + "".join(f'<td class="gen">{_e(o.output)}</td>' for o in e.outputs)
            + "</tr>"
            for e in mine
        )
        ex_parts.append(
            f'<h3>{_e(task)} <span class="note">({_e(mine[0].task.role)})</span></h3><table><thead><tr>'
            + "".join(f"<th>{_e(h)}</th>" for h in headers)
            + f"</tr></thead><tbody>{rows}</tbody></table>"
        )

    # ---- provenance
    versions: dict[str, set] = defaultdict(set)
    for r in runs:
        for k, v in (r.versions or {}).items():
            versions[k].add(str(v))
    models = sorted({r.model_id for r in runs if r.model_id})
    prov_parts = [
        f"<p>Model{'s' if len(models) != 1 else ''}: {', '.join(f'<code>{_e(m)}</code>' for m in models) or _NA}. "
        f"Database: <code>{_e(db_path.name)}</code>. Report written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
        "<h3>Runs</h3>"
        + _table(
            ["run", "started", "status", "model", "items computed", "items reused", "platform"],
            [
                [
                    r.run_id,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started)),
                    r.status,
                    r.model_id,
                    r.computed,
                    r.skipped,
                    r.platform,
                ]
                for r in runs
            ],
        ),
        "<h3>Package versions</h3>"
        + _table(["package", "version(s)"], [[k, ", ".join(sorted(v))] for k, v in sorted(versions.items())]),
        "<h3>Configurations</h3>"
        + _table(
            ["label", "config id", "method", "strength", "gated", "steering spec id", "interventions", "SAEs", "gate"],
            [
                [
                    c.label,
                    c.config_id,
                    c.method,
                    _strength(c.strength),
                    "yes" if c.conditional else "no",
                    c.steering_id or "—",
                    ", ".join(k for k in _kinds(c) if k) or "—",
                    "; ".join(f"{s.get('source') or '(in memory)'} #{(s.get('sha256') or '')[:12]}" for s in c.saes)
                    or "—",
                    "; ".join(
                        f"{g['kind']} gate (layer {g['layer']}{'' if g['feature'] is None else ', latent ' + str(g['feature'])}) "
                        f"{g['reduce']} > {g['threshold']}"
                        for g in _gates(c.spec.get("interventions"))
                    )
                    or "—",
                ]
                for c in summary.configs
            ],
        ),
        "<h3>Tasks</h3>"
        + _table(
            ["task", "role", "dataset", "split", "limit", "seed", "judge", "primary metric", "settings"],
            [
                [
                    t.name,
                    t.role,
                    t.dataset,
                    t.split,
                    t.item_limit if t.item_limit is not None else "all",
                    t.seed,
                    t.judge or "—",
                    t.primary_metric + (" ↑" if t.higher_is_better else " ↓"),
                    json.dumps(t.describe, sort_keys=True, default=str),
                ]
                for t in summary.tasks
            ],
        ),
    ]
    if pairs:
        prov_parts.append(
            "<h3>Dataset pairs (Δs)</h3>"
            + _table(["pair", "harmful task", "benign task"], [[p.name, p.harmful_task, p.benign_task] for p in pairs])
        )

    n_items = sum(c.estimate.n for c in summary.cells)
    title = title or f"refusalscope report — {', '.join(models) or db_path.stem}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>{len(summary.configs)} configurations × {len(summary.tasks)} tasks, {n_items} scored items. "
        "Every number is a mean over items with a 95% percentile-bootstrap interval and its sample size n. "
        "Strengths are in each method's own units (e.g. multiples of the features' peak activation, ActAdd "
        "coefficients), so compare methods on the trade-off curve rather than at equal strength. "
        f"The figures' data are in <code>{_e(export_dir.name)}/</code> (CSV and JSON).</p>",
        "<nav><ol>"
        + "".join(
            f'<li><a href="#{i}">{_e(t)}</a></li>'
            for i, t in [
                ("headline", "Headline"),
                ("pareto", "Pareto figure"),
                ("tradeoff", "Safety trade-off"),
                ("delta", "Selective refusal Δs"),
                ("jailbreak", "Jailbreak robustness"),
                ("capability", "Capability"),
                ("conditional", "Conditional vs unconditional"),
                ("numbers", "All numbers"),
                ("examples", "Example generations"),
                ("provenance", "Provenance"),
            ]
        )
        + "</ol></nav>",
        _section(
            "headline",
            "Headline: each method at its best Δs point",
            headline_section(headline),
            first_token_section(checks),
        ),
        _section(
            "pareto",
            "Pareto figure: harmful refusal against over-refusal and against capability cost",
            '<p class="note">One point per configuration, with 95% intervals as error bars (capability costs are '
            "paired against the unsteered model). Numbers next to points are strengths; the star is the unsteered "
            "model; hollow markers are gated. The grey step line is the Pareto frontier: no configuration refuses "
            "more harmful prompts at a lower cost. Up and to the left is better.</p>",
            _img(fig_pareto, "Pareto figure"),
        ),
        _section(
            "tradeoff",
            "Safety trade-off: refusal on harmful vs over-refusal on benign prompts",
            '<p class="note">Up and to the left is better. Numbers next to points are strengths; the star is the '
            "unsteered model; dash-dot squares are the dense-direction baseline; dashed hollow markers are the gated "
            "(conditional) versions.</p>",
            _img(fig_tradeoff, "trade-off curve"),
        ),
        _section(
            "delta",
            "Selective refusal score Δs = refusal(harmful) − refusal(benign)",
            '<p class="note">Per dataset pair, against steering strength; the dotted line and band are the '
            "unsteered model.</p>",
            _img(fig_delta, "selective refusal"),
        ),
        _section(
            "jailbreak",
            "Jailbreak robustness",
            '<p class="note">Refusal rate on jailbreak artifact prompts (higher is more robust).</p>',
            _img(fig_jail, "jailbreak robustness"),
        ),
        _section("capability", "Capability against steering strength", _img(fig_cap, "capability")),
        _section(
            "conditional",
            "Conditional vs unconditional steering",
            '<p class="note">Solid: steer every prompt; dashed: steer only where the gate fires. The gate\'s fire '
            "rate per task says on what share of inputs the gated version paid the steering's cost.</p>",
            _img(fig_cond, "conditional vs unconditional"),
            _table(["configuration", "task", "gate fire rate"], gate_rows) if gate_rows else "",
        ),
        _section(
            "numbers",
            "All numbers",
            _table(
                ["configuration", "task", "role", "metric", "mean [95% CI] (n)", "n", "gate fire rate", "config id"],
                num_rows,
                {4, 5, 6},
            ),
            (
                "<h3>Δs per dataset pair</h3>"
                + _table(
                    ["configuration", "pair", "Δs [95% CI] (n)", "n harmful", "n benign", "config id"],
                    delta_rows,
                    {2, 3, 4},
                )
            )
            if delta_rows
            else "",
        ),
        _section(
            "examples",
            "Example generations",
            '<p class="note">The same prompts, unsteered and at each method\'s strongest setting. Tasks named '
            "<code>examples-…</code> hold only these few replies; they are left out of every figure and table.</p>",
            *(ex_parts or ['<p class="note">No stored generations.</p>']),
        ),
        _section("provenance", "Provenance", *prov_parts),
    ]
    if attacks_dir is not None:  # jailbreak robustness from `refusalscope attack` folders (attacks.report)
        from .attacks.report import robustness_section

        body.insert(-3, robustness_section(attacks_dir))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    from .paths import atomic_file

    export(data, export_dir)  # only now: a failure above must not leave exports without their page
    with atomic_file(out_html) as handle:
        handle.write(page)
    return _publish(out_html)
