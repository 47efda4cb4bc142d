"""The engine setting: which engine a home's daily tables are built on, recorded once and kept."""

import datetime as dt
import json

import duckdb
import pytest

from resources.engine import ENGINE_VARIABLE, Engine, resolve_engine, withdraw_lake_days
from resources.home import SettingsInvalid, read_settings

DAY = dt.date(2025, 3, 1)


def test_duckdb_is_the_default_and_replaces_a_day_in_the_warehouse(tmp_path, monkeypatch):
    monkeypatch.delenv(ENGINE_VARIABLE, raising=False)
    engine = Engine(home=str(tmp_path))
    select = "SELECT CAST($day AS DATE) AS day, 'u1' AS user_id, 2 AS n_events"
    next_day = DAY + dt.timedelta(days=1)
    assert engine.replace_day("user_sequences", DAY, DAY, next_day, select, {"day": DAY}) == 1
    assert engine.replace_day("user_sequences", DAY, DAY, next_day, select, {"day": DAY}) == 1
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        assert conn.sql("SELECT day, user_id, n_events FROM user_sequences").fetchall() == [(DAY, "u1", 2)]
    assert not (tmp_path / "lake").exists()
    assert read_settings(str(tmp_path))["engine"] == "duckdb"


def test_a_home_keeps_the_engine_it_started_with(tmp_path, monkeypatch):
    home = str(tmp_path)
    monkeypatch.setenv(ENGINE_VARIABLE, "spark")
    assert Engine(home=home).name == "spark"
    assert json.loads((tmp_path / "settings.json").read_text()) == {"engine": "spark"}
    monkeypatch.delenv(ENGINE_VARIABLE)
    assert Engine(home=home).name == "spark"  # the recorded engine, without the variable
    monkeypatch.setenv(ENGINE_VARIABLE, "duckdb")
    with pytest.raises(SettingsInvalid, match=r"builds its daily tables on spark .* SHOPSEQ_ENGINE=duckdb asks"):
        _ = Engine(home=home).name
    with pytest.raises(SettingsInvalid, match="the Engine resource's engine=duckdb"):
        _ = Engine(home=home, engine="duckdb").name


def test_spark_is_refused_on_a_home_a_duckdb_run_has_written(tmp_path):
    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()
    with pytest.raises(SettingsInvalid, match="SHOPSEQ_ENGINE=spark needs a new --home"):
        resolve_engine(str(tmp_path), "spark")
    assert "engine" not in read_settings(str(tmp_path))


@pytest.mark.parametrize("value", ["presto", "Spark", "duckdb "])
def test_an_unknown_engine_is_named_with_the_setting_that_asked_for_it(tmp_path, monkeypatch, value):
    monkeypatch.setenv(ENGINE_VARIABLE, value)
    with pytest.raises(ValueError, match=rf"SHOPSEQ_ENGINE='{value}' is not an engine: one of duckdb, spark"):
        _ = Engine(home=str(tmp_path)).name
    (tmp_path / "settings.json").write_text(json.dumps({"engine": value}))
    with pytest.raises(SettingsInvalid, match="engine holds"):
        read_settings(str(tmp_path))


def test_withdrawn_days_leave_the_lake(tmp_path):
    for table in ("raw_events", "cleaned_events", "ranking_candidates"):
        for day in (DAY, DAY + dt.timedelta(days=1)):
            folder = tmp_path / "lake" / table / f"day={day}"
            folder.mkdir(parents=True)
            (folder / "part-0.parquet").write_bytes(b"")
    assert withdraw_lake_days(str(tmp_path), [DAY]) == {"raw_events": 1, "cleaned_events": 1, "ranking_candidates": 1}
    assert sorted(p.name for p in (tmp_path / "lake" / "cleaned_events").iterdir()) == ["day=2025-03-02"]
    assert withdraw_lake_days(str(tmp_path), [DAY]) == {}


def _write_sequences_day(lake, day: dt.date, users: list[str]) -> None:
    """One day of the lake's user_sequences as Spark leaves it (the day in the folder name, not in the file)."""
    from assets.logic.lake import replace_day_folder

    rows = duckdb.sql(
        "SELECT unnest($users) AS user_id, 1 AS n_events, 1 AS n_sessions, ['i1'] AS items, ['view'] AS event_types",
        params={"users": users},
    )
    replace_day_folder(lake, "user_sequences", day, lambda folder: rows.write_parquet(str(folder / "part-0.parquet")))


def test_a_spark_homes_connections_read_the_lakes_current_days_through_views_built_once(tmp_path, monkeypatch):
    pytest.importorskip("sqlglot", reason='the lake views need the spark extra: pip install -e ".[spark]"')
    import assets.logic.lake as lake_module
    from resources.warehouse import Warehouse

    built = []
    select = lake_module.lake_select
    monkeypatch.setattr(lake_module, "lake_select", lambda lake, table: built.append(table) or select(lake, table))
    lake = tmp_path / "lake"
    warehouse = Warehouse(home=str(tmp_path))
    with warehouse.connect() as conn:  # before the lake exists: no views, none built
        assert conn.sql("SELECT count(*) FROM duckdb_views() WHERE temporary AND NOT internal").fetchall() == [(0,)]
    _write_sequences_day(lake, DAY, ["u1", "u2"])
    with warehouse.connect(read_only=True) as conn:
        assert conn.sql("SELECT day, count(*) FROM user_sequences GROUP BY day").fetchall() == [(DAY, 2)]
        # a day written while the connection is open is read by it
        _write_sequences_day(lake, DAY + dt.timedelta(days=1), ["u3"])
        assert conn.sql("SELECT count(*) FROM user_sequences").fetchall() == [(3,)]
    with warehouse.connect() as conn:
        with pytest.raises(duckdb.CatalogException):
            conn.execute("INSERT INTO user_sequences (day, user_id) VALUES (?, 'u9')", [DAY])
        assert conn.sql("SELECT count(*) FROM user_sequences").fetchall() == [(3,)]
        assert conn.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'user_sequences'").fetchall() == [(0,)]
    # the views' statements were built once for the resource, on the first connection that found the lake
    assert sorted(built) == sorted(lake_module.LAKE_TABLES)


def test_a_failed_lake_day_write_leaves_the_previous_day_readable(tmp_path):
    pytest.importorskip("sqlglot", reason='the lake views need the spark extra: pip install -e ".[spark]"')
    from assets.logic.lake import attach_lake, replace_day_folder

    lake = tmp_path / "lake"
    _write_sequences_day(lake, DAY, ["u1", "u2"])

    def fail(folder):
        (folder / "part-0.parquet").write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_day_folder(lake, "user_sequences", DAY, fail)
    conn = duckdb.connect()
    assert attach_lake(conn, lake) == ["user_sequences"]
    assert conn.sql("SELECT user_id FROM user_sequences ORDER BY 1").fetchall() == [("u1",), ("u2",)]
    assert [p.name for p in (lake / "user_sequences").iterdir()] == [f"day={DAY}"]
    assert not any((lake / ".staging").rglob("*.parquet"))  # the half-written files went with the failure


def test_settings_written_by_many_writers_at_once_keep_every_value(tmp_path):
    """Processes starting on a new home at once each record settings: every write must succeed and none may be
    lost (threads open the lock file each, so they take turns as processes do)."""
    from concurrent.futures import ThreadPoolExecutor

    from resources.home import write_settings

    def write(n: int) -> None:
        for i in range(20):
            write_settings(str(tmp_path), **{f"writer_{n}": i})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))  # re-raises a writer's error
    assert read_settings(str(tmp_path)) == {f"writer_{n}": 19 for n in range(8)}
