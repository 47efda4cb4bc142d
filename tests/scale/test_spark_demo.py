"""``SHOPSEQ_ENGINE=spark shopseq demo``: the daily graph on Spark local mode into the Parquet lake, then training and
publishing, gives every table a DuckDB home of the same days holds."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from assets.logic.lake import LAKE_TABLES
from bench.run import DAILY_STAGES
from resources.warehouse import Warehouse
from tests.samples import run_cli
from tests.scale.conftest import FAST_SPARK_CONF

pytestmark = pytest.mark.spark

DEMO = ["--days", "4", "--events-per-day", "1000"]
# What two runs of the same days may differ in: the ids and clocks of the runs that wrote a row, and the path of the
# home the landing files lie in.
RUN_SPECIFIC = {"run_id", "champion_run_id", "changed_at", "decided_at", "evaluated_at", "scored_at"}


def _demo(home: Path, tmp_path: Path, engine: str) -> str:
    conf = tmp_path / f"conf-{engine}"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in FAST_SPARK_CONF.items()))
    out = run_cli("demo", *DEMO, home=home, env={"SHOPSEQ_ENGINE": engine, "SPARK_CONF_DIR": str(conf)})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _predict(home: Path, events: Path) -> pd.DataFrame:
    out = home.parent / f"predictions-{home.name}.parquet"
    done = run_cli(
        "predict", "--events", str(events), "--format", "canonical-csv", "--out", str(out), home=home, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_parquet(out)


def _comparable(value, home: str):
    if isinstance(value, list | np.ndarray):
        return repr(list(value))
    if isinstance(value, dict):
        return repr(value)
    return value.replace(home, "<home>") if isinstance(value, str) else value


def _tables(home: Path) -> dict[str, pd.DataFrame]:
    """Every table and view a reader of the home sees, sorted, with the run-specific columns left out."""
    with Warehouse(home=str(home)).connect(read_only=True) as conn:
        names = sorted({r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()})
        frames = {name: conn.execute(f"SELECT * FROM {name}").df() for name in names}
    for name, frame in frames.items():
        frame = frame.drop(columns=[c for c in frame.columns if c in RUN_SPECIFIC])
        for column in frame.columns:
            if frame[column].dtype == object:  # lists and structs compare as their text; home paths as relative
                frame[column] = frame[column].map(lambda v: _comparable(v, str(home)))
        frames[name] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return frames


def test_a_spark_home_publishes_what_a_duckdb_home_publishes(tmp_path):
    spark_home, duckdb_home = tmp_path / "spark", tmp_path / "duckdb"
    stdout = _demo(spark_home, tmp_path, "spark")
    _demo(duckdb_home, tmp_path, "duckdb")
    assert "shopseq_next_item_ranker: champion v1" in stdout
    # the daily tables Spark built are in the lake, one folder per day, and nowhere in the warehouse file
    for table in LAKE_TABLES:
        assert sorted(p.name for p in (spark_home / "lake" / table).iterdir()) == [
            f"day=2025-03-0{d}" for d in range(1, 5)
        ], table
    assert not (duckdb_home / "lake").exists()

    # their suites counted every row on Spark, and passed
    instance = DagsterInstance.from_config(str(spark_home / "dagster_home"))
    for table in LAKE_TABLES:
        key = AssetCheckKey(AssetKey(table), f"{table}_suite")
        (record,) = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
        check = record.event.dagster_event.event_specific_data
        assert check.passed and "over every row in Spark" in check.metadata["validated_by"].text, table

    expected, got = _tables(duckdb_home), _tables(spark_home)
    assert sorted(got) == sorted(expected)
    for table in (*DAILY_STAGES, "ranker_training_set", "recommendations", "next_action_predictions"):
        assert len(expected[table]), f"{table} is empty: the comparison would prove nothing"
    for name in expected:
        pd.testing.assert_frame_equal(
            got[name], expected[name], check_exact=False, rtol=1e-9, atol=1e-9, check_dtype=False, obj=name
        )

    # shopseq predict reads the item side from the lake on a spark home: the same lists and probabilities
    with Warehouse(home=str(duckdb_home)).connect(read_only=True) as conn:
        events = conn.execute(
            """SELECT event_time, user_id, event_type, item_id, category_id, query FROM cleaned_events
               WHERE user_id IN (SELECT user_id FROM cleaned_events ORDER BY event_time DESC, user_id LIMIT 3)
               ORDER BY event_time, event_id"""
        ).df()
    source = tmp_path / "events.csv"
    events.to_csv(source, index=False)
    expected, got = _predict(duckdb_home, source), _predict(spark_home, source)
    assert len(expected) and set(expected["sequence_id"]) == set(events["user_id"])
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=1e-9)
