"""The Dagster and MLflow UIs in a real browser (Debian's chromium, driven by Playwright) on one home.

The home is built in-process first (six days, training, a champion); then `dagster dev` and `mlflow ui` serve it,
an engineer's backfill of two more days is launched from the Dagster UI, and the ML lead's registered model is
found in the MLflow UI. Screenshots go to ``$SHOPSEQ_TEST_ARTIFACTS`` (default ``test-artifacts/``)/browser.
"""

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, DagsterRunStatus, materialize
from dagster._core.execution.backfill import BulkActionStatus

from assets import ALL_ASSETS
from assets.partitions import RANGE_END_TAG, RANGE_START_TAG
from resources import LandingSource
from tests.conftest import SMALL_SHOP, dagster_home, shop_days
from tests.samples import stop_process_group
from workflows.definitions import build_resources
from workflows.jobs import DAILY_GROUPS

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SHOPSEQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("SHOPSEQ_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
BUILT_DAYS = shop_days(6)
BACKFILL = [BUILT_DAYS[-1] + dt.timedelta(days=1), BUILT_DAYS[-1] + dt.timedelta(days=2)]

pytestmark = pytest.mark.browser


def _browser_available() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None if shutil.which(CHROMIUM) else f"no chromium at {CHROMIUM}"


_missing = _browser_available()
if _missing and os.environ.get("SHOPSEQ_REQUIRE_BROWSER"):
    raise RuntimeError(f"browser tests required (SHOPSEQ_REQUIRE_BROWSER) but {_missing}")
if _missing:
    pytest.skip(f"browser tests: {_missing} (.ci/run installs Debian's chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} server exited ({process.returncode}): {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s: {log.read_text()[-3000:]}")


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    # its own process group: `dagster dev` ignores SIGTERM to itself, its children are stopped by the group
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A home with six materialised days, trained models and a champion, served by `dagster dev` and `mlflow ui`."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    home = tmp_path_factory.mktemp("ui_home")
    instance_dir = dagster_home(home)
    LandingSource(home=str(home)).save_shop(SMALL_SHOP)
    resources = build_resources(str(home))
    with DagsterInstance.from_config(instance_dir) as instance:
        window = {RANGE_START_TAG: BUILT_DAYS[0].isoformat(), RANGE_END_TAG: BUILT_DAYS[-1].isoformat()}
        for groups, tags in ((DAILY_GROUPS, window), (("training",), {})):
            result = materialize(
                ALL_ASSETS,
                selection=AssetSelection.groups(*groups),
                resources=resources,
                instance=instance,
                tags=tags,
                raise_on_error=False,
            )
            assert result.success, groups
    assert resources["registry"].champion("shopseq_next_item_ranker").version == 1

    env = {**os.environ, "SHOPSEQ_HOME": str(home), "DAGSTER_HOME": instance_dir, "MLFLOW_DISABLE_TELEMETRY": "true"}
    dagster_port, mlflow_port = _free_port(), _free_port()
    logs = tmp_path_factory.mktemp("ui_logs")
    dagster = _start(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(dagster_port)],
        env,
        logs / "dagster.log",
    )
    mlflow = _start(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{home}/mlflow.db",
            "--default-artifact-root",
            f"{home}/mlartifacts",
        ],
        env,
        logs / "mlflow.log",
    )
    try:
        _wait_for_http(f"http://127.0.0.1:{dagster_port}/server_info", dagster, logs / "dagster.log", 300)
        _wait_for_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow, logs / "mlflow.log", 300)
        yield {
            "home": home,
            "instance": instance_dir,
            "dagster": f"http://127.0.0.1:{dagster_port}",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
        }
    finally:
        stop_process_group(dagster)
        stop_process_group(mlflow)


@pytest.fixture
def page(request):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            _shot(page, f"FAILED_{request.node.name}")
        browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _dismiss_welcome(page) -> None:
    """Dagster's first-visit dialog ("Join the Dagster community") covers the page once per instance."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except Exception:  # noqa: BLE001 - not shown: the instance has seen it already
        return
    skip.click()


def test_a_backfill_of_two_days_launched_in_the_dagster_ui_materialises_them_with_checks(served, page):
    base = served["dagster"]
    page.goto(f"{base}/asset-groups")
    _dismiss_welcome(page)
    for group in ("ingestion", "cleaning", "features", "training", "serving"):
        page.get_by_text(group, exact=True).first.wait_for()
    _shot(page, "01_asset_graph")

    # Jobs -> daily_pipeline -> Materialize all -> two partitions -> Launch backfill
    page.goto(f"{base}/locations/shopseq/jobs/daily_pipeline")
    _dismiss_welcome(page)
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Partition selection").wait_for()
    # the dialog offers the last 90 days first; the shop's days are older
    dialog.get_by_text("Show all partitions").click()
    box = dialog.locator("input[type=text]").first
    box.fill(f"[{BACKFILL[0].isoformat()}...{BACKFILL[1].isoformat()}]")
    box.press("Enter")
    dialog.get_by_text("2 partitions").wait_for()
    _shot(page, "02_launch_backfill")
    dialog.get_by_role("button", name="Launch backfill").click()
    dialog.wait_for(state="hidden")

    # Runs -> Backfills shows it; wait (on the instance) until it has finished, then the page must say so
    page.goto(f"{base}/overview/backfills")
    page.get_by_text("2 partitions").first.wait_for()
    with DagsterInstance.from_config(served["instance"]) as instance:
        deadline = time.monotonic() + 600
        while True:
            backfill = instance.get_backfills()[0]
            if backfill.status != BulkActionStatus.REQUESTED or time.monotonic() > deadline:
                break
            time.sleep(5)
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, backfill.status
    page.reload()
    page.get_by_text("Success", exact=True).first.wait_for()
    _shot(page, "03_backfill_done")

    # the asset's events name both partitions with their metadata; its checks passed
    page.goto(f"{base}/assets/raw_events?view=events")
    for day in BACKFILL:
        page.get_by_text(day.isoformat()).first.wait_for()
    page.get_by_text("dagster/row_count").first.wait_for()
    _shot(page, "04_raw_events_materialisations")
    page.goto(f"{base}/assets/cleaned_events?view=checks")
    page.get_by_text("cleaned_events_suite").first.wait_for()
    page.get_by_text("Succeeded").first.wait_for()
    checks_text = page.locator("main").inner_text() if page.locator("main").count() else page.inner_text("body")
    assert "Failed" not in checks_text, checks_text[:2000]
    _shot(page, "05_cleaned_events_checks")

    # and the instance agrees: one successful ranged run, every daily asset materialised for both days
    with DagsterInstance.from_config(served["instance"]) as instance:
        runs = [r for r in instance.get_runs() if r.tags.get("dagster/backfill")]
        assert runs and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        for key in ("raw_events", "cleaned_events", "sessions", "user_features", "ranking_candidates"):
            assert {d.isoformat() for d in BACKFILL} <= instance.get_materialized_partitions(AssetKey(key)), key


def test_the_mlflow_ui_shows_the_registered_ranker_with_its_champion_alias(served, page):
    page.goto(f"{served['mlflow']}/#/models")
    page.get_by_text("shopseq_next_item_ranker").first.wait_for(timeout=120_000)
    page.keyboard.press("Escape")  # MLflow's "new Model Registry UI" announcement
    row = page.get_by_role("row").filter(has_text="shopseq_next_item_ranker")
    assert "champion" in row.inner_text() and "Version 1" in row.inner_text(), row.inner_text()
    _shot(page, "06_mlflow_models")
    page.goto(f"{served['mlflow']}/#/models/shopseq_next_item_ranker")
    page.keyboard.press("Escape")
    version = page.get_by_role("row").filter(has_text="Version 1")
    version.wait_for()
    text = version.inner_text()  # e.g. "Version 1 ... promotion_decision: promoted ... @ challenger @ champion"
    assert re.search(r"@\s*champion\b", text), text
    assert "promotion_decision" in text  # why it was promoted, on the version itself
    _shot(page, "07_mlflow_ranker_champion")
