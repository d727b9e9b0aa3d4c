"""The HTML report: self-contained, escaped, one figure per section, data exported."""

from __future__ import annotations

import csv
import json
import re
from importlib import metadata

import pytest
import torch
from test_store_sweep import FakeTask  # tests/unit is on sys.path (pytest rootdir-less import)
from typer.testing import CliRunner

from refusalscope.cli import app
from refusalscope.evaluation.grid import GateSpec, Grid, Method, TaskSpec
from refusalscope.evaluation.sweep import run_sweep
from refusalscope.report import build_report
from refusalscope.steering import ActAdd, DirectionGate

FIGURE_SECTIONS = ("pareto", "tradeoff", "delta", "jailbreak", "capability", "conditional")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def results(chat, tmp_path_factory):
    d = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    gate = GateSpec(DirectionGate(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1)), 1), 0.0)
    grid = Grid(
        [
            Method(
                "features",
                lambda s: ActAdd(-d, 2, s),
                [1.0, 2.0, 3.0],
                method="features:cossim+ig",
                conditional=(False, True),
            ),
            Method.actadd(d, 2, [1.0, 3.0], conditional=(False, True)),
        ],
        gate=gate,
    )
    tasks = [
        TaskSpec(FakeTask("jbb-harmful", "harmful/jailbreakbench", "refused", "refuse", n=10, base=0.4, slope=0.15)),
        TaskSpec(FakeTask("jbb-benign", "harmless/jailbreakbench", "refused", "answer", n=10, base=0.05, slope=0.1)),
        TaskSpec(FakeTask("xs-unsafe", "xstest/unsafe", "refused", "refuse", n=8, base=0.5, slope=0.1)),
        TaskSpec(FakeTask("xs-safe", "xstest/safe", "refused", "answer", n=8, base=0.1, slope=0.1)),
        TaskSpec(FakeTask("pair-artifacts", "jailbreak/pair", "refused", "refuse", n=8, base=0.2, slope=0.2)),
        TaskSpec(FakeTask("mmlu", "mmlu", "correct", n=8, base=0.7, slope=-0.1)),
    ]
    folder = tmp_path_factory.mktemp("report")
    run_sweep(chat, grid, tasks, folder / "results.db", batch_size=10, progress=False)
    page = build_report(folder / "results.db", folder / "report.html", folder / "export")
    return folder, page


def section(text: str, ident: str) -> str:
    match = re.search(rf'<section id="{ident}">(.*?)</section>', text, re.S)
    assert match, f"no section {ident}"
    return match.group(1)


def test_report_is_self_contained_and_escapes_model_output(results, chat):
    _, page = results
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text.lower()  # the model's '<script>' output is shown, never run
    assert "&lt;script&gt;x()&lt;/script&gt;" in text
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', text)  # nothing loaded from anywhere
    assert "<link" not in text and "@import" not in text and "url(" not in text


def test_one_figure_per_section(results):
    text = results[1].read_text()
    for ident in FIGURE_SECTIONS:
        assert section(text, ident).count("<img ") == 1, ident
    for ident in ("numbers", "examples", "provenance"):
        assert "<img " not in section(text, ident)
    assert text.count("<img ") == len(FIGURE_SECTIONS)


def test_numbers_examples_and_provenance(results, chat):
    text = results[1].read_text()
    numbers = section(text, "numbers")
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(n=10\)", numbers)  # value [CI] (n)
    assert "jailbreakbench" in numbers and "xstest" in numbers
    examples = section(text, "examples")
    for label in ("none", "features ×3", "features ×3 (conditional)", "actadd ×3", "actadd ×3 (conditional)"):
        assert f"<th>{label}</th>" in examples
    prov = section(text, "provenance")
    assert chat.info.id in prov and metadata.version("torch") in prov and "steer-" in prov
    assert "harmful/jailbreakbench" in prov and "fake-judge" in prov and "direction gate" in prov
    conditional = section(text, "conditional")
    assert "gate fire rate" in conditional and "(conditional)" in conditional


def read_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
        handle.seek(0)
        header = next(csv.reader(handle))
    return header, rows


def test_exports_hold_every_figures_data(results):
    folder = results[0] / "export"
    expected = {
        "tradeoff": {
            "pair",
            "label",
            "method",
            "strength",
            "conditional",
            "refusal_harmful",
            "refusal_harmful_low",
            "refusal_harmful_high",
            "n_harmful",
            "refusal_benign",
            "refusal_benign_low",
            "refusal_benign_high",
            "n_benign",
        },
        "selective_refusal": {"pair", "label", "strength", "value", "low", "high", "n", "n_harmful", "n_benign"},
        "jailbreak": {"task", "label", "strength", "value", "low", "high", "n"},
        "capability": {"task", "metric", "label", "strength", "value", "low", "high", "n"},
        "conditional": {"task", "label", "conditional", "value", "low", "high", "n", "fire_rate", "fire_n"},
        "summary": {"config_id", "task", "role", "metric", "value", "low", "high", "n"},
    }
    for name, columns in expected.items():
        header, rows = read_csv(folder / f"{name}.csv")
        assert columns <= set(header), (name, columns - set(header))
        assert rows, name
        data = json.loads((folder / f"{name}.json").read_text())
        assert len(data) == len(rows)
    tradeoff = json.loads((folder / "tradeoff.json").read_text())
    assert {r["pair"] for r in tradeoff} == {"jailbreakbench", "xstest"}
    assert len(tradeoff) == 2 * 11  # none + 3 strengths × 2 features + 2 strengths × 2 actadd, for each pair
    delta = json.loads((folder / "selective_refusal.json").read_text())
    for r in delta:
        assert r["value"] == pytest.approx(r["refusal_harmful"] - r["refusal_benign"])
    gated = [r for r in json.loads((folder / "conditional.json").read_text()) if r["conditional"]]
    assert gated and all(0 <= r["fire_rate"] <= 1 and r["fire_n"] > 0 for r in gated)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["runs"][0]["versions"]["torch"] == metadata.version("torch")
    examples = json.loads((folder / "examples.json").read_text())
    assert examples and "output[none]" in examples[0]


def test_report_command(results, tmp_path):
    folder, _ = results
    runner = CliRunner()
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(folder / "results.db"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "r_data" / "tradeoff.csv").is_file()
    missing = runner.invoke(app, ["report", str(tmp_path / "absent.db")])
    assert missing.exit_code == 2 and "error:" in missing.output and "fix:" in missing.output
