"""A figure's legend fits inside the figure: a one-panel figure (the quick profile's
jailbreak robustness, one task) with long method labels cut its three-column legend off."""

from __future__ import annotations

from refusalscope import report


def test_one_panel_legend_with_long_labels_fits_the_figure(monkeypatch):
    drawn = []
    monkeypatch.setattr(report, "_png", lambda fig: drawn.append(fig) or "png")
    configs = [{"name": "features", "method": "features:cossim+ig", "family": "features"},
               {"name": "refusal direction", "method": "dense:actadd", "family": "dense"},
               {"name": "none", "method": "none", "family": "none"}]
    rows = [{"task": "jailbreak-gcg", "name": c["name"], "family": c["family"], "conditional": cond,
             "strength": s, "value": 0.5, "low": 0.4, "high": 0.6, "metric": "refused"}
            for c in configs for cond in (False, True) for s in ((None,) if c["family"] == "none" else (1.0, 2.0))]
    assert report.plot_vs_strength(rows, "task", report._Style(configs), "refusal rate") == "png"
    fig = drawn[0]
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert len(fig.legends[0].get_texts()) == 5  # two methods × plain/gated, and the unsteered line
    assert legend.x0 >= 0 and legend.x1 <= fig.bbox.width
