"""The daily SQL on Spark: each rewrite of the translation (no Spark needed), then every daily statement run on DuckDB
(through its builder) and on Spark (through the lake) over the same generated days, rows compared exactly."""

import datetime as dt
import math

import duckdb
import pytest
import sqlglot
from sqlglot import exp

from assets.logic.candidates import build_candidates_day, covis_pairs_sql
from assets.logic.events import clean_day, load_raw_day
from assets.logic.features import build_item_features_day, build_user_features_day
from assets.logic.sequences import build_sessions_day, build_user_sequences_day
from assets.logic.spark_sql import TranslationError, daily_statements, to_spark
from assets.logic.synthetic import ShopParams, write_day
from assets.logic.warehouse_sql import day_bounds
from bench.run import DAILY_STAGES

pytestmark = pytest.mark.spark

# A few hundred events a day: Spark's cost here is per query, not per row.
TINY_SHOP = ShopParams(seed=11, events_per_day=300, shop_start=dt.date(2025, 3, 1))
DAYS = [TINY_SHOP.shop_start + dt.timedelta(days=i) for i in range(2)]
BOT_EVENTS = 30  # low enough that the tiny shop has bots: is_bot and the bot filters are compared too


def _tree(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="spark")


# -- the translation, statement by statement ---------------------------------------------------------------------


def test_parameters_become_typed_literal_nodes():
    sql = to_spark(
        "SELECT $when AS w, $day AS d, $n AS n, $x AS x, $s AS s, $flag AS f, $ids AS ids",
        {
            "when": dt.datetime(2025, 3, 1, 12, 30, 0, 250000),
            "day": dt.date(2025, 3, 1),
            "n": 7,
            "x": 0.5,
            "s": "it's a \\ value",
            "flag": True,
            "ids": ["a", "b"],
        },
    )
    casts = {c.alias_or_name: c.this for c in _tree(sql).expressions}
    assert casts["w"].to.this == exp.DataType.Type.TIMESTAMPNTZ and casts["w"].this.this == "2025-03-01 12:30:00.250000"
    assert casts["d"].to.this == exp.DataType.Type.DATE and casts["d"].this.this == "2025-03-01"
    assert casts["n"] == exp.Literal.number(7)
    assert casts["x"].to.this == exp.DataType.Type.DOUBLE
    assert casts["s"] == exp.Literal.string("it's a \\ value")  # one string node, quote and backslash escaped
    assert isinstance(casts["f"], exp.Boolean)
    assert [e.this for e in casts["ids"].expressions] == ["a", "b"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, r"parameter \$day has no value"),
        ({"day": dt.datetime(2025, 3, 1, tzinfo=dt.UTC)}, "naive UTC"),
        ({"day": object()}, "cannot be bound"),
    ],
)
def test_parameters_refused(params, message):
    with pytest.raises(TranslationError, match=message):
        to_spark("SELECT $day", params)


def test_unnest_of_a_parameter_list():
    assert to_spark("SELECT unnest($ids) AS id", {"ids": ["a", "b"]}) == "SELECT EXPLODE(ARRAY('a', 'b')) AS id"


def test_side_by_side_unnests_zip_into_one_generator(spark):
    """DuckDB unnests lists side by side; Spark allows one generator per SELECT: the day windows of the
    reconciliation checks (``assets.common.DAY_WINDOWS_SQL``) give DuckDB's rows on Spark."""
    from assets.common import DAY_WINDOWS_SQL, day_windows

    sql = f"SELECT * FROM {DAY_WINDOWS_SQL} b ORDER BY day"
    params = day_windows(DAYS, "Asia/Shanghai", [3, 4])
    assert "INLINE(ARRAYS_ZIP(" in to_spark(sql, params)
    expected = duckdb.sql(sql, params=params).fetchall()
    assert [tuple(r) for r in spark.sql(to_spark(sql, params)).collect()] == expected
    with pytest.raises(TranslationError, match="side-by-side unnests translate only on their own"):
        to_spark("SELECT unnest($a) AS x, unnest($b) AS y, 1 AS z", {"a": [1], "b": [2]})


def test_tables_read():
    from assets.logic.spark_sql import tables_read

    # the candidates read the day's item features; the user features are joined where their rows are read
    assert {"cleaned_events", "item_features"} <= tables_read(daily_statements(DAYS[0])[-1].sql)
    assert "user_features" not in tables_read(daily_statements(DAYS[0])[-1].sql)


def test_one_daily_statement_is_the_tables_own():
    from assets.logic.lake import LAKE_TABLES
    from assets.logic.spark_sql import daily_statement

    every = daily_statements(DAYS[0], "Asia/Shanghai", bot_events_per_day=7)
    assert [s.table for s in every] == list(LAKE_TABLES)
    for statement in every:
        assert daily_statement(statement.table, DAYS[0], "Asia/Shanghai", bot_events_per_day=7) == statement
    assert every[0].params["bot_events_per_day"] == 7
    with pytest.raises(ValueError, match="'raw_events' is not a daily table an engine builds from a statement"):
        daily_statement("raw_events", DAYS[0])


def test_interval_with_parenthesised_quantity():
    assert "INTERVAL 30 MINUTE" in to_spark("SELECT t - INTERVAL (30) MINUTE FROM e", {})


def test_cte_materialisation_hints_are_dropped():
    hinted = "WITH a AS NOT MATERIALIZED (SELECT 1 AS x), b AS MATERIALIZED (SELECT 2 AS y) SELECT * FROM a, b"
    sql = to_spark(hinted, {})
    assert "MATERIALIZED" not in sql.upper() and "WITH a AS (SELECT 1 AS x), b AS (SELECT 2 AS y)" in sql


def test_decimal_literals_divide_as_doubles():
    division = _tree(to_spark("SELECT x / 3600.0 AS h FROM e", {})).find(exp.Div)
    assert isinstance(division.expression, exp.Cast) and division.expression.to.this == exp.DataType.Type.DOUBLE


def test_date_diff_counts_boundaries():
    sql = to_spark("SELECT date_diff('second', a, b) AS s, date_diff('millisecond', a, b) AS ms FROM e", {})
    assert "UNIX_SECONDS(CAST(b AS TIMESTAMP)) - UNIX_SECONDS(CAST(a AS TIMESTAMP))" in sql
    assert "UNIX_MILLIS" in sql and "DATEDIFF" not in sql.upper()


def test_ordered_list_sorts_before_collecting():
    sql = to_spark("SELECT list(x ORDER BY t, id) AS xs FROM e GROUP BY u", {})
    assert "ARRAY_SORT(COLLECT_LIST(STRUCT(t IS NULL AS n0, t AS k0, id IS NULL AS n1, id AS k1, x AS v)))" in sql
    with pytest.raises(TranslationError, match="only ascending"):
        to_spark("SELECT list(x ORDER BY t DESC) FROM e", {})


def test_arg_max_of_a_tuple_skips_null_values():
    sql = to_spark("SELECT arg_max(c, (t, id)) AS c FROM e", {})
    assert "MAX_BY(c, IF(c IS NULL, NULL, STRUCT(t, id)))" in sql


def test_hash_keeps_its_64_bits():
    sql = to_spark("SELECT count(DISTINCT hash(a, b)) AS n FROM e", {})
    assert "COUNT(DISTINCT XXHASH64(a, b))" in sql


def test_star_exclude_expands_from_the_schema_through_ctes():
    sql = to_spark(
        "WITH d AS (SELECT * FROM raw WHERE x > 0) SELECT * EXCLUDE (b, c) FROM d", {}, {"raw": ["a", "b", "c", "x"]}
    )
    assert _tree(sql).expressions == [exp.column("a"), exp.column("x")]
    with pytest.raises(TranslationError, match="add it to schemas"):
        to_spark("SELECT * EXCLUDE (b) FROM raw", {}, {})
    with pytest.raises(TranslationError, match=r"\['z'\]"):
        to_spark("SELECT * EXCLUDE (z) FROM raw", {}, {"raw": ["a"]})


def test_union_all_by_name_aligns_the_branches():
    sql = to_spark("SELECT a, b FROM t UNION ALL BY NAME SELECT c, a FROM u UNION ALL BY NAME SELECT b FROM v", {})
    union = _tree(sql)
    assert "BY NAME" not in sql.upper()
    branches = [union.this.this, union.this.expression, union.expression]
    assert [[p.alias_or_name for p in b.expressions] for b in branches] == [["a", "b", "c"]] * 3
    assert [isinstance(p.this, exp.Null) for p in branches[1].expressions if isinstance(p, exp.Alias)] == [True]


# -- the rewrites on Spark against DuckDB ------------------------------------------------------------------------

# Rows that tell each difference apart: a pair of times 0.2 s apart across a second boundary, a latest row with a
# NULL value, a whole-number division that decimals would round, rows out of time order.
_EDGE_ROWS = """(SELECT * FROM (VALUES
    ('u1', TIMESTAMP '2025-03-01 00:31:02', 'z', NULL, 7),
    ('u1', TIMESTAMP '2025-03-01 00:00:00.900', 'x', 'c1', 10),
    ('u1', TIMESTAMP '2025-03-01 00:00:01.100', 'y', NULL, 20),
    ('u2', TIMESTAMP '2025-03-01 10:00:00', 'a', 'c2', 1)) v(user_id, t, item, category, n))"""
_EDGE_SQL = f"""
SELECT user_id,
       date_diff('second', min(t), max(t)) AS seconds,
       date_diff('millisecond', min(t), max(t)) / 1000.0 AS duration_s,
       sum(n) / 3600.0 AS hours,
       arg_max(category, (t, item)) AS last_category,
       list(item ORDER BY t, item) AS items,
       any_value(category ORDER BY t) AS any_category,
       count(*) FILTER (WHERE t > $start + INTERVAL (30) MINUTE) AS late,
       $label AS label
FROM {_EDGE_ROWS}
GROUP BY user_id
ORDER BY user_id
"""


def test_rewrites_give_duckdbs_rows_on_spark(spark):
    sql = _EDGE_SQL
    params = {"start": dt.datetime(2025, 3, 1), "label": "it's \\n"}
    expected = duckdb.sql(sql.replace("$start", "CAST($start AS TIMESTAMP)"), params=params).fetchall()
    got = [tuple(r) for r in spark.sql(to_spark(sql, params)).collect()]
    assert expected[0][1] == got[0][1] == 31 * 60 + 2  # boundaries crossed; 1861 s elapsed
    _assert_same_rows(expected, [tuple(list(v) if isinstance(v, list) else v for v in r) for r in got])
    # SQLGlot alone counts the seconds elapsed: the boundary rewrite is what makes them equal
    plain = spark.sql(
        sqlglot.transpile(
            "SELECT date_diff('second', TIMESTAMP '2025-03-01 00:00:00.900', TIMESTAMP '2025-03-01 00:00:01.100')",
            read="duckdb",
            write="spark",
        )[0]
    )
    assert plain.collect()[0][0] == 0


# -- every daily statement on both engines -----------------------------------------------------------------------


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b


def _assert_same_rows(expected: list[tuple], got: list[tuple]) -> None:
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert len(want) == len(have) and all(_close(a, b) for a, b in zip(want, have)), (want, have)


@pytest.fixture(scope="module")
def engines(spark, tmp_path_factory):
    """The same generated days through the DuckDB builders (a warehouse file) and through the Spark lake."""
    from resources.engine import SparkLake

    home = tmp_path_factory.mktemp("spark-parity")
    conn = duckdb.connect(str(home / "warehouse.duckdb"))
    for day in DAYS:
        load_raw_day(conn, [write_day(TINY_SHOP, day, str(home / "landing"))], day)
        clean_day(conn, day, BOT_EVENTS)
        build_sessions_day(conn, day)
        build_user_sequences_day(conn, day)
        build_user_features_day(conn, day)
        build_item_features_day(conn, day)
        build_candidates_day(conn, day)
    # the raw stage reads landing files with DuckDB's reader and stays there: Spark starts from its rows
    conn.table("raw_events").write_parquet(str(home / "raw_events.parquet"))
    spark.read.parquet(str(home / "raw_events.parquet")).createOrReplaceTempView("raw_import")
    lake = SparkLake(spark, str(home))
    written = {}
    for day in DAYS:
        start, end = day_bounds(day)
        written["raw_events", day] = lake.replace_day(
            "raw_events",
            day,
            start,
            end,
            "SELECT * FROM raw_import WHERE event_time >= $start AND event_time < $end",
            {"start": start, "end": end},
        )
        for statement in daily_statements(day, bot_events_per_day=BOT_EVENTS):
            written[statement.table, day] = lake.replace_day(
                statement.table, day, statement.start, statement.end, statement.sql, statement.params
            )
    yield conn, home, lake, written
    conn.close()


@pytest.mark.parametrize("table", DAILY_STAGES)
def test_daily_table_equal_on_both_engines(engines, table):
    from assets.logic.schema import DAILY_TABLES
    from resources.engine import attach_lake

    conn, home, _, written = engines
    lake = duckdb.connect()
    assert attach_lake(lake, str(home), [table]) == [table]

    # read back through DuckDB's view of the lake: the CLI's way in, with the table's own column types
    def shape(c):
        return [row[:2] for row in c.sql(f"DESCRIBE {table}").fetchall()]

    assert shape(lake) == shape(conn)
    expected = conn.sql(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
    got = lake.sql(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
    assert expected, f"{table} is empty: the comparison would prove nothing"
    _assert_same_rows(expected, got)
    column = DAILY_TABLES[table]
    per_day = dict(lake.sql(f"SELECT CAST({column} AS DATE), count(*) FROM {table} GROUP BY 1").fetchall())
    assert {day: written[table, day] for day in DAYS} == {day: per_day.get(day, 0) for day in DAYS}


def test_bots_are_flagged_in_both(engines):
    conn, *_ = engines
    assert conn.sql("SELECT count(DISTINCT user_id) FROM cleaned_events WHERE is_bot").fetchall()[0][0] > 0


def test_covis_pairs_equal_on_both_engines(engines, spark):
    conn, _, lake, _ = engines
    cutoff = day_bounds(DAYS[-1])[1]
    expected = conn.sql(f"SELECT * FROM ({covis_pairs_sql()}) ORDER BY ALL", params={"cutoff": cutoff}).fetchall()
    lake.register_views(["cleaned_events"])
    got = spark.sql(to_spark(covis_pairs_sql(), {"cutoff": cutoff}, lake.schemas())).collect()
    assert expected
    _assert_same_rows(expected, sorted(tuple(r) for r in got))
