import json

import pandas as pd
import pytest

from assets import ALL_ASSETS
from expectations.adapter import SUITES, validate


def test_failed_expectations_are_named_with_offending_values():
    frame = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2025-03-01 10:00"] * 3),
            "user_id": ["a", "b", "c"],
            "session_id": "s",
            "event_type": ["view", "teleport", "purchase"],
            "item_id": "i",
            "category_id": "c",
            "price": [1.0, -2.0, 3.0],
            "query": None,
            "event_id": ["1", "2", "3"],
            "source_file": "f",
            "source_line": [1, 2, 3],
        }
    )
    result = validate(frame, "raw_events", "raw_events_suite")
    assert not result.passed
    failures = result.metadata["failures"].value
    by_type = {f["expectation"].split("(")[0]: f for f in failures}
    assert by_type["expect_column_values_to_be_in_set"]["examples"] == ["teleport"]
    assert by_type["expect_column_values_to_be_between"]["examples"] == ["-2.0"]
    assert result.metadata["failed_expectations"].value == 2


def test_valid_frame_passes():
    frame = pd.DataFrame({"model_name": ["a", "b"], "champion_version": [1, 2], "decision": "kept", "reason": "r"})
    assert validate(frame, "champion_promotion").passed


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.json")), ids=lambda p: p.stem)
def test_suites_are_valid_gx_suites(path):
    import great_expectations as gx

    spec = json.loads(path.read_text())
    suite = gx.ExpectationSuite(name=spec["name"], expectations=spec["expectations"])
    assert spec["name"] == path.stem and len(suite.expectations) >= 3


def test_every_asset_has_a_blocking_suite_check():
    for asset in ALL_ASSETS:
        specs = list(asset.check_specs)
        assert any(s.blocking and s.name.endswith("_suite") for s in specs), asset.key
        suite_names = {s.name.removesuffix("_suite") for s in specs if s.name.endswith("_suite")}
        assert any((SUITES / f"{n}.json").exists() for n in suite_names), asset.key


PARITY_EXPECTATIONS = [
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "user_id"}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "price", "min_value": 0}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "price", "max_value": 5.0}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "rank", "min_value": 1, "max_value": 3}},
    {
        "type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "event_type", "value_set": ["view", "purchase"]},
    },
    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "event_id"}},
    {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["user_id", "rank"]}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 7}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
]


def test_duckdb_counts_the_same_unexpected_rows_as_gx():
    """Each row-wise expectation counted in DuckDB agrees with GX on the same rows (success and count)."""
    import duckdb

    from expectations.adapter import run_suite
    from expectations.sql import counted_in_sql, sql_outcomes

    frame = pd.DataFrame(
        {
            "user_id": ["a", "a", None, "b", "b", "c"],
            "price": [1.0, -2.0, None, 7.0, 3.0, 0.0],
            "rank": [1, 2, 2, 3, 3, 9],
            "event_type": ["view", "teleport", None, "purchase", "view", "fly"],
            "event_id": ["1", "2", "2", None, None, "3"],
        }
    )
    assert all(counted_in_sql(e) for e in PARITY_EXPECTATIONS)
    conditioned = {
        "type": "expect_column_values_to_not_be_null",
        "kwargs": {"column": "user_id", "row_condition": "price>0", "condition_parser": "pandas"},
    }
    assert not counted_in_sql(conditioned)  # left to GX
    by_gx = run_suite(frame, "raw_events", PARITY_EXPECTATIONS)
    with duckdb.connect() as conn:
        conn.register("frame", frame)
        rows, by_sql = sql_outcomes(conn, "frame", {}, PARITY_EXPECTATIONS)
    assert rows == 6
    assert (
        [o["success"] for o in by_sql]
        == [o["success"] for o in by_gx]
        == [False, False, False, False, False, False, False, False, True]
    )
    assert [o["unexpected_count"] for o in by_sql] == [o["unexpected_count"] for o in by_gx]
    assert by_sql[4]["examples"] == ["fly", "teleport"] and by_sql[5]["examples"] == ["2"]


def test_keys_that_share_a_hash_are_not_duplicates(monkeypatch):
    """Uniqueness is counted by distinct key hashes in the suite's one scan; where the hashes are fewer than the
    keys the keys themselves are grouped, so two distinct keys that share a hash are no failure."""
    import duckdb

    from expectations import sql

    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "rank": [1, 2, 1]})
    compound, single = PARITY_EXPECTATIONS[6], {**PARITY_EXPECTATIONS[5], "kwargs": {"column": "user_id"}}
    with duckdb.connect() as conn:
        conn.register("frame", frame)
        counted = [o["unexpected_count"] for o in sql.sql_outcomes(conn, "frame", {}, [compound, single])[1]]
        monkeypatch.setattr(sql, "_hash_collisions_sql", lambda unique: "1")  # as if two keys shared a hash
        grouped = sql.sql_outcomes(conn, "frame", {}, [compound, single])[1]
    assert counted == [o["unexpected_count"] for o in grouped] == [0, 2]
    assert [o["success"] for o in grouped] == [True, False] and grouped[1]["examples"] == ["a"]
    # a key missing in part is a key (two such rows are duplicates); missing altogether it is ignored, as by GX
    from expectations.adapter import run_suite

    partly = pd.DataFrame({"user_id": [None, None, None, None, "a"], "rank": [2, 2, None, None, 2]})
    with duckdb.connect() as conn:
        conn.register("partly", partly)
        monkeypatch.undo()
        by_sql = sql.sql_outcomes(conn, "partly", {}, [compound])[1]
    assert (
        [o["unexpected_count"] for o in by_sql]
        == [o["unexpected_count"] for o in run_suite(partly, "raw_events", [compound])]
        == [2]
    )


def test_window_suite_counts_every_row_not_only_what_gx_reads(tmp_path):
    """One bad price among 50,000 rows fails the suite even when GX reads 100 rows."""
    import duckdb

    from expectations import validate_window

    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        conn.execute("""
            CREATE TABLE raw_events AS SELECT TIMESTAMP '2025-03-01' + INTERVAL (i) SECOND AS event_time,
                   'u' || (i % 97) AS user_id, 's' AS session_id, 'view' AS event_type, 'i' || (i % 13) AS item_id,
                   'c' AS category_id, CASE WHEN i = 31337 THEN -1.5 ELSE 2.0 END AS price, NULL::VARCHAR AS query,
                   'e' || i AS event_id, 'f' AS source_file, i AS source_line
            FROM range(50000) t(i)""")
        check, head = validate_window(
            conn,
            "(SELECT * FROM raw_events WHERE event_time >= $start)",
            {"start": pd.Timestamp("2025-03-01")},
            "raw_events",
            "raw_events_suite",
            gx_rows=100,
        )
    assert len(head) == 100 and not check.passed
    assert check.metadata["rows_validated"].value == 50000
    (failure,) = check.metadata["failures"].value
    assert failure["expectation"].startswith("expect_column_values_to_be_between") and failure["unexpected_count"] == 1
    assert failure["examples"] == ["-1.5"]
