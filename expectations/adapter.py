"""The one adapter between Great Expectations 1.x and Dagster: ``validate(frame, suite) -> AssetCheckResult``.

Suites are data (``suites/<name>.json``, GX 1.x suite format), versioned with the
code. Great Expectations is imported when a check runs, not when assets load.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

SUITES = Path(__file__).parent / "suites"
MAX_EXAMPLES = 5


@lru_cache(maxsize=None)
def load_suite(name: str) -> dict[str, Any]:
    path = SUITES / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no expectation suite {name!r} at {path}")
    return json.loads(path.read_text())


def _show(value: Any) -> str:
    """An offending value as a person would write it (numpy scalars unwrapped, pairs as pairs)."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return str(value.item() if isinstance(value, np.generic) else value)


def _describe(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    return f"{config.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def run_suite(frame: pd.DataFrame, suite_name: str) -> list[dict[str, Any]]:
    """Validate ``frame`` with the suite; one dict per expectation (success, counts, examples)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("shopseq")
        .add_dataframe_asset(name=suite_name)
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    spec = load_suite(suite_name)
    suite = gx.ExpectationSuite(name=spec["name"], expectations=spec["expectations"])
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    outcomes = []
    for r in result.results:
        detail = dict(r.result or {})
        examples = detail.get("partial_unexpected_list") or []
        outcomes.append(
            {
                "expectation": _describe(r.expectation_config),
                "success": bool(r.success),
                "unexpected_count": detail.get("unexpected_count"),
                "observed_value": detail.get("observed_value"),
                "examples": [_show(x) for x in examples[:MAX_EXAMPLES]],
                "error": (r.exception_info or {}).get("exception_message") if not r.success else None,
            }
        )
    return outcomes


def validate(
    frame: pd.DataFrame,
    suite_name: str,
    check_name: str | None = None,
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
    extra_metadata: dict[str, Any] | None = None,
) -> AssetCheckResult:
    """Run a suite on a frame and report it as a Dagster check result.

    The metadata lists every failed expectation with its unexpected count and a
    few offending values, plus a markdown table readable in the Dagster UI.
    """
    outcomes = run_suite(frame, suite_name)
    failed = [o for o in outcomes if not o["success"]]
    table = "\n".join(
        ["| expectation | ok | unexpected | examples |", "|---|---|---|---|"]
        + [
            f"| `{o['expectation']}` | {'yes' if o['success'] else '**no**'} | {o['unexpected_count'] if o['unexpected_count'] is not None else o['observed_value'] if o['observed_value'] is not None else ''} | {', '.join(o['examples'])} |"
            for o in outcomes
        ]
    )
    metadata: dict[str, Any] = {
        "suite": suite_name,
        "rows_validated": len(frame),
        "expectations": len(outcomes),
        "failed_expectations": len(failed),
        "results": MetadataValue.md(table),
    }
    if failed:
        metadata["failures"] = MetadataValue.json(
            [
                {k: o[k] for k in ("expectation", "unexpected_count", "observed_value", "examples", "error") if o[k] is not None}
                for o in failed
            ]
        )
    metadata.update(extra_metadata or {})
    return AssetCheckResult(
        check_name=check_name or suite_name,
        passed=not failed,
        severity=severity,
        metadata=metadata,
        description=(
            f"{len(failed)} of {len(outcomes)} expectations failed: " + "; ".join(o["expectation"] for o in failed)
            if failed
            else None
        ),
    )

