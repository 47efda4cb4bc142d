import json

import pandas as pd
import pytest

from assets import ALL_ASSETS
from expectations.adapter import SUITES, validate


def test_failed_expectations_are_named_with_offending_values():
    frame = pd.DataFrame({
        "event_time": pd.to_datetime(["2025-03-01 10:00"] * 3), "user_id": ["a", "b", "c"], "session_id": "s",
        "event_type": ["view", "teleport", "purchase"], "item_id": "i", "category_id": "c", "price": [1.0, -2.0, 3.0],
        "query": None, "event_id": ["1", "2", "3"], "source_file": "f", "source_line": [1, 2, 3],
    })
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
