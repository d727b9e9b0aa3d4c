"""`refusalscope attack gcg|suite|multiturn` end to end on a tiny model folder and the
shared benchmark files: tables with unsteered / steered / gated rows, clear errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from refusalscope.cli import app
from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering
from refusalscope.testing import save_tiny_model, tiny_chat_model

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("attack-cli")
    chat = tiny_chat_model("llama", seed=2, n_layers=2, d_model=32)
    folder = save_tiny_model(chat, root / "tiny")
    from refusalscope import load_model

    loaded = load_model(str(folder), dtype="fp32", progress=False)
    inner = ActAdd(torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(0)), 0, 6.0)
    steered = Steering([inner]).for_model(loaded).save(root / "steered.json")
    gated = Steering([Conditional(inner, DirectionGate(torch.ones(loaded.d_model), 0), 0.0)]).for_model(loaded)
    gated = gated.save(root / "gated.json")
    other = Steering([inner], model={"name": "another-model", "spec": "another-model", "sha256": "f" * 64})
    other = other.save(root / "other.json")
    return {
        "root": root,
        "model": str(folder),
        "steered": steered,
        "gated": gated,
        "other": other,
        "data": str(data_dir),
    }


def invoke(args):
    return runner.invoke(app, ["attack", *args])


def on_tiny(setup, *, data: bool = True) -> list[str]:
    """The options every end-to-end attack here runs with: the tiny model folder in fp32,
    and the shared benchmark files (`multiturn` takes none)."""
    model = ["--model", setup["model"], "--dtype", "fp32"]
    return [*model, "--data-dir", setup["data"]] if data else model


def test_gcg_command_writes_a_robustness_row_per_configuration(setup):
    out = setup["root"] / "gcg"
    args = ["gcg", *on_tiny(setup), "--limit", "2", "--steps", "2", "--suffix-length", "4", "--candidates", "8"]
    args += ["--top-k", "8", "--check-every", "1", "--max-new-tokens", "4"]
    result = invoke([*args, "-c", f"steered={setup['steered']}", "-c", f"gated={setup['gated']}", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("unsteered", "steered", "gated"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["n"] == 2 and summary["robustness"]["method"] == "wilson"
        assert name in result.output
    assert json.loads((out / "steered" / "summary.json").read_text())["steering"] is not None


def test_suite_command_prints_compliance_per_family(setup):
    out = setup["root"] / "suite"
    args = ["suite", *on_tiny(setup), "--limit", "2", "-a", "direct", "-a", "dan", "-a", "past-tense"]
    result = invoke([*args, "--max-new-tokens", "4", "-c", f"steered={setup['steered']}", "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "suite.json").read_text())
    assert {(r["config"], r["family"]) for r in table["rows"]} == {
        (c, f) for c in ("unsteered", "steered") for f in ("direct", "dan", "past-tense")
    }
    assert all(r["n"] == 2 for r in table["rows"])


def test_multiturn_command_prints_refusal_by_turn(setup):
    out = setup["root"] / "mt"
    args = ["multiturn", *on_tiny(setup, data=False), "--limit", "2", "--max-new-tokens", "4"]
    result = invoke([*args, "-c", f"gated={setup['gated']}", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "turn 1" in result.output and "gated" in result.output
    assert len((out / "gated" / "results.jsonl").read_text().splitlines()) == 2


def test_multiturn_command_passes_its_settings_to_either_runner(setup):
    """`multiturn` picks the scripted or the attacker runner and passes the shared settings
    (target, judge, reply length) in one call: every CLI setting must reach the identity
    each run records, the attacker loop's own ones (--attacker self) included."""
    db = setup["root"] / "multiturn-settings.db"
    common = ["multiturn", *on_tiny(setup, data=False), "--limit", "1", "--max-new-tokens", "3", "--db", str(db)]
    assert invoke(common).exit_code == 0
    attacker = [*common, "--attacker", "self", "--max-turns", "2", "--max-backtracks", "1", "--seed", "5"]
    result = invoke(attacker)
    assert result.exit_code == 0, result.output
    assert "turn 2" in result.output and "turn 3" not in result.output
    from refusalscope.evaluation.store import ResultsStore

    with ResultsStore(db, create=False) as store:
        identities = {r["attack"]: r["identity"] for r in store.attack_runs()}
    scripted, loop = identities["multiturn-scripted"], identities["multiturn-attacker"]
    assert scripted["max_new_tokens"] == 3 and scripted["judge"] == loop["judge"]
    assert {k: loop[k] for k in ("max_turns", "max_backtracks", "max_new_tokens", "seed")} == {
        "max_turns": 2,
        "max_backtracks": 1,
        "max_new_tokens": 3,
        "seed": 5,
    }
    assert loop["attacker"] == scripted["model"]["name"]  # 'self': the target model


def test_db_option_keeps_every_attack_in_one_database_and_the_report_reads_it(setup):
    """gcg, suite and multiturn with --db write keyed rows into one results database (no
    folders); a rerun computes nothing; `attack report DB` renders all three tables;
    `attack import` copies a folder run in, and the copy adds nothing twice."""
    db = setup["root"] / "attacks.db"
    common = [*on_tiny(setup, data=False), "-c", f"steered={setup['steered']}", "--db", str(db)]
    gcg = ["gcg", "--data-dir", setup["data"], "--limit", "2", "--steps", "1", "--suffix-length", "3"]
    gcg += ["--candidates", "4", "--top-k", "4", "--max-new-tokens", "3", *common]
    suite = ["suite", "--data-dir", setup["data"], "--limit", "1", "-a", "direct", "--max-new-tokens", "3", *common]
    multiturn = ["multiturn", "--limit", "1", "--max-new-tokens", "3", *common]
    for args in (gcg, suite, multiturn):
        result = invoke([*args, "-o", str(setup["root"] / "unused")])
        assert result.exit_code == 0, result.output
        assert f"results in {db}" in result.output.replace("\n", "")
    assert not (setup["root"] / "unused").exists()
    from refusalscope.evaluation.store import ResultsStore

    with ResultsStore(db, create=False) as store:
        runs = store.attack_runs()
        counts = {(r["attack"], r["config"]): len(store.attack_results(r["run_key"])) for r in runs}
    assert counts == {
        (attack, config): n
        for attack, n in (("gcg", 2), ("suite", 1), ("multiturn-scripted", 1))
        for config in ("unsteered", "steered")
    }
    again = invoke([*gcg, "-o", str(setup["root"] / "unused")])  # a rerun: the same rows, nothing added
    assert again.exit_code == 0, again.output
    with ResultsStore(db, create=False) as store:
        assert {
            (r["attack"], r["config"]): len(store.attack_results(r["run_key"])) for r in store.attack_runs()
        } == counts
    page = setup["root"] / "robustness.html"
    result = runner.invoke(app, ["attack", "report", str(db), "-o", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "GCG robustness" in html and "compliance per attack family" in html and "refusal by turn" in html
    assert html.count(">steered<") == 3

    folder = setup["root"] / "folder-run"
    result = invoke([*multiturn[:-2], "-o", str(folder / "multiturn")])
    assert result.exit_code == 0, result.output
    imported = setup["root"] / "imported.db"
    result = invoke(["import", str(folder), "--db", str(imported)])
    assert result.exit_code == 0 and "copied 2 runs, 2 finished items" in result.output, result.output
    result = invoke(["import", str(folder), "--db", str(imported)])
    assert "copied 2 runs, 0 finished items" in result.output, result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "/no/such/folder", "--db", "x.db"], "attack folder /no/such/folder does not exist"),
        (["import", ".", "--db", "x.txt"], "is not a database file name"),
        (["report", "/no/such/results.db"], "results database /no/such/results.db does not exist"),
    ],
)
def test_import_and_report_refuse_bad_paths(args, message):
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "fix:" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["gcg", "--db", "results.txt"], "is not a database file name"),
        (["suite", "--judge", "no-such-judge"], "unknown judge 'no-such-judge'"),
        (["gcg", "--steps", "0"], "steps must be a positive integer"),
        (["gcg", "--token-budget", "-5"], "token budget must be positive"),
        (["suite", "-a", "autodan"], "unknown attack 'autodan'"),
        (["gcg", "--dataset", "harmful/malicious-instruct", "--limit", "2"], "has no target string"),
        (["gcg", "-b", "harmbench-no_such_behaviour"], "unknown behaviour id"),
    ],
)
def test_bad_input_exits_2_before_loading_anything(setup, args, message):
    result = invoke([*args, "--model", "no-such-model", "--data-dir", setup["data"]])  # a model load would fail
    assert result.exit_code == 2, result.output
    assert message in result.output and "fix:" in result.output


def test_spec_for_another_model_is_refused(setup):
    out = setup["root"] / "other"
    result = invoke(
        ["suite", *on_tiny(setup), "--limit", "1", "-a", "direct", "-c", f"other={setup['other']}", "-o", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "written for another-model" in result.output
    assert not (out / "unsteered" / "results.jsonl").exists()  # checked before any attack ran
