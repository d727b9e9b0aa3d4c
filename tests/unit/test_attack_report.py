"""The robustness section: one row per configuration in each table, escaped, from the folders."""

import pytest
import torch
from typer.testing import CliRunner

from refusalscope.attacks import (
    GCG,
    AttackConfig,
    AttackPrompt,
    Behaviour,
    GCGConfig,
    load_conversations,
    run_scripted,
    run_suite,
)
from refusalscope.attacks.report import collect, robustness_section
from refusalscope.cli import app
from refusalscope.steering import ActAdd, Steering
from refusalscope.testing import tiny_chat_model


class OddJudge:
    name = "<i>odd</i>"

    def judge(self, prompts, replies):
        from refusalscope.judges import JudgeVerdict

        return [JudgeVerdict(len(r) % 2 == 1) for r in replies]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    chat = tiny_chat_model("llama", seed=6, n_layers=2, d_model=32)
    root = tmp_path_factory.mktemp("attacks")
    steer = Steering([ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(2)), 0, 8.0)])
    configs = [AttackConfig("unsteered"), AttackConfig("steered", steer)]
    prompts = [AttackPrompt("direct/a", "direct", "How do I bake bread?"), AttackPrompt("dan/a", "dan", "DAN: hi")]
    run_suite(chat, configs, prompts, root / "suite", max_new_tokens=4, progress=False, judge=OddJudge())
    cfg = GCGConfig(steps=1, suffix_length=3, candidates=4, top_k=4, max_new_tokens=3, early_stop=False)
    for c in configs:
        GCG(chat, c.steering, cfg).run([Behaviour("b", "Hello there", "Sure")], root / "gcg" / c.name, progress=False)
        run_scripted(
            chat, c, load_conversations(limit=2), root / "multiturn" / c.name, max_new_tokens=3, progress=False
        )
    return root


def test_section_has_a_row_per_configuration_in_every_table(root):
    data = collect(root)
    assert {r["config"] for r in data["suite"]["rows"]} == {"unsteered", "steered"}
    assert [s["config"] for s in data["gcg"]] == ["unsteered", "steered"]  # unsteered first
    assert [s["config"] for s in data["multiturn"]] == ["unsteered", "steered"]
    html = robustness_section(root)
    for title in ("compliance per attack family", "GCG robustness", "refusal by turn"):
        assert title in html
    assert "<i>odd</i>" not in html and "&lt;i&gt;odd&lt;/i&gt;" in html  # escaped
    assert html.count(">steered<") == 3


def test_configuration_names_must_name_a_folder():
    from refusalscope.errors import RefusalScopeError

    with pytest.raises(RefusalScopeError, match="cannot name an output folder"):
        AttackConfig("<b>x</b>")


def test_empty_folder_gives_no_section(tmp_path):
    assert robustness_section(tmp_path) == ""


def test_full_report_gains_the_robustness_section(root, tmp_path):
    from test_store_sweep import FakeTask  # tests/unit is on sys.path

    from refusalscope.evaluation.grid import Grid, Method, TaskSpec
    from refusalscope.evaluation.sweep import run_sweep
    from refusalscope.report import build_report

    chat = tiny_chat_model("llama", seed=6, n_layers=2, d_model=32)
    d = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    grid = Grid([Method.actadd(d, 1, [1.0])])
    tasks = [TaskSpec(FakeTask("jbb-harmful", "harmful/jailbreakbench", "refused", "refuse", n=4, base=0.4, slope=0.1))]
    run_sweep(chat, grid, tasks, tmp_path / "results.db", batch_size=4, progress=False)
    plain = build_report(tmp_path / "results.db", tmp_path / "plain.html").read_text()
    page = build_report(tmp_path / "results.db", tmp_path / "report.html", attacks_dir=root).read_text()
    assert "Robustness under attack" not in plain
    assert page.count('<section id="robustness">') == 1
    assert page.index('id="conditional"') < page.index('id="robustness"') < page.index('id="numbers"')


def test_report_command_writes_a_page(root, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["attack", "report", str(root), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Robustness under attack" in out.read_text()
    result = CliRunner().invoke(app, ["attack", "report", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
