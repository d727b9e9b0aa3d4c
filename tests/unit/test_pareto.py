"""The Pareto frontier, the headline table and the figure (evaluation/pareto.py), on
hand-made comparison data whose right answers are known."""

import math

import pytest

from refusalscope.evaluation.pareto import (
    frontier,
    headline_csv,
    headline_markdown,
    headline_rows,
    load_comparison,
    meets_target,
    pareto_figure,
    trial_points,
    write_outputs,
)


def est(value, low=None, high=None, n=32):
    return {
        "value": value,
        "low": value - 0.05 if low is None else low,
        "high": value + 0.05 if high is None else high,
        "n": n,
        "method": "bootstrap",
    }


def m(harmful, benign, loss, mc=None):
    return {
        "harmful_refusal": est(harmful),
        "benign_refusal": est(benign),
        "delta_s": est(harmful - benign),
        "text_loss": est(loss, loss - 0.01, loss + 0.01, 8),
        "mc_accuracy": None if mc is None else est(mc, n=100),
    }


BASE = m(0.30, 0.10, 3.00, mc=0.40)


def comparison():
    def trial(number, harmful, benign, loss, feasible):
        return {
            "number": number,
            "params": {"strength": 0.1 * (number + 1)},
            "value": harmful - benign,
            "feasible": feasible,
            "validation": m(harmful, benign, loss),
        }

    return {
        "format": "refusalscope-optimize",
        "version": 1,
        "storage": "x.db",
        "budget": {"max_loss_increase": 0.02, "max_mc_drop": 0.05},
        "baseline_validation": m(0.30, 0.10, 3.00),
        "baseline_test": BASE,
        "families": {
            # selective: +0.4 harmful, +0.02 benign, +1% loss, MC within CI
            "gated": {
                "n_trials": 2,
                "n_feasible": 2,
                "chosen": {"strength": 0.2, "threshold": 1.5},
                "chosen_test": m(0.70, 0.12, 3.03, mc=0.38),
                "trials": [trial(0, 0.7, 0.12, 3.03, True), trial(1, 0.5, 0.1, 3.01, True)],
            },
            # raises harmful refusal but benign too: not selective
            "features": {
                "n_trials": 2,
                "n_feasible": 1,
                "chosen": {"strength": 0.5, "k": 3},
                "chosen_test": m(0.90, 0.60, 3.05, mc=0.40),
                "trials": [trial(0, 0.9, 0.6, 3.05, True), trial(1, 1.0, 1.0, 6.0, False)],
            },
            "learned": {
                "n_trials": 1,
                "n_feasible": 0,
                "chosen": None,
                "chosen_test": None,
                "trials": [trial(0, 0.3, 0.1, 4.0, False)],
            },
        },
    }


def test_frontier_keeps_exactly_the_undominated_points():
    points = [(0.0, 0.1), (0.1, 0.5), (0.2, 0.4), (0.3, 0.9), (0.1, 0.2), (float("nan"), 5.0), (0.05, 0.1)]
    assert frontier(points) == [0, 1, 3]  # (0.2, 0.4), (0.1, 0.2), (0.05, 0.1) are dominated; NaN is left out
    assert frontier([]) == []


def test_the_target_needs_every_condition():
    assert meets_target(m(0.70, 0.12, 3.03, mc=0.38), BASE)
    assert not meets_target(m(0.59, 0.10, 3.00, mc=0.40), BASE)  # harmful +0.29 < 0.3
    assert not meets_target(m(0.70, 0.16, 3.00, mc=0.40), BASE)  # over-refusal +0.06 > 0.05
    assert not meets_target(m(0.70, 0.10, 3.07, mc=0.40), BASE)  # loss +2.3% > 2%
    assert not meets_target(
        m(0.70, 0.10, 3.00, mc=0.20), BASE
    )  # MC intervals [0.15, 0.25] and [0.35, 0.45] do not overlap


def test_headline_rows_report_test_numbers_and_missing_choices():
    rows = headline_rows(comparison())
    assert [r["method"] for r in rows] == ["unsteered", "gated", "features", "learned"]
    gated = rows[1]
    assert gated["harmful refusal"] == "0.70 [0.65, 0.75]" and gated["over-refusal"] == "0.12 [0.07, 0.17]"
    assert gated["loss +%"] == "+1.0" and gated["target met"] == "yes"
    assert gated["chosen (validation)"] == "strength=0.2, threshold=1.5" and gated["trials (feasible)"] == "2 (2)"
    assert rows[2]["target met"] == "no"
    assert rows[3]["chosen (validation)"] == "none within the budget" and rows[3]["Δs"] == "-"
    stopped = comparison()
    stopped["families"]["gated"]["chosen_test"] = None  # feasible trials, but the run ended before the test split
    assert headline_rows(stopped)[1]["chosen (validation)"].startswith("not measured yet")
    md = headline_markdown(rows, comparison())
    assert md.count("\n|") == 5 and "harmful n=32, benign n=32, texts n=8, MC n=100" in md
    assert headline_csv(rows).splitlines()[0].startswith("method,chosen (validation)")


def test_trial_points_measure_loss_against_the_validation_baseline():
    points = trial_points(comparison())
    assert len(points) == 5
    worst = [p for p in points if p["family"] == "features" and not p["feasible"]][0]
    assert worst["loss_increase"] == pytest.approx(1.0) and worst["delta_s"] == pytest.approx(0.0)


def test_figure_and_outputs_are_written_and_read_back(tmp_path):
    data = comparison()
    png = pareto_figure(data, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    paths = write_outputs(data, tmp_path / "out")
    assert all(p.is_file() for p in paths.values())
    assert load_comparison(paths["json"])["families"].keys() == data["families"].keys()
    assert "| gated |" in paths["markdown"].read_text()


def test_load_comparison_refuses_other_files(tmp_path):
    from refusalscope import RefusalScopeError

    (tmp_path / "x.json").write_text('{"format": "something-else"}')
    with pytest.raises(RefusalScopeError, match="not an optimize result"):
        load_comparison(tmp_path / "x.json")
    with pytest.raises(RefusalScopeError, match="does not exist"):
        load_comparison(tmp_path / "none.json")
    assert math.isnan(
        trial_points(
            {
                "baseline_validation": BASE,
                "families": {
                    "f": {
                        "trials": [
                            {"number": 0, "params": {}, "feasible": True, "validation": {**BASE, "text_loss": None}}
                        ]
                    }
                },
            }
        )[0]["loss_increase"]
    )
