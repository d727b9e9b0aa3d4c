"""The columns that identify a configuration are declared once (`store.CONFIG_KEY_COLUMNS`)
and every exported row starts with them in that order: `Config.row()`, `ConfigRow.key()`
and the report's CSV column lists must not drift apart."""

from __future__ import annotations

from refusalscope.evaluation.rows import ConfigRow, read_configs
from refusalscope.evaluation.store import CONFIG_KEY_COLUMNS, Config, ResultsStore
from refusalscope.report import CELL_COLUMNS, COLUMNS

EXPECTED_KEY = {
    "config_id": "cfg-1",
    "name": "actadd",
    "label": "actadd ×2 (conditional)",
    "method": "dense:actadd",
    "family": "dense",
    "strength": 2.0,
    "conditional": True,
}


def _config() -> Config:
    return Config(
        config_id="cfg-1",
        name="actadd",
        label="actadd ×2 (conditional)",
        method="dense:actadd",
        family="dense",
        strength=2.0,
        conditional=True,
        steering_id="st-1",
        model_id="tiny",
        spec={},
        description="a test point",
    )


def test_config_row_starts_with_the_key_columns_in_order():
    row = _config().row()
    assert list(row) == [*CONFIG_KEY_COLUMNS, "steering_id", "model_id", "description"]
    assert {k: row[k] for k in CONFIG_KEY_COLUMNS} == EXPECTED_KEY
    assert row["steering_id"] == "st-1" and row["model_id"] == "tiny" and row["description"] == "a test point"


def test_stored_config_row_key_matches_the_config(tmp_path):
    with ResultsStore(tmp_path / "r.db") as db:
        db.add_config(_config())
        (stored,) = read_configs(db)
    assert isinstance(stored, ConfigRow)
    key = stored.key()
    assert list(key) == list(CONFIG_KEY_COLUMNS)
    assert key == EXPECTED_KEY


def test_report_columns_use_the_same_key():
    n = len(CONFIG_KEY_COLUMNS)
    assert tuple(CELL_COLUMNS[:n]) == CONFIG_KEY_COLUMNS
    assert tuple(COLUMNS["selective_refusal"][:n]) == CONFIG_KEY_COLUMNS
    assert tuple(COLUMNS["tradeoff"][1 : n + 1]) == CONFIG_KEY_COLUMNS
