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
        run_scripted(chat, c, load_conversations(limit=2), root / "multiturn" / c.name, max_new_tokens=3,
                     progress=False)
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


def test_report_command_writes_a_page(root, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["attack", "report", str(root), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Robustness under attack" in out.read_text()
    result = CliRunner().invoke(app, ["attack", "report", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
