"""A figure's legend fits inside the figure: a one-panel figure (the quick profile's
jailbreak robustness, one task) with long method labels cut its three-column legend off."""

from __future__ import annotations

from refusalscope import report
from refusalscope.evaluation.rows import ConfigRow
from refusalscope.report import StrengthPoint
from refusalscope.stats import Estimate


def test_one_panel_legend_with_long_labels_fits_the_figure(monkeypatch):
    drawn = []
    monkeypatch.setattr(report, "_png", lambda fig: drawn.append(fig) or "png")
    methods = [
        ("features", "features:cossim+ig", "features"),
        ("refusal direction", "dense:actadd", "dense"),
        ("none", "none", "none"),
    ]
    configs = [
        ConfigRow(f"cfg-{name}-{cond}-{s}", name, name, method, family, s, cond)
        for name, method, family in methods
        for cond in (False, True)
        for s in ((None,) if family == "none" else (1.0, 2.0))
    ]
    points = [StrengthPoint("jailbreak-gcg", c, Estimate(0.5, 0.4, 0.6, 10), "refused") for c in configs]
    assert report.plot_vs_strength(points, report.FigureStyle(configs), "refusal rate") == "png"
    fig = drawn[0]
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert len(fig.legends[0].get_texts()) == 5  # two methods × plain/gated, and the unsteered line
    assert legend.x0 >= 0 and legend.x1 <= fig.bbox.width
