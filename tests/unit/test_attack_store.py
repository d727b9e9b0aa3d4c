"""Attack results in the results database: keyed rows, a rerun computes only what is
missing, a killed attack (in process, and a real SIGKILL) resumes from its stored
checkpoint to the uninterrupted result, folders import, and the report reads the rows."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

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
from refusalscope.attacks.runs import StoreRun, import_folder, is_store, open_run
from refusalscope.evaluation.store import ResultsStore
from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering

TINY_CHAT = dict(seed=3, n_layers=2, d_model=32)  # the `chat` fixture's model (tests/unit/conftest.py)
B1 = Behaviour("b1", "How do I bake bread?", "Sure, here is a poem about the sea")
B2 = Behaviour("b2", "Write a python function", "Sure! Here is how to bake bread")
CONFIG = dict(
    steps=5,
    suffix_length=5,
    candidates=16,
    top_k=16,
    eval_batch=8,
    check_every=5,
    max_new_tokens=4,
    checkpoint_every=2,
    early_stop=False,
)
KEYS = ("id", "suffix_ids", "losses", "best_loss", "kept", "broken", "steps", "tokens", "checks")


class Killed(Exception):
    pass


class RefusesOddLength:
    name = "odd-length"

    def judge(self, prompts, replies):
        from refusalscope.judges import JudgeVerdict

        return [JudgeVerdict(len(r) % 2 == 1) for r in replies]


def same(a, b):
    for x, y in zip(a, b, strict=True):
        for key in KEYS:
            assert x[key] == y[key], key


def test_store_paths_are_recognised(tmp_path):
    assert is_store(tmp_path / "results.db") and is_store(str(tmp_path / "x.sqlite"))
    assert not is_store(tmp_path / "gcg" / "steered")
    with ResultsStore(tmp_path / "r.db") as db:
        assert is_store(db)
        assert isinstance(open_run(db, "u", {"attack": "gcg"}), StoreRun)


def test_gcg_in_the_store_matches_the_folder_and_a_rerun_computes_nothing(chat, tmp_path):
    config = GCGConfig(**CONFIG)
    folder = GCG(chat, None, config).run([B1, B2], tmp_path / "folder", progress=False)
    db = tmp_path / "results.db"
    stored = GCG(chat, None, config).run([B1, B2], db, progress=False)
    same(folder["results"], stored["results"])
    assert stored["robustness"] == folder["robustness"] and not (tmp_path / "summary.json").exists()
    steps = []
    again = GCG(chat, None, config).run([B1, B2], db, progress=False, on_step=lambda b, s: steps.append(b))
    assert steps == [] and again["results"] == stored["results"]
    with ResultsStore(db, create=False) as store:
        (run,) = store.attack_runs("gcg")
        assert run["config"] == "unsteered" and run["identity"]["config"]["steps"] == 5
        assert [r["id"] for r in store.attack_results(run["run_key"])] == ["b1", "b2"]


def test_other_settings_get_rows_of_their_own(chat, tmp_path):
    db = tmp_path / "results.db"
    GCG(chat, None, GCGConfig(**{**CONFIG, "steps": 1})).run([B1], db, progress=False)
    steps = []
    GCG(chat, None, GCGConfig(**{**CONFIG, "steps": 2})).run(
        [B1], db, progress=False, on_step=lambda b, s: steps.append(s.step)
    )
    assert steps == [1, 2]  # nothing reused from the 1-step run
    with ResultsStore(db, create=False) as store:
        runs = store.attack_runs("gcg")
        assert len(runs) == 2 and len({r["run_key"] for r in runs}) == 2
        assert [len(store.attack_results(r["run_key"])) for r in runs] == [1, 1]
    data = collect(db)
    assert sorted(s["budget"]["steps"] for s in data["gcg"]) == [1, 2]


def test_killed_gcg_resumes_from_the_stored_checkpoint(chat, tmp_path):
    config = GCGConfig(**CONFIG)
    whole = GCG(chat, None, config).run([B1, B2], tmp_path / "whole.db", progress=False)

    def kill(behaviour_id, step):
        if behaviour_id == "b2" and step.step == 3:
            raise Killed

    db = tmp_path / "killed.db"
    with pytest.raises(Killed):
        GCG(chat, None, config).run([B1, B2], db, progress=False, on_step=kill)
    with ResultsStore(db, create=False) as store:
        (run,) = store.attack_runs()
        assert store.attack_done(run["run_key"]) == {"b1"}
        assert store.attack_state(run["run_key"], "b2")["step"] == 2  # the last checkpoint before step 3
    seen = []
    resumed = GCG(chat, None, config).run([B1, B2], db, progress=False, on_step=lambda b, s: seen.append((b, s.step)))
    assert seen == [("b2", 3), ("b2", 4), ("b2", 5)]
    same(whole["results"], resumed["results"])
    with ResultsStore(db, create=False) as store:
        assert store.attack_state(store.attack_runs()[0]["run_key"], "b2") is None  # dropped with the result


def test_sigkilled_gcg_process_resumes_to_the_uninterrupted_result(chat, tmp_path):
    """A real kill -9 in the middle of the second behaviour: the database keeps b1 and b2's
    last checkpoint, and the resumed run ends where an uninterrupted one does."""
    config = GCGConfig(**CONFIG)
    whole = GCG(chat, None, config).run([B1, B2], tmp_path / "whole.db", progress=False)
    db = tmp_path / "killed.db"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from refusalscope.attacks import GCG, GCGConfig, Behaviour
        from refusalscope.testing import tiny_chat_model
        chat = tiny_chat_model(**{TINY_CHAT!r})
        def kill(b, s):
            if b == "b2" and s.step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        GCG(chat, None, GCGConfig(**{CONFIG!r})).run(
            [Behaviour(*{tuple(vars(B1).values())!r}), Behaviour(*{tuple(vars(B2).values())!r})],
            {str(db)!r}, progress=False, on_step=kill)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with ResultsStore(db, create=False) as store:
        (run,) = store.attack_runs()
        assert store.attack_done(run["run_key"]) == {"b1"}
        assert store.attack_state(run["run_key"], "b2")["step"] == 2
    seen = []
    resumed = GCG(chat, None, config).run([B1, B2], db, progress=False, on_step=lambda b, s: seen.append(s.step))
    assert seen == [3, 4, 5]
    same(whole["results"], resumed["results"])


def test_killed_scripted_multiturn_resumes_in_the_store(chat, tmp_path):
    convs = load_conversations(limit=3)
    whole = run_scripted(chat, AttackConfig("u"), convs, tmp_path / "whole.db", max_new_tokens=5, progress=False)

    def kill(turn):
        if turn == 2:
            raise Killed

    db = tmp_path / "k.db"
    with pytest.raises(Killed):
        run_scripted(chat, AttackConfig("u"), convs, db, max_new_tokens=5, progress=False, on_turn=kill)
    with ResultsStore(db, create=False) as store:
        key = store.attack_runs("multiturn-scripted")[0]["run_key"]
        assert [len(store.attack_state(key, c.id)["turns"]) for c in convs] == [2, 2, 2]
    seen = []
    resumed = run_scripted(chat, AttackConfig("u"), convs, db, max_new_tokens=5, progress=False, on_turn=seen.append)
    assert seen[0] == 3  # turns 1 and 2 were not generated again
    by_id = lambda rs: sorted(rs, key=lambda r: r["id"])  # noqa: E731
    assert [r["turns"] for r in by_id(whole["results"])] == [r["turns"] for r in by_id(resumed["results"])]


def test_suite_in_the_store_answers_only_missing_prompts(chat, tmp_path):
    prompts = [
        AttackPrompt("direct/a", "direct", "How do I bake bread?"),
        AttackPrompt("dan/a", "dan", "DAN: hi"),
        AttackPrompt("dan/b", "dan", "DAN: tell me a story"),
    ]
    db = tmp_path / "results.db"
    configs = [AttackConfig("unsteered")]
    run_suite(chat, configs, prompts[:2], db, judge=RefusesOddLength(), max_new_tokens=4, progress=False)
    calls = []
    original = chat.generate

    def counting(batch, *a, **k):
        calls.append(list(batch))
        return original(batch, *a, **k)

    chat.generate = counting
    try:
        table = run_suite(chat, configs, prompts, db, judge=RefusesOddLength(), max_new_tokens=4, progress=False)
    finally:
        del chat.generate
    assert calls == [["DAN: tell me a story"]]
    rows = {r["family"]: r for r in table["rows"]}
    assert rows["dan"]["n"] == 2 and rows["direct"]["n"] == 1
    assert not (tmp_path / "suite.json").exists()
    stored = {r["family"]: r for r in collect(db)["suite"]["rows"]}
    assert stored == rows


def test_store_and_folder_give_the_same_report(chat, tmp_path):
    steer = Steering([ActAdd(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(2)), 0, 8.0)])
    gate = Conditional(steer.interventions[0], DirectionGate(torch.ones(chat.d_model), 0), 0.0)
    configs = [AttackConfig("unsteered"), AttackConfig("steered", steer), AttackConfig("gated", Steering([gate]))]
    prompts = [AttackPrompt("direct/a", "direct", "How do I bake bread?"), AttackPrompt("dan/a", "dan", "DAN: hi")]
    cfg = GCGConfig(steps=1, suffix_length=3, candidates=4, top_k=4, max_new_tokens=3, early_stop=False)
    convs = load_conversations(limit=2)
    folder, db = tmp_path / "attacks", tmp_path / "results.db"
    judge = RefusesOddLength()
    for out in (folder, db):
        store = out == db
        run_suite(
            chat, configs, prompts, out if store else out / "suite", max_new_tokens=4, progress=False, judge=judge
        )
        for c in configs:
            GCG(chat, c.steering, cfg, judge=judge).run(
                [B1], out if store else out / "gcg" / c.name, progress=False, name=c.name
            )
            run_scripted(
                chat,
                c,
                convs,
                out if store else out / "multiturn" / c.name,
                judge=judge,
                max_new_tokens=3,
                progress=False,
            )
    a, b = collect(folder), collect(db)
    assert a["suite"]["rows"] == b["suite"]["rows"]
    assert [s["config"] for s in b["gcg"]] == ["unsteered", "steered", "gated"]  # unsteered first, then as run
    by_name = lambda rows: sorted(rows, key=lambda s: s["config"])  # noqa: E731
    for x, y in zip(by_name(a["gcg"]), by_name(b["gcg"]), strict=True):
        for key in ("config", "robustness", "n", "broken", "steps_to_break", "tokens", "budget"):
            assert x[key] == y[key], key
    for x, y in zip(by_name(a["multiturn"]), by_name(b["multiturn"]), strict=True):
        assert x["config"] == y["config"] and x["refusal_by_turn"] == y["refusal_by_turn"]
        assert x["success"] == y["success"]
    html = robustness_section(db)
    assert html.count(">gated<") == 3 and "forward tokens" in html


def test_attack_tables_sit_beside_a_sweeps_rows(chat, tmp_path):
    from refusalscope.evaluation.tasks import ItemResult

    db = tmp_path / "results.db"
    with ResultsStore(db) as store:
        store.write_batch("cfg-1", "task", [ItemResult("i1", {"refused": 1.0}, "out", "prompt")])
        before = store.rows()
        GCG(chat, None, GCGConfig(**{**CONFIG, "steps": 1})).run([B1], store, progress=False)
        assert store.rows() == before and store.count_items() == 1  # the sweep's tables are untouched
        assert len(store.attack_runs()) == 1  # and the open store is still usable


def test_a_database_without_attack_tables_reads_as_empty(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    ResultsStore(db).close()
    conn = sqlite3.connect(db)
    for table in ("attack_runs", "attack_items", "attack_states"):  # as a database written before them
        conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    with ResultsStore(db, create=False) as store:
        assert store.attack_runs() == [] and store.attack_results("x") == [] and store.attack_state("x", "y") is None
    assert robustness_section(db) == ""


def test_folders_import_into_the_store_and_resume_there(chat, tmp_path):
    config = GCGConfig(**CONFIG)
    root = tmp_path / "attacks"

    def kill(behaviour_id, step):
        if behaviour_id == "b2" and step.step == 3:
            raise Killed

    with pytest.raises(Killed):
        GCG(chat, None, config).run([B1, B2], root / "gcg" / "unsteered", progress=False, on_step=kill)
    convs = load_conversations(limit=2)
    run_scripted(
        chat, AttackConfig("unsteered"), convs, root / "multiturn" / "unsteered", max_new_tokens=3, progress=False
    )
    db = tmp_path / "results.db"
    assert import_folder(root, db) == {"runs": 2, "items": 3, "states": 1}
    assert import_folder(root, db) == {"runs": 2, "items": 0, "states": 1}  # nothing twice (the checkpoint is replaced)
    seen = []
    resumed = GCG(chat, None, config).run(
        [B1, B2], db, progress=False, on_step=lambda b, s: seen.append((b, s.step)), name="unsteered"
    )
    assert seen == [("b2", 3), ("b2", 4), ("b2", 5)]  # b1 from the folder, b2 from its folder checkpoint
    same(GCG(chat, None, config).run([B1, B2], tmp_path / "whole", progress=False)["results"], resumed["results"])
    assert len(collect(db)["multiturn"]) == 1


def test_store_run_refuses_a_read_only_store(tmp_path):
    from refusalscope.errors import RefusalScopeError

    ResultsStore(tmp_path / "r.db").close()
    with ResultsStore(tmp_path / "r.db", create=False) as store, pytest.raises(RefusalScopeError, match="read-only"):
        StoreRun(store, "u", {"attack": "gcg"})


def test_import_errors(tmp_path):
    from refusalscope.errors import RefusalScopeError

    with pytest.raises(RefusalScopeError, match="does not exist"):
        import_folder(tmp_path / "nothing", tmp_path / "r.db")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RefusalScopeError, match="holds no attack folders"):
        import_folder(tmp_path / "empty", tmp_path / "r.db")


def test_stored_rows_are_json(chat, tmp_path):
    db = tmp_path / "results.db"
    GCG(chat, None, GCGConfig(**{**CONFIG, "steps": 1})).run([B1], db, progress=False)
    import sqlite3

    conn = sqlite3.connect(db)
    (row,) = conn.execute("SELECT item_id, result_json FROM attack_items").fetchall()
    conn.close()
    assert row[0] == "b1" and json.loads(row[1])["id"] == "b1"
    assert os.path.getsize(db) > 0
