"""The results store: one SQLite file holding every (configuration, task, item) result.

A sweep writes each batch of items in one transaction as soon as the batch is computed,
so a killed sweep loses at most the batch in flight; the primary keys make every write
idempotent (the first result written for a key is kept), so a rerun skips what is done
and can never duplicate or silently overwrite a number.

Tables (stdlib `sqlite3`, WAL journal, so a report can read while a sweep writes):

    meta     (key PRIMARY KEY, value)                       schema version
    runs     (run_id PRIMARY KEY, started, finished, status, model_id, model_json,
              environment_json, versions_json, grid_json, note, computed, skipped)
    configs  (config_id PRIMARY KEY, name, label, method, family, strength, conditional,
              steering_id, model_id, spec_json, saes_json, description, created)
    tasks    (task PRIMARY KEY, dataset, split, primary_metric, higher_is_better, role,
              judge, describe_json, item_limit, seed)
    items    (config_id, task, item_id, prompt, output, run_id, created)
              PRIMARY KEY (config_id, task, item_id)
    metrics  (config_id, task, item_id, metric, value)
              PRIMARY KEY (config_id, task, item_id, metric)
    gates    (config_id, task, batch, fired, seen, run_id)   conditional gate counters
              PRIMARY KEY (config_id, task, batch)
    pairs    (name, harmful_task, benign_task)               dataset pairs for Δs
              PRIMARY KEY (harmful_task, benign_task)
    results  VIEW: metrics ⋈ items = (config_id, task, item_id, metric, value, output, prompt)

Attack results (`refusalscope attack … --db`, the pipeline's attack tasks) live beside them:

    attack_runs    (run_key PRIMARY KEY, attack, config, steering_id, identity_json, created)
    attack_items   (run_key, item_id, result_json, created)   PRIMARY KEY (run_key, item_id)
    attack_states  (run_key, item_id, state_json, updated)    PRIMARY KEY (run_key, item_id)

`run_key` is a content hash of the attack's identity (attack, model, steering id,
settings, judge) and the configuration's name, so a rerun with the same settings finds
its finished items and its checkpoints, and one with other settings gets rows of its own
instead of mixing with them. A finished item and the removal of its checkpoint are one
transaction (`attacks.runs.StoreRun`).

`config_id` is a content hash of the steering (its spec content, model identity included),
the strength, the conditional flag and the method name: the same configuration run twice,
by two sweeps or two grids, shares its results.

The `.db` file is kept self-contained: a writer checkpoints the WAL into it every
`CHECKPOINT_SECONDS` and when it closes, so a copy of the `.db` alone (taken during a
sweep, or after one was killed) holds everything but the last few seconds. A run that
was killed stays `running` in `runs` until the next writer opens the database and finds
its process gone; it is then marked `interrupted`. Readers (`report`, exports, summaries)
open the database read-only (`ResultsStore(path, create=False)`): they never write, never
change its journal mode, and can read a copied `.db` in a read-only folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RefusalScopeError
from ..stats import Estimate, bootstrap, rate
from ..types import TaskRole, choices

SCHEMA_VERSION = 1
CHECKPOINT_SECONDS = 5.0  # how stale a copied .db can be while a sweep writes (a checkpoint fsyncs: ~20 ms)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    model_id TEXT,
    model_json TEXT,
    environment_json TEXT,
    versions_json TEXT,
    grid_json TEXT,
    note TEXT,
    computed INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    host TEXT
);
CREATE TABLE IF NOT EXISTS configs (
    config_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    method TEXT NOT NULL,
    family TEXT NOT NULL,
    strength REAL,
    conditional INTEGER NOT NULL,
    steering_id TEXT,
    model_id TEXT,
    spec_json TEXT NOT NULL,
    saes_json TEXT NOT NULL,
    description TEXT,
    created REAL
);
CREATE TABLE IF NOT EXISTS tasks (
    task TEXT PRIMARY KEY,
    dataset TEXT,
    split TEXT,
    primary_metric TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL,
    role TEXT NOT NULL,
    judge TEXT,
    describe_json TEXT NOT NULL,
    item_limit INTEGER,
    seed INTEGER
);
CREATE TABLE IF NOT EXISTS items (
    config_id TEXT NOT NULL,
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    prompt TEXT,
    output TEXT,
    run_id INTEGER,
    created REAL,
    PRIMARY KEY (config_id, task, item_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    config_id TEXT NOT NULL,
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (config_id, task, item_id, metric)
);
CREATE TABLE IF NOT EXISTS gates (
    config_id TEXT NOT NULL,
    task TEXT NOT NULL,
    batch TEXT NOT NULL,
    fired INTEGER NOT NULL,
    seen INTEGER NOT NULL,
    run_id INTEGER,
    PRIMARY KEY (config_id, task, batch)
);
CREATE TABLE IF NOT EXISTS pairs (
    name TEXT NOT NULL,
    harmful_task TEXT NOT NULL,
    benign_task TEXT NOT NULL,
    PRIMARY KEY (harmful_task, benign_task)
);
CREATE TABLE IF NOT EXISTS attack_runs (
    run_key TEXT PRIMARY KEY,
    attack TEXT NOT NULL,
    config TEXT NOT NULL,
    steering_id TEXT,
    identity_json TEXT NOT NULL,
    created REAL
);
CREATE TABLE IF NOT EXISTS attack_items (
    run_key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    result_json TEXT NOT NULL,
    created REAL,
    PRIMARY KEY (run_key, item_id)
);
CREATE TABLE IF NOT EXISTS attack_states (
    run_key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    state_json TEXT NOT NULL,
    updated REAL,
    PRIMARY KEY (run_key, item_id)
);
CREATE VIEW IF NOT EXISTS results AS
    SELECT m.config_id, m.task, m.item_id, m.metric, m.value, i.output, i.prompt
    FROM metrics m JOIN items i USING (config_id, task, item_id);
"""

ROLES: tuple[TaskRole, ...] = choices(TaskRole)


def config_hash(spec_content: dict, strength: float | None, conditional: bool, method: str) -> str:
    """'cfg-' + 12 hex digits: the identity of one grid point."""
    payload = {"steering": spec_content, "strength": strength, "conditional": bool(conditional), "method": method}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "cfg-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def sae_refs(spec: Any) -> list[dict]:
    """Every SAE reference (source + content hash) in a steering spec, deduplicated."""
    found: dict[str, dict] = {}

    def walk(obj):
        if isinstance(obj, dict):
            if "sha256" in obj and "d_sae" in obj:
                found.setdefault(
                    obj["sha256"],
                    {k: obj.get(k) for k in ("source", "sha256", "layer", "d_in", "d_sae", "architecture")},
                )
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(spec)
    return list(found.values())


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _float(value: Any) -> float | None:
    """SQLite stores NaN as NULL; keep it explicit."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


CONFIG_KEY_COLUMNS: tuple[str, ...] = ("config_id", "name", "label", "method", "family", "strength", "conditional")
"""The columns, in order, that identify a configuration in every exported row.

Declared once here because three places start their rows with them: `Config.row()`,
`rows.ConfigRow.key()` and the report's CSV column lists. It lives in this module, not
in `rows`, because `rows` already depends on the store and the store must not depend on
`rows` (no import cycle)."""


def config_key(config: object) -> dict[str, Any]:
    """`CONFIG_KEY_COLUMNS` of `config` (a `Config` or a `rows.ConfigRow`), in that order.

    Both classes name these fields alike, so one reader serves both instead of each
    spelling out the same seven columns."""
    return {column: getattr(config, column) for column in CONFIG_KEY_COLUMNS}


@dataclass
class Config:
    """One grid point as the store keeps it."""

    config_id: str
    name: str  # the grid method's name (one line in the plots)
    label: str  # the grid point, e.g. "features ×2 (conditional)"
    method: str  # family:detail, e.g. "features:cossim+ig", "dense:actadd", "none"
    family: str
    strength: float | None
    conditional: bool
    steering_id: str | None
    model_id: str | None
    spec: dict
    description: str = ""

    def row(self) -> dict[str, Any]:
        return {
            **config_key(self),
            "steering_id": self.steering_id,
            "model_id": self.model_id,
            "description": self.description,
        }


class ResultsStore:
    """A results database. Use as a context manager or call `close()`.

    with ResultsStore("results.db") as db:
        db.done_items(config_id, "jbb-harmful")         # item ids already computed
        db.estimate(config_id, "jbb-harmful", "refused") # Estimate(value, low, high, n)
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        """`create=True`: open for writing (creating the file and tables if needed).
        `create=False`: open an existing database read-only (see the module docstring)."""
        self.path = Path(path)
        self.readonly = not create
        self._last_checkpoint = time.monotonic()
        if not create and not self.path.is_file():
            raise RefusalScopeError(
                f"results database {self.path} does not exist", "run `refusalscope sweep` first, or check the path"
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.readonly:
                self.conn = self._connect_readonly()
            else:
                self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA foreign_keys=OFF")
            if create:
                self.conn.executescript(_SCHEMA)
                self._add_missing_columns()
            self._check_schema(create)
        except sqlite3.DatabaseError as exc:
            raise RefusalScopeError(f"{self.path} is not a readable refusalscope results database ({exc})") from None

    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that cannot write. With no `-wal` beside the file no writer is
        connected, and the file is complete on its own: it is opened immutable, so SQLite
        creates no `-wal`/`-shm` files (a copied `.db`, a read-only folder). With a `-wal`
        (a sweep running, or killed) it is opened `mode=ro`, which reads the WAL too."""
        from urllib.parse import quote

        uri = "file:" + quote(str(self.path.resolve()))
        wal = Path(str(self.path) + "-wal")
        mode = "?mode=ro" if wal.exists() else "?mode=ro&immutable=1"
        return sqlite3.connect(uri + mode, uri=True, timeout=60.0, isolation_level=None)

    def _add_missing_columns(self) -> None:
        """Columns added after schema 1 was released (older databases lack them)."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        for column, kind in (("pid", "INTEGER"), ("host", "TEXT")):
            if column not in have:
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    def _check_schema(self, create: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables or "metrics" not in tables:
            raise RefusalScopeError(f"{self.path} is an SQLite file but not a refusalscope results database")
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            if create:
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        if not str(row[0]).strip().isdigit():  # a hand-edited or foreign meta table (bad input, not a bug)
            raise RefusalScopeError(
                f"{self.path}: schema version {row[0]!r} is not a number",
                "this is not a results database refusalscope wrote; pass the one `sweep` wrote",
            )
        if int(row[0]) > SCHEMA_VERSION:
            raise RefusalScopeError(
                f"{self.path} was written by a newer refusalscope (schema {row[0]}, this one reads {SCHEMA_VERSION})",
                "upgrade refusalscope",
            )

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if not self.readonly:
            self.checkpoint()
        self.conn.close()

    def checkpoint(self) -> None:
        """Copy the WAL's committed pages into the `.db` file, so that the file alone is
        complete (a reader still in the WAL keeps what it needs; nothing blocks)."""
        if self.readonly:
            return
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError:
            pass  # busy: the next checkpoint copies it
        self._last_checkpoint = time.monotonic()

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store.conn.execute("BEGIN IMMEDIATE")
                return store.conn

            def __exit__(self, kind, value, tb):
                store.conn.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()

    # ------------------------------------------------------------ runs
    def start_run(
        self, model: dict | None, environment: dict | None, grid: dict | None = None, note: str | None = None
    ) -> int:
        """Record a new run (status 'running', this process's id and host); runs left
        'running' by processes that no longer exist are marked 'interrupted' first."""
        versions = (environment or {}).get("versions")
        model_id = (model or {}).get("id")
        self.mark_interrupted_runs()
        with self._transaction() as c:
            cur = c.execute(
                "INSERT INTO runs (started, status, model_id, model_json, environment_json, versions_json, grid_json, note,"
                " pid, host) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    model_id,
                    _dumps(model),
                    _dumps(environment),
                    _dumps(versions),
                    _dumps(grid),
                    note,
                    os.getpid(),
                    socket.gethostname(),
                ),
            )
            return int(cur.lastrowid)

    def mark_interrupted_runs(self) -> list[int]:
        """Mark 'interrupted' every run still 'running' whose process is gone (killed, or
        its machine restarted); a run whose process is alive on this host is left alone.
        Returns the run ids marked."""
        host = socket.gethostname()
        marked = []
        with self._transaction() as c:
            for row in c.execute("SELECT run_id, pid, host FROM runs WHERE status='running'").fetchall():
                if row["pid"] is not None and row["host"] == host and _process_alive(int(row["pid"])):
                    continue
                c.execute("UPDATE runs SET status='interrupted' WHERE run_id=?", (row["run_id"],))
                marked.append(int(row["run_id"]))
        return marked

    def finish_run(self, run_id: int, status: str, computed: int = 0, skipped: int = 0) -> None:
        with self._transaction() as c:
            c.execute(
                "UPDATE runs SET finished=?, status=?, computed=?, skipped=? WHERE run_id=?",
                (time.time(), status, int(computed), int(skipped), run_id),
            )
        self.checkpoint()

    def runs(self) -> list[dict]:
        out = []
        for r in self.conn.execute("SELECT * FROM runs ORDER BY run_id"):
            d = dict(r)
            for key in ("model_json", "environment_json", "versions_json", "grid_json"):
                d[key[:-5]] = json.loads(d.pop(key)) if d.get(key) else None
            out.append(d)
        return out

    # ------------------------------------------------------------ configs and tasks
    def add_config(self, config: Config) -> None:
        """Record a configuration (when its id is already known, only its label is updated)."""
        with self._transaction() as c:
            c.execute(
                "INSERT INTO configs (config_id, name, label, method, family, strength, conditional, steering_id,"
                " model_id, spec_json, saes_json, description, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(config_id) DO UPDATE SET name=excluded.name, label=excluded.label,"
                " description=excluded.description",
                (
                    config.config_id,
                    config.name,
                    config.label,
                    config.method,
                    config.family,
                    config.strength,
                    int(config.conditional),
                    config.steering_id,
                    config.model_id,
                    _dumps(config.spec),
                    _dumps(sae_refs(config.spec)),
                    config.description,
                    time.time(),
                ),
            )

    def configs(self) -> list[dict]:
        out = []
        for r in self.conn.execute("SELECT * FROM configs ORDER BY created, config_id"):
            d = dict(r)
            d["conditional"] = bool(d["conditional"])
            d["spec"] = json.loads(d.pop("spec_json"))
            d["saes"] = json.loads(d.pop("saes_json"))
            out.append(d)
        return out

    def add_task(
        self,
        name: str,
        *,
        dataset: str | None,
        split: str | None,
        primary: str,
        higher_is_better: bool,
        role: TaskRole,
        judge: str | None,
        describe: dict,
        limit: int | None,
        seed: int | None,
    ) -> None:
        """Record a task; a task name already in the store must describe the same task."""
        if role not in ROLES:
            raise RefusalScopeError(f"task '{name}': unknown role '{role}'", f"use one of {', '.join(ROLES)}")
        described = _dumps(describe)
        with self._transaction() as c:
            row = c.execute("SELECT describe_json, primary_metric FROM tasks WHERE task=?", (name,)).fetchone()
            if row is not None:
                if row["describe_json"] != described or row["primary_metric"] != primary:
                    raise RefusalScopeError(
                        f"task '{name}' is already in {self.path.name} with different settings "
                        f"({row['describe_json']} vs {described}); results would mix",
                        "give the changed task another name, or write to a new results database",
                    )
                c.execute("UPDATE tasks SET item_limit=?, seed=? WHERE task=?", (limit, seed, name))
                return
            c.execute(
                "INSERT INTO tasks (task, dataset, split, primary_metric, higher_is_better, role, judge, describe_json,"
                " item_limit, seed) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (name, dataset, split, primary, int(bool(higher_is_better)), role, judge, described, limit, seed),
            )

    def tasks(self) -> list[dict]:
        out = []
        for r in self.conn.execute("SELECT * FROM tasks ORDER BY rowid"):
            d = dict(r)
            d["higher_is_better"] = bool(d["higher_is_better"])
            d["describe"] = json.loads(d.pop("describe_json"))
            out.append(d)
        return out

    def add_pair(self, name: str, harmful_task: str, benign_task: str) -> None:
        with self._transaction() as c:
            c.execute("INSERT OR IGNORE INTO pairs VALUES (?,?,?)", (name, harmful_task, benign_task))

    def pairs(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM pairs ORDER BY rowid")]

    # ------------------------------------------------------------ item results
    def write_batch(
        self,
        config_id: str,
        task: str,
        results: Sequence,
        run_id: int | None = None,
        gate: tuple[int, int] | None = None,
        extra: dict[str, dict[str, float]] | None = None,
    ) -> int:
        """Write one batch of ItemResults (and the gate's counters for it) in one transaction.

        `extra` maps item id -> more metrics for that item (e.g. the gate's decision).
        Returns the number of new items (0 when all were already stored).
        """
        now = time.time()
        with self._transaction() as c:
            before = c.total_changes
            for r in results:
                c.execute(
                    "INSERT OR IGNORE INTO items (config_id, task, item_id, prompt, output, run_id, created)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (config_id, task, str(r.item_id), r.prompt, r.output, run_id, now),
                )
            new = c.total_changes - before
            rows = [(config_id, task, str(r.item_id), str(k), _float(v)) for r in results for k, v in r.metrics.items()]
            for item_id, metrics in (extra or {}).items():
                rows.extend((config_id, task, str(item_id), str(k), _float(v)) for k, v in metrics.items())
            c.executemany("INSERT OR IGNORE INTO metrics VALUES (?,?,?,?,?)", rows)
            if gate is not None and results:
                key = hashlib.sha256("\n".join(sorted(str(r.item_id) for r in results)).encode()).hexdigest()[:16]
                c.execute(
                    "INSERT OR IGNORE INTO gates VALUES (?,?,?,?,?,?)",
                    (config_id, task, key, int(gate[0]), int(gate[1]), run_id),
                )
        self._maybe_checkpoint()
        return new

    def done_items(self, config_id: str, task: str) -> set[str]:
        rows = self.conn.execute("SELECT item_id FROM items WHERE config_id=? AND task=?", (config_id, task))
        return {r[0] for r in rows}

    def count_items(self, config_id: str | None = None, task: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM items WHERE 1=1", []
        if config_id is not None:
            sql += " AND config_id=?"
            args.append(config_id)
        if task is not None:
            sql += " AND task=?"
            args.append(task)
        return int(self.conn.execute(sql, args).fetchone()[0])

    def values(self, config_id: str, task: str, metric: str) -> dict[str, float]:
        """item id -> value (NaN where the task could not score the item), by item id."""
        rows = self.conn.execute(
            "SELECT item_id, value FROM metrics WHERE config_id=? AND task=? AND metric=? ORDER BY item_id",
            (config_id, task, metric),
        )
        return {r[0]: (float("nan") if r[1] is None else float(r[1])) for r in rows}

    def metrics(self, config_id: str, task: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT metric FROM metrics WHERE config_id=? AND task=? ORDER BY metric", (config_id, task)
        )
        return [r[0] for r in rows]

    def estimate(self, config_id: str, task: str, metric: str, seed: int = 0) -> Estimate:
        """Mean of `metric` over the items scored, with a bootstrap CI and n (NaNs left out)."""
        vals = [v for v in self.values(config_id, task, metric).values() if not math.isnan(v)]
        return bootstrap(vals, seed=seed)

    def outputs(self, config_id: str, task: str, item_ids: Iterable[str] | None = None) -> dict[str, dict]:
        """item id -> {'prompt', 'output'}."""
        rows = self.conn.execute(
            "SELECT item_id, prompt, output FROM items WHERE config_id=? AND task=? ORDER BY item_id", (config_id, task)
        )
        wanted = None if item_ids is None else set(map(str, item_ids))
        return {r[0]: {"prompt": r[1], "output": r[2]} for r in rows if wanted is None or r[0] in wanted}

    def gate_rate(self, config_id: str, task: str) -> Estimate | None:
        """How often the conditional gate fired on this cell: from the per-item decisions
        where the sweep recorded them, else from the gate's counters (per forward row)."""
        per_item = [v for v in self.values(config_id, task, "gate_fired").values() if not math.isnan(v)]
        if per_item:
            return rate([v > 0.5 for v in per_item])
        row = self.conn.execute(
            "SELECT SUM(fired), SUM(seen) FROM gates WHERE config_id=? AND task=?", (config_id, task)
        ).fetchone()
        if row is None or not row[1]:
            return None
        fired, seen = int(row[0]), int(row[1])
        return rate([True] * fired + [False] * (seen - fired))

    def rows(self) -> list[dict]:
        """Every (config, task, item, metric) row with its output and prompt (the `results` view)."""
        return [dict(r) for r in self.conn.execute("SELECT * FROM results ORDER BY config_id, task, item_id, metric")]

    # ------------------------------------------------------------ attack results
    def _has_table(self, name: str) -> bool:
        """Whether the table exists (a database written before attack tables, opened read-only, lacks them)."""
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
        return row is not None

    def add_attack_run(self, attack: str, config: str, steering_id: str | None, identity: dict) -> str:
        """Record one attack against one configuration; returns its `run_key` (the same
        identity and name give the same key, so a rerun continues the same rows)."""
        described = _dumps(identity)
        key = "atk-" + hashlib.sha256(_dumps({"identity": identity, "config": config}).encode()).hexdigest()[:16]
        with self._transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO attack_runs (run_key, attack, config, steering_id, identity_json, created)"
                " VALUES (?,?,?,?,?,?)",
                (key, attack, config, steering_id, described, time.time()),
            )
        return key

    def attack_runs(self, attack: str | None = None) -> list[dict]:
        """Recorded attack runs (optionally of one attack kind), oldest first, with their identity."""
        if not self._has_table("attack_runs"):
            return []
        sql, args = "SELECT * FROM attack_runs", []
        if attack is not None:
            sql += " WHERE attack=?"
            args.append(attack)
        out = []
        for r in self.conn.execute(sql + " ORDER BY created, run_key", args):
            d = dict(r)
            d["identity"] = json.loads(d.pop("identity_json"))
            out.append(d)
        return out

    def attack_results(self, run_key: str) -> list[dict]:
        """The finished items of one attack run, in the order they finished."""
        if not self._has_table("attack_items"):
            return []
        rows = self.conn.execute("SELECT result_json FROM attack_items WHERE run_key=? ORDER BY rowid", (run_key,))
        return [json.loads(r[0]) for r in rows]

    def attack_done(self, run_key: str) -> set[str]:
        if not self._has_table("attack_items"):
            return set()
        return {r[0] for r in self.conn.execute("SELECT item_id FROM attack_items WHERE run_key=?", (run_key,))}

    def add_attack_result(self, run_key: str, item_id: str, result: dict) -> bool:
        """Store a finished item and drop its checkpoint, in one transaction; the first
        result stored for an item is kept. Returns whether it was new."""
        with self._transaction() as c:
            before = c.total_changes
            c.execute(
                "INSERT OR IGNORE INTO attack_items (run_key, item_id, result_json, created) VALUES (?,?,?,?)",
                (run_key, str(item_id), _dumps(result), time.time()),
            )
            new = c.total_changes > before
            c.execute("DELETE FROM attack_states WHERE run_key=? AND item_id=?", (run_key, str(item_id)))
        self._maybe_checkpoint()
        return new

    def attack_state(self, run_key: str, item_id: str) -> dict | None:
        """The checkpoint of an item in flight (None: not started, or finished)."""
        if not self._has_table("attack_states"):
            return None
        row = self.conn.execute(
            "SELECT state_json FROM attack_states WHERE run_key=? AND item_id=?", (run_key, str(item_id))
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def save_attack_state(self, run_key: str, item_id: str, state: dict) -> None:
        """Replace the checkpoint of an item in flight (checkpoints, unlike results, move on)."""
        with self._transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO attack_states (run_key, item_id, state_json, updated) VALUES (?,?,?,?)",
                (run_key, str(item_id), _dumps(state), time.time()),
            )
        self._maybe_checkpoint()
