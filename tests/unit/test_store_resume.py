"""What a user meets after `kill -9` of a sweep: the rerun says how much is already stored,
the killed run is marked interrupted, and the `.db` file alone (copied without its WAL)
holds the finished batches and can be read without writing anything."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from refusalscope.evaluation import store as store_module
from refusalscope.evaluation.store import ResultsStore
from refusalscope.evaluation.tasks import ItemResult

# a sweep of 2 configurations (unsteered, ActAdd ×1) × 6 items on a tiny model, in batches
# of 2; with "kill" it SIGKILLs itself after computing `KILL_AFTER` items (no cleanup runs)
SWEEP_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from dataclasses import dataclass

    import torch
    torch.set_num_threads(1)

    from refusalscope.evaluation import store
    from refusalscope.evaluation.grid import Grid, Method
    from refusalscope.evaluation.sweep import run_sweep
    from refusalscope.evaluation.tasks import ItemResult
    from refusalscope.testing import tiny_chat_model

    store.CHECKPOINT_SECONDS = 0.0  # checkpoint after every batch: what is stored is in the .db
    db_path, mode, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

    @dataclass
    class Item:
        id: str
        prompt: str

    class CountingTask:
        name, dataset, split, primary, higher_is_better, expect = "cap", "fake/cap", None, "score", True, None
        done = 0

        def items(self, data_dir=None, limit=None, seed=0):
            return [Item(f"item-{i}", f"prompt number {i}") for i in range(6)]

        def run(self, chat, items, interventions=None, batch_size=16):
            if mode == "kill" and CountingTask.done >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            logits = chat.next_token_logits([it.prompt for it in items], interventions=interventions)
            CountingTask.done += len(items)
            return [ItemResult(it.id, {"score": float(row.max())}, "out", it.prompt) for it, row in zip(items, logits)]

        def describe(self):
            return {"kind": "counting"}

    chat = tiny_chat_model("llama")
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    grid = Grid([Method.actadd(direction, 2, [1.0])])
    result = run_sweep(chat, grid, [CountingTask()], db_path, batch_size=2, progress=mode == "resume")
    print("computed", result.computed, "skipped", result.skipped)
""")


def run_script(tmp_path, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "sweep_script.py"
    script.write_text(SWEEP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_sweep_is_announced_marked_interrupted_and_its_db_file_is_complete(tmp_path):
    db = tmp_path / "run" / "results.db"
    killed = run_script(tmp_path, db, "kill", 8)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # the .db alone, copied as a user would, holds every finished batch
    copy = tmp_path / "copy" / "results.db"
    copy.parent.mkdir()
    shutil.copyfile(db, copy)
    before = digest(copy)
    with ResultsStore(copy, create=False) as read:
        assert read.count_items() == 8
        assert [r["status"] for r in read.runs()] == ["running"]  # a reader marks nothing
    assert sorted(p.name for p in copy.parent.iterdir()) == ["results.db"]  # no -wal/-shm created
    assert digest(copy) == before  # and not a byte written

    # the rerun announces what it reuses and marks the killed run
    resumed = run_script(tmp_path, db, "resume", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: 8 of 12 items stored in {db} (run 1 was interrupted); 4 to compute" in resumed.stderr
    assert "computed 4 skipped 8" in resumed.stdout
    with ResultsStore(db, create=False) as read:
        assert [r["status"] for r in read.runs()] == ["interrupted", "complete"]
        assert read.count_items() == 12


def test_a_run_whose_process_is_alive_stays_running(tmp_path):
    path = tmp_path / "r.db"
    with ResultsStore(path) as first:
        live = first.start_run({"id": "m"}, {})
        with ResultsStore(path) as second:  # e.g. a second sweep into the same database
            assert second.mark_interrupted_runs() == []
            second.start_run({"id": "m"}, {})
        assert [r["status"] for r in first.runs()] == ["running", "running"]
        first.finish_run(live, "complete")


def test_a_dead_process_run_is_marked_interrupted(tmp_path):
    path = tmp_path / "r.db"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with ResultsStore(path) as db:
        run = db.start_run({"id": "m"}, {})
        db.conn.execute("UPDATE runs SET pid=? WHERE run_id=?", (int(gone.stdout), run))
        assert db.mark_interrupted_runs() == [run]
        assert db.runs()[0]["status"] == "interrupted"


def test_writer_checkpoints_so_a_copied_db_holds_finished_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHECKPOINT_SECONDS", 0.0)
    path = tmp_path / "live.db"
    with ResultsStore(path) as db:
        db.write_batch("cfg-a", "t", [ItemResult(f"i{i}", {"refused": 1.0}, "reply", "prompt") for i in range(3)])
        # still open (its WAL exists): the .db file alone already has the rows
        assert (tmp_path / "live.db-wal").exists()
        copy = tmp_path / "copy.db"
        shutil.copyfile(path, copy)
        with ResultsStore(copy, create=False) as read:
            assert read.count_items() == 3


def test_readonly_store_reads_a_live_database_and_refuses_to_write(tmp_path):
    path = tmp_path / "live.db"
    with ResultsStore(path) as db:
        db.write_batch("cfg-a", "t", [ItemResult("i", {"refused": 1.0})])
        with ResultsStore(path, create=False) as read:  # the writer's WAL is read too
            assert read.count_items() == 1
            with pytest.raises(Exception, match="readonly"):
                read.conn.execute("INSERT INTO meta VALUES ('x', 'y')")


def test_readonly_open_leaves_a_rollback_journal_database_in_its_mode(tmp_path):
    path = tmp_path / "old.db"
    with ResultsStore(path) as db:
        db.write_batch("cfg-a", "t", [ItemResult("i", {"refused": 1.0})])
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    with ResultsStore(path, create=False) as read:
        assert read.count_items() == 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_sweep_restart_keeps_the_old_database_until_the_model_has_loaded(tmp_path):
    from typer.testing import CliRunner

    from refusalscope.cli import app
    from refusalscope.testing import save_tiny_model, tiny_chat_model

    folder = save_tiny_model(tiny_chat_model("llama"), tmp_path / "model")
    (tmp_path / "grid.yaml").write_text(
        "max_new_tokens: 2\nmethods: []\ntasks:\n  - {name: mp, dataset: builtin/minimal-pairs, split: harmful, limit: 2}\n"
    )
    db = tmp_path / "r.db"
    runner = CliRunner()

    def sweep(model, *extra):
        return runner.invoke(
            app,
            [
                "sweep",
                "--spec",
                str(tmp_path / "grid.yaml"),
                "-o",
                str(db),
                "--model",
                str(model),
                "--no-progress",
                *extra,
            ],
        )

    assert sweep(folder).exit_code == 0
    before = digest(db)
    failed = sweep(tmp_path / "no-such-model", "--restart")
    assert failed.exit_code == 2
    assert digest(db) == before  # the model never loaded: the old results are still there
    restarted = sweep(folder, "--restart")
    assert restarted.exit_code == 0 and "2 items computed, 0 reused" in restarted.output
