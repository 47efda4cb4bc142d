import pytest

from assets import ALL_ASSETS
from assets.promotion import Contender, PromotionConfig, choose, decide
from resources.registry import ModelVersionRef


def test_definitions_load_with_jobs_schedules_and_groups():
    from workflows.definitions import defs

    for job in ("daily_pipeline", "training", "publish"):
        assert defs.resolve_job_def(job) is not None
    assert {s.name for s in defs.schedules} == {"daily_pipeline_schedule", "weekly_training"}
    groups = {a.key.to_user_string(): a.group_names_by_key[a.key] for a in ALL_ASSETS}
    assert set(groups.values()) == {
        "ingestion",
        "cleaning",
        "sequences",
        "features",
        "training",
        "serving",
        "evaluation",
    }


def test_the_code_location_reads_its_settings_from_the_environment_when_a_run_starts(tmp_path, monkeypatch):
    """No variable is read at import: the same Definitions object serves whichever home, tracking store and landing
    mode the environment names when the run starts, and a run without SHOPSEQ_HOME is told which variable to set."""
    from dagster import DagsterInvalidConfigError, asset, materialize

    from resources import LandingSource, ModelRegistry, Warehouse
    from workflows.definitions import defs

    seen = {}

    @asset
    def reports_settings(warehouse: Warehouse, landing: LandingSource, registry: ModelRegistry):
        seen.update(
            warehouse=warehouse.path,
            mode=landing.configured_mode,
            tracking=registry.resolved_tracking_uri(),
            ui=registry.resolved_ui_url(),
        )

    resources = {name: defs.resources[name] for name in ("warehouse", "landing", "registry")}
    for variable in ("SHOPSEQ_HOME", "SHOPSEQ_LANDING_MODE", "SHOPSEQ_MLFLOW_TRACKING_URI", "SHOPSEQ_MLFLOW_UI_URL"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(DagsterInvalidConfigError, match="SHOPSEQ_HOME"):
        materialize([reports_settings], resources=resources)
    empty = Warehouse(home=" ")  # SHOPSEQ_HOME set but empty: refused, not the working directory
    with pytest.raises(ValueError, match="home folder is empty"), empty.connect(read_only=True):
        pass
    monkeypatch.setenv("SHOPSEQ_HOME", str(tmp_path / "first"))
    assert materialize([reports_settings], resources=resources).success
    assert seen == {
        "warehouse": str(tmp_path / "first" / "warehouse.duckdb"),
        "mode": "auto",
        "tracking": f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}",
        "ui": "http://127.0.0.1:5000",
    }
    monkeypatch.setenv("SHOPSEQ_HOME", str(tmp_path / "second"))
    monkeypatch.setenv("SHOPSEQ_LANDING_MODE", "files")
    monkeypatch.setenv("SHOPSEQ_MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("SHOPSEQ_MLFLOW_UI_URL", "http://mlflow.example:8080")
    assert materialize([reports_settings], resources=resources).success
    assert seen == {
        "warehouse": str(tmp_path / "second" / "warehouse.duckdb"),
        "mode": "files",
        "tracking": "http://mlflow.example:5000",
        "ui": "http://mlflow.example:8080",
    }


def _contender(version, value, policy="lightgbm", kind="learned"):
    return Contender(ModelVersionRef("m", version, f"run{version}"), policy, kind, value, None)


def test_promotion_rules():
    config = PromotionConfig(min_relative_improvement=0.05)
    learned = _contender(3, 0.72)
    assert decide(None, "nothing may serve", None, config) == (False, "nothing may serve")
    assert decide(learned, "why", None, config)[0] is True
    assert decide(_contender(3, 0.70), "why", _contender(1, 0.68), config)[0] is False  # needs > 0.714
    promote, reason = decide(learned, "why", _contender(1, 0.68), config)
    assert promote and "learned lightgbm v3 0.7200 beats champion learned lightgbm v1 0.6800" in reason
    promote, reason = decide(learned, "why", _contender(1, 0.68), config, ["new_users 0.30 < 0.40 - 5%"])
    assert not promote and "new_users" in reason


def test_a_learned_model_that_does_not_beat_every_baseline_gives_way_to_the_best_rule():
    rules = [_contender(5, 0.60, "repeat_recent", "rule"), _contender(6, 0.64, "recent_covis_pop", "rule")]
    chosen, why = choose(_contender(7, 0.70), rules, ("recent_covis_pop", 0.64))
    assert chosen.ref.version == 7 and why.startswith("learned lightgbm 0.7000 beats the best baseline")
    # a tie goes to the rule: a learned model replaces a rule only by beating it
    chosen, why = choose(_contender(7, 0.64), rules, ("recent_covis_pop", 0.64))
    assert chosen.policy == "recent_covis_pop" and "the best rule policy is recent_covis_pop 0.6400" in why
    # a measure-only baseline (Markov) can beat the learned model while no rule does: the best rule still serves
    chosen, _ = choose(_contender(7, 0.66), rules, ("markov", 0.68))
    assert chosen.policy == "recent_covis_pop"
    assert choose(_contender(7, 0.5), [], ("markov", 0.6))[0] is None


def test_a_segment_that_drops_beyond_the_tolerance_and_its_interval_blocks_promotion():
    import pandas as pd

    from assets.promotion import segment_regressions

    def evaluation(values):
        return pd.DataFrame(
            [
                {"segment": s, "method": "model", "target": "any", "metric": "ndcg@20", "value": v, "ci_high": high}
                for s, (v, high) in values.items()
            ]
        )

    champion = evaluation(
        {"all": (0.50, 0.52), "new_users": (0.40, 0.43), "returning_users": (0.52, 0.54), "cold_items": (0.30, 0.50)}
    )
    # new users lose 7.5% and even the top of their interval is below the champion's value less 5%; cold items
    # lose more, but on so few users that their interval reaches the champion's value: chance, not a regression
    challenger = evaluation(
        {"all": (0.55, 0.57), "new_users": (0.37, 0.375), "returning_users": (0.51, 0.53), "cold_items": (0.20, 0.45)}
    )
    assert segment_regressions(challenger, champion, "any", "ndcg@20", 0.05) == [
        "new_users 0.3700 (95% CI up to 0.3750) < 0.4000 - 5%"
    ]
    assert segment_regressions(challenger, champion, "any", "ndcg@20", 0.10) == []


def test_every_package_imports_first_in_a_new_process():
    """``import resources`` before ``assets`` used to fail: the registry imported ``assets``, whose asset modules
    import ``resources`` while it was half made. And with pyspark installed without Spark Connect's packages,
    importing Great Expectations in a process whose ``__main__`` has no file (``python -c``, Dagster's run workers)
    ended the process with exit code 0 (pyspark's doctest check): every backfill launched from the UI failed."""
    import subprocess
    import sys

    for package in ("resources", "resources.engine", "assets", "workflows.definitions", "great_expectations"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {package}; print('imported')"], capture_output=True, text=True
        )
        assert done.returncode == 0 and done.stdout.strip() == "imported", f"import {package}: {done.stderr[-800:]}"
