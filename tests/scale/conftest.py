import importlib.util
import os
import sys

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Without the spark extra these modules cannot even be imported (SQLGlot, the engine): they are left out of the run,
# and the report header says so.
_MISSING = [name for name in ("sqlglot", "pyspark", "distributed") if importlib.util.find_spec(name) is None]
collect_ignore_glob = ["test_spark_*.py", "test_distributed.py"] if _MISSING else []


def pytest_report_header(config):
    if _MISSING:
        missing = ", ".join(_MISSING)
        return f'tests/scale: the Spark and Dask tests are not collected ({missing} missing): pip install -e ".[spark]"'


# Spark on tiny data is all overhead: whole-stage code generation compiles every query (seconds each), adaptive
# execution plans twice, and 200 shuffle partitions are 200 tasks of nothing.
FAST_SPARK_CONF = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.shuffle.partitions": "1",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "1g",
    # the loopback only, whatever the host name resolves to (192.0.2.2 here), and this interpreter for Python UDFs
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.pyspark.python": sys.executable,
}


@pytest.fixture(scope="session")
def spark():
    """The one Spark session of the test run (``local[2]``), shared by every test that needs one."""
    pytest.importorskip("pyspark", reason='the spark tests need the spark extra: pip install -e ".[spark]"')
    from resources.engine import spark_session

    session = spark_session("local[2]", FAST_SPARK_CONF)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
