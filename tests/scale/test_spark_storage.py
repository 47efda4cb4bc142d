"""The Spark lake's replace-one-day contract: a day re-run replaces that day's folder only, a failed write leaves the
previous rows, and DuckDB reads the lake; the engine setting picks DuckDB or Spark."""

import datetime as dt

import duckdb
import pytest

from assets.logic.spark_sql import TranslationError
from resources.engine import SparkLake, attach_lake

pytestmark = pytest.mark.spark

DAYS = [dt.date(2025, 3, 1) + dt.timedelta(days=i) for i in range(3)]
# one day of user_sequences from the rows of the temp view ``incoming`` (a DATE day column)
SEQUENCES = """SELECT CAST($day AS DATE) AS day, user_id, n_events, 1 AS n_sessions, [item] AS items,
                      ['view'] AS event_types
               FROM incoming WHERE day = $day"""


def _incoming(spark, rows: list[tuple]) -> None:
    spark.createDataFrame(rows, "day DATE, user_id STRING, n_events BIGINT, item STRING").createOrReplaceTempView(
        "incoming"
    )


def _day_files(lake: SparkLake, day: dt.date) -> dict[str, bytes]:
    folder = lake.path("user_sequences") / f"day={day.isoformat()}"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def _rows(home) -> list[tuple]:
    conn = duckdb.connect()
    attach_lake(conn, str(home))
    return conn.sql("SELECT day, user_id, n_events, items FROM user_sequences ORDER BY ALL").fetchall()


def _replace(lake: SparkLake, day: dt.date) -> int:
    return lake.replace_day("user_sequences", day, day, day + dt.timedelta(days=1), SEQUENCES, {"day": day})


@pytest.fixture
def lake(spark, tmp_path):
    lake = SparkLake(spark, str(tmp_path))
    _incoming(spark, [(day, f"u{i}", i + 1, f"i{i}") for day in DAYS for i in range(3)])
    assert [_replace(lake, day) for day in DAYS] == [3, 3, 3]
    return lake


def test_rerunning_a_day_replaces_only_that_day(lake, spark, tmp_path):
    before = {day: _day_files(lake, day) for day in DAYS}
    _incoming(spark, [(DAYS[1], "u9", 9, "i9")])
    assert _replace(lake, DAYS[1]) == 1
    assert {day: _day_files(lake, day) for day in (DAYS[0], DAYS[2])} == {d: before[d] for d in (DAYS[0], DAYS[2])}
    rows = _rows(tmp_path)
    assert [r for r in rows if r[0] == DAYS[1]] == [(DAYS[1], "u9", 9, ["i9"])]
    assert len(rows) == 7
    # a day whose statement now returns nothing is emptied, as DELETE + INSERT leaves it in DuckDB
    _incoming(spark, [])
    assert _replace(lake, DAYS[1]) == 0
    assert {r[0] for r in _rows(tmp_path)} == {DAYS[0], DAYS[2]}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(DAYS[1], None, 1, "i1")], "user_sequences.user_id is NULL"),
        ([(DAYS[1], "u1", 1, "i1")], "outside the day"),
    ],
)
def test_a_failed_write_leaves_the_previous_day(lake, spark, tmp_path, rows, message):
    before = _day_files(lake, DAYS[1])
    _incoming(spark, rows)
    statement = SEQUENCES if "NULL" in message else SEQUENCES.replace("CAST($day AS DATE) AS day", "$other AS day")
    with pytest.raises(Exception, match=message):
        lake.replace_day(
            "user_sequences",
            DAYS[1],
            DAYS[1],
            DAYS[2],
            statement,
            {"day": DAYS[1], "other": DAYS[2]},
        )
    assert _day_files(lake, DAYS[1]) == before
    assert len(_rows(tmp_path)) == 9
    # the staging folder of the failed job is gone: readers see the days and nothing else
    assert sorted(p.name for p in lake.path("user_sequences").iterdir() if not p.name.startswith("_")) == [
        f"day={d.isoformat()}" for d in DAYS
    ]


def test_the_lake_refuses_columns_the_table_lacks(lake):
    with pytest.raises(ValueError, match=r"columns \['surprise'\]"):
        lake.replace_day("user_sequences", DAYS[0], DAYS[0], DAYS[1], "SELECT 1 AS surprise, user_id FROM incoming", {})
    with pytest.raises(TranslationError, match=r"\$day has no value"):
        lake.replace_day("user_sequences", DAYS[0], DAYS[0], DAYS[1], SEQUENCES, {})


def test_suite_expectations_count_the_same_rows_on_spark(spark):
    """The suites' row-wise expectations (``expectations.sql``), compiled once and run through the translation on
    Spark, give DuckDB's outcomes (which ``tests/unit/test_expectations.py`` holds to GX's)."""
    from expectations.sql import sql_outcomes
    from resources.engine import SparkConnection
    from tests.unit.test_expectations import PARITY_EXPECTATIONS

    conn = duckdb.connect()
    conn.execute("""CREATE TABLE frame AS SELECT * REPLACE (CAST(price AS DOUBLE) AS price) FROM (VALUES
        ('a', 1.0, 1, 'view', '1'), ('a', -2.0, 2, 'teleport', '2'), (NULL, NULL, 2, NULL, '2'),
        ('b', 7.0, 3, 'purchase', NULL), ('b', 3.0, 3, 'view', NULL), ('c', 0.0, 9, 'fly', '3'))
        v(user_id, price, rank, event_type, event_id)""")
    spark.createDataFrame(
        conn.sql("SELECT * FROM frame").fetchall(),
        "user_id STRING, price DOUBLE, rank INT, event_type STRING, event_id STRING",
    ).createOrReplaceTempView("frame")
    relation = "(SELECT * FROM frame WHERE rank >= $low)"
    by_duckdb = sql_outcomes(conn, relation, {"low": 1}, PARITY_EXPECTATIONS)
    by_spark = sql_outcomes(SparkConnection(spark), relation, {"low": 1}, PARITY_EXPECTATIONS)
    assert by_duckdb[0] == by_spark[0] == 6
    assert [o["success"] for o in by_spark[1]] == [o["success"] for o in by_duckdb[1]]
    assert [o["unexpected_count"] for o in by_spark[1]] == [o["unexpected_count"] for o in by_duckdb[1]]
    assert [o["examples"] for o in by_spark[1]] == [o["examples"] for o in by_duckdb[1]]
    assert by_spark[1][4]["examples"] == ["fly", "teleport"]


def test_the_engine_finds_its_lake_once(spark, tmp_path, monkeypatch):
    """``Engine.lake()`` sets the lake's SQL settings on the session once, not at every build, check and count."""
    from resources.engine import Engine

    engine = Engine(home=str(tmp_path))
    lake = engine.lake()
    assert lake.spark is spark and spark.conf.get("spark.sql.sources.partitionOverwriteMode") == "dynamic"

    def again(self, spark, home):
        raise AssertionError("a second SparkLake would set the settings again")

    monkeypatch.setattr(SparkLake, "__init__", again)
    assert engine.lake() is lake
