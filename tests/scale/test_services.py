"""The services a team runs shopseq on, started here on 127.0.0.1: the Dagster instance on PostgreSQL (two partitions
run from two processes at once), and the MLflow tracking server on PostgreSQL with its artifacts in an S3 stand-in
(moto's server), used through shopseq's own registry. Kubernetes, Helm and real S3 are not tested (deploy/README.md).

PostgreSQL is Debian's (``apt-get install postgresql``): a throwaway cluster in a temporary folder, on a free port,
its socket in that folder, run as ``nobody`` when the tests run as root (``initdb`` and ``postgres`` refuse root).
Every server runs in its own process group and is stopped by group, and every folder is removed, on failure too.
Without PostgreSQL or the platform extra the module skips, unless ``SHOPSEQ_REQUIRE_SERVICES`` is set (CI)."""

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def _postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: on the PATH, else Debian's newest /usr/lib/postgresql/<N>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _services_missing() -> str | None:
    for module in ("dagster_postgres", "psycopg2", "boto3", "moto"):
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed (the platform extra: pip install -e ".[platform]")'
    if _postgres_bin() is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as nobody"
    return None


_missing = _services_missing()
if _missing and os.environ.get("SHOPSEQ_REQUIRE_SERVICES"):
    raise RuntimeError(f"service tests required (SHOPSEQ_REQUIRE_SERVICES) but {_missing}")
if _missing:
    pytest.skip(f"service tests: {_missing}", allow_module_level=True)

import boto3  # noqa: E402
import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psycopg2  # noqa: E402
from dagster import AssetKey, AssetSelection, DagsterInstance, DagsterRunStatus  # noqa: E402
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from resources import LandingSource  # noqa: E402
from resources.registry import CHAMPION, ModelRegistry  # noqa: E402
from tests.conftest import SMALL_SHOP, shop_days  # noqa: E402
from tests.samples import stop_process_group  # noqa: E402
from workflows.cli import DAGSTER_POSTGRES_URL_VARIABLE, UsageError, prepare_home  # noqa: E402
from workflows.definitions import defs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
POSTGRES_BIN = _postgres_bin()
pytestmark = pytest.mark.spark

DAYS = shop_days(2)
DAY_LOCAL_GROUPS = ("ingestion", "cleaning", "sequences")  # a day's rows read no other day
BUCKET = "shopseq-models"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until(ready, what: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}): {log.read_text()[-3000:]}")
        try:
            ready()
            return
        except (OSError, psycopg2.OperationalError):
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer within {seconds:.0f} s: {log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Postgres:
    port: int

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of a database (Dagster's and MLflow's form)."""
        return f"postgresql+psycopg2://shopseq@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="shopseq", dbname=database)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster with the databases ``dagster`` and ``mlflow``, user ``shopseq``, trust on 127.0.0.1."""
    folder = Path(tempfile.mkdtemp(prefix="shopseq-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    server = None
    try:
        data, log = folder / "data", folder / "postgres.log"
        subprocess.run(
            [*as_user, str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "shopseq", "--auth=trust", "-E", "UTF8"]
            + ["--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
        )
        port = _free_port()
        server = subprocess.Popen(
            [*as_user, str(POSTGRES_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        cluster = Postgres(port)
        _wait_until(lambda: cluster.connect("postgres").close(), "PostgreSQL", server, log)
        admin = cluster.connect("postgres")
        admin.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE dagster")
            cursor.execute("CREATE DATABASE mlflow")
        admin.close()
        yield cluster
    finally:
        if server is not None:
            stop_process_group(server, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


def _set_environment(monkeypatch, home: Path, url: str | None) -> None:
    """The variables ``prepare_home`` reads and sets, through ``monkeypatch`` so the test restores them."""
    monkeypatch.setenv("SHOPSEQ_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    if url is None:
        monkeypatch.delenv(DAGSTER_POSTGRES_URL_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(DAGSTER_POSTGRES_URL_VARIABLE, url)


def test_the_cli_writes_the_postgres_instance_settings_and_keeps_a_users_own(tmp_path, monkeypatch):
    home = tmp_path / "home"
    settings = home / "dagster_home" / "dagster.yaml"
    url = "postgresql+psycopg2://dagster:s3cret@db.example:5432/dagster"
    _set_environment(monkeypatch, home, url)
    prepare_home(str(home))
    written = settings.read_text()
    assert f"env: {DAGSTER_POSTGRES_URL_VARIABLE}" in written and "s3cret" not in written  # the name, not the URL
    monkeypatch.delenv(DAGSTER_POSTGRES_URL_VARIABLE)
    prepare_home(str(home))  # the variable unset again: back to the sqlite instance
    assert "postgres" not in settings.read_text().split("telemetry:")[1]
    own = "telemetry:\n  enabled: false\nrun_monitoring:\n  enabled: true\n"
    settings.write_text(own)
    prepare_home(str(home))
    assert settings.read_text() == own
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_VARIABLE, url)
    with pytest.raises(UsageError, match=r"holds your own instance settings.*unset the variable, or delete"):
        prepare_home(str(home))
    assert settings.read_text() == own
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_VARIABLE, "postgresql://dagster:s3cret@db.example/dagster")
    with pytest.raises(UsageError, match=r"must start with postgresql\+psycopg2://") as refused:
        prepare_home(str(tmp_path / "other"))
    assert "s3cret" not in str(refused.value)


def _materialize_day(home: Path, day: str, url: str) -> subprocess.Popen:
    """``dagster asset materialize`` of one day's day-local assets on the home's instance, in its own group."""
    env = {
        **os.environ,
        "SHOPSEQ_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        DAGSTER_POSTGRES_URL_VARIABLE: url,
    }
    selection = " or ".join(f"group:{g}" for g in DAY_LOCAL_GROUPS)
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "workflows.definitions"]
    return subprocess.Popen(
        [*command, "--select", selection, "--partition", day],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_two_partitions_from_two_processes_at_once_are_recorded_in_one_postgres_instance(
    postgres, tmp_path, monkeypatch
):
    home, url = tmp_path / "home", postgres.url("dagster")
    landing = LandingSource(home=str(home))
    landing.save_shop(SMALL_SHOP)
    for day in DAYS:
        landing.files_for_day(day)
    _set_environment(monkeypatch, home, url)
    prepare_home(str(home))  # as every shopseq command does: the PostgreSQL settings, naming the variable
    instance_dir = str(home / "dagster_home")
    with DagsterInstance.from_config(instance_dir) as instance:  # its tables, created once before the runs
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    runs = [_materialize_day(home, day.isoformat(), url) for day in DAYS]
    try:
        outputs = [run.communicate(timeout=600)[0] for run in runs]
    finally:
        for run in runs:
            stop_process_group(run)
    for run, output in zip(runs, outputs):
        assert run.returncode == 0 and "RUN_SUCCESS" in output, output[-3000:]
    # one DuckDB writer: the two runs took turns on the warehouse lock, step by step
    assert any("waiting for the warehouse lock" in output for output in outputs)

    keys = AssetSelection.groups(*DAY_LOCAL_GROUPS).resolve(defs.resolve_asset_graph())
    assert AssetKey("raw_events") in keys
    with DagsterInstance.from_config(instance_dir) as instance:
        runs_seen = [record.dagster_run for record in instance.get_run_records()]
        assert sorted((run.tags["dagster/partition"], run.status) for run in runs_seen) == [
            (day.isoformat(), DagsterRunStatus.SUCCESS) for day in DAYS
        ]
        for key in keys:
            assert instance.get_materialized_partitions(key) == {day.isoformat() for day in DAYS}, key
    with closing(postgres.connect("dagster")) as conn, conn.cursor() as cursor:  # in PostgreSQL itself
        cursor.execute("SELECT status, count(*) FROM runs GROUP BY status")
        assert cursor.fetchall() == [("SUCCESS", 2)]
        cursor.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cursor.fetchall() == [(len(keys) * len(DAYS),)]
    assert not list((home / "dagster_home").rglob("*.db"))  # no sqlite run or event storage was used


@pytest.fixture
def s3() -> Iterator[tuple[str, object]]:
    """moto's S3 server on a free port with an empty bucket: its endpoint and a boto3 client."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        server.stop()


@contextmanager
def _mlflow_server(backend: str, artifacts: str, s3_endpoint: str, log: Path) -> Iterator[str]:
    """``mlflow server`` on PostgreSQL, proxying artifacts to S3; its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend]
    command += ["--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        _wait_until(lambda: urllib.request.urlopen(f"{uri}/health", timeout=5).close(), "mlflow server", server, log)
        yield uri
    finally:
        stop_process_group(server)


def test_a_model_is_registered_promoted_and_loaded_through_a_tracking_server_on_postgres_and_s3(
    postgres, s3, tmp_path, monkeypatch
):
    endpoint, bucket = s3
    # the clients get no way to S3 of their own: the server alone holds the bucket's endpoint and credentials
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    frame = pd.DataFrame(np.random.default_rng(2).uniform(size=(200, 2)), columns=["a", "b"])
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(frame, (frame["a"] > 0.5).astype(int)), 3)
    home = tmp_path / "home"
    with _mlflow_server(postgres.url("mlflow"), f"s3://{BUCKET}/mlflow", endpoint, tmp_path / "mlflow.log") as uri:
        registry = ModelRegistry(home=str(home), tracking_uri=uri)
        ref = registry.log_lightgbm("next_purchase_model", booster, frame, {"rounds": 3}, {"auc": 0.5}, {})
        registry.set_alias(ref, CHAMPION, "the only version")
        # a second client, as another machine of the team would have: nothing shared but the server's URL
        champion = ModelRegistry(home=str(tmp_path / "elsewhere"), tracking_uri=uri).champion("next_purchase_model")
        assert champion == ref
        loaded = ModelRegistry(home=str(tmp_path / "elsewhere"), tracking_uri=uri).load_policy(champion)
        assert np.array_equal(loaded.predict(frame), booster.predict(frame))

    keys = [item["Key"] for item in bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(key.startswith("mlflow/") and key.endswith("/MLmodel") for key in keys), keys
    assert any(key.endswith("/model.lgb") for key in keys), keys
    assert not (home / "mlartifacts").exists() and not (tmp_path / "elsewhere").exists()  # nothing beside a client
    with closing(postgres.connect("mlflow")) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT name, alias, version FROM registered_model_aliases ORDER BY alias")
        assert cursor.fetchall() == [
            ("next_purchase_model", "challenger", ref.version),
            ("next_purchase_model", CHAMPION, ref.version),
        ]


def test_the_deploy_files_name_what_shopseq_reads():
    """deploy/ is not applied here (no cluster, deploy/README.md): at least its settings are shopseq's variables,
    its volume is the home, its URL scheme is the one the CLI asks for, and its image copies every package."""
    import tomllib

    import yaml

    from resources.registry import TRACKING_URI_VARIABLE, UI_URL_VARIABLE
    from workflows.cli import DAGSTER_POSTGRES_SCHEME

    settings = yaml.safe_load((REPO / "deploy" / "shopseq-settings.yaml").read_text())["data"]
    assert set(settings) == {"SHOPSEQ_HOME", TRACKING_URI_VARIABLE, UI_URL_VARIABLE, "MLFLOW_DISABLE_TELEMETRY"}
    values = yaml.safe_load((REPO / "deploy" / "dagster" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "workflows.definitions"]  # the module of `defs`
    assert deployment["volumeMounts"][0]["mountPath"] == settings["SHOPSEQ_HOME"]
    assert f"{values['postgresql']['postgresqlScheme']}://" == DAGSTER_POSTGRES_SCHEME
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for package in {name.split(".")[0] for name in packages}:
        assert f"COPY {package} ./{package}\n" in dockerfile, package
    server, _ = yaml.safe_load_all((REPO / "deploy" / "mlflow" / "mlflow.yaml").read_text())
    command = server["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "--backend-store-uri" in command and "--artifacts-destination" in command
