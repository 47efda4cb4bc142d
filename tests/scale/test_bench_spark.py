"""``shopseq bench --engine spark``: the day's stages on Spark local[2] and local[1] beside DuckDB, from the raw
events the pipeline wrote (a small day; no timing assertions)."""

import pytest

pytestmark = pytest.mark.spark


def test_the_benchmark_runs_the_days_stages_on_spark_with_the_rows_duckdb_wrote(tmp_path):
    from bench.data import make_day
    from bench.run import DAILY_STAGES, SPARK_MASTERS, _run_worker, spark_report

    landing = make_day(tmp_path, 3000)
    duckdb_run = _run_worker("shopseq", home=tmp_path, landing=landing)
    run = {f"spark {master}": _run_worker("spark", home=tmp_path, master=master) for master in SPARK_MASTERS}
    for master in SPARK_MASTERS:
        assert run[f"spark {master}"]["rows"] == duckdb_run["rows"], master
        assert [s["stage"] for s in run[f"spark {master}"]["stages"]] == ["spark_session", *DAILY_STAGES]
    text = spark_report(3000, {s["stage"]: s for s in duckdb_run["stages"]}, run)
    assert "| **landing → features**" in text and "local[1] / local[2]" in text and "Spark local[2] / DuckDB" in text
