"""The one adapter between Great Expectations 1.x and Dagster: ``validate(frame, suite) -> AssetCheckResult``.

Suites are data (``suites/<name>.json``, GX 1.x suite format), versioned with the
code. Great Expectations is imported when a check runs, not when assets load.
"""

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

SUITES = Path(__file__).parent / "suites"
MAX_EXAMPLES = 5
GX_ROWS = 10_000


@cache
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


def _describe(kind: str, kwargs: dict) -> str:
    kwargs = {k: v for k, v in kwargs.items() if k not in ("batch_id", "result_format")}
    return f"{kind}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def run_suite(frame: pd.DataFrame, suite_name: str, expectations: list[dict] | None = None) -> list[dict[str, Any]]:
    """Validate ``frame`` with the suite (or some of its ``expectations``); one dict per expectation
    (success, counts, examples)."""
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
    suite = gx.ExpectationSuite(
        name=spec["name"], expectations=spec["expectations"] if expectations is None else expectations
    )
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    outcomes = []
    for r in result.results:
        detail = dict(r.result or {})
        examples = detail.get("partial_unexpected_list") or []
        outcomes.append(
            {
                "expectation": _describe(r.expectation_config.type, r.expectation_config.kwargs),
                "success": bool(r.success),
                "unexpected_count": detail.get("unexpected_count"),
                "observed_value": detail.get("observed_value"),
                "examples": [_show(x) for x in examples[:MAX_EXAMPLES]],
                "error": (r.exception_info or {}).get("exception_message") if not r.success else None,
            }
        )
    return outcomes


def validate_window(
    conn,
    relation: str,
    params: dict,
    suite_name: str,
    check_name: str,
    gx_rows: int = GX_ROWS,
    counting=None,
) -> tuple[AssetCheckResult, pd.DataFrame]:
    """A suite over a large relation in the warehouse (a table or a parenthesised SELECT with ``params``):
    its row-wise expectations counted over every row (``expectations.sql``) by ``counting`` (an engine's
    ``Counting``; DuckDB on ``conn`` when not given), the rest (columns, types) by GX on the first ``gx_rows`` rows
    of ``conn``. Returns the check and those rows (for previews)."""
    from expectations.sql import counted_in_sql, sql_outcomes

    expectations = load_suite(suite_name)["expectations"]
    counted_here = [counted_in_sql(e) for e in expectations]
    in_sql = [e for e, here in zip(expectations, counted_here) if here]
    in_gx = [e for e, here in zip(expectations, counted_here) if not here]
    # the first rows: a reservoir sample reads every column of every row (10 s on 20M candidates), and
    # columns and types are the same in any rows
    head = conn.execute(f"SELECT * FROM {relation} LIMIT {gx_rows}", params).df()
    counter, engine = (counting.connection, counting.engine) if counting else (conn, "DuckDB")
    rows, counted = sql_outcomes(counter, relation, params, in_sql)
    counted = iter(counted)
    by_gx = iter(run_suite(head, suite_name, in_gx) if in_gx else [])
    outcomes = []
    for e, here in zip(expectations, counted_here):
        if here:
            o = next(counted)
            outcomes.append(
                {**o, "expectation": _describe(e["type"], e["kwargs"]), "examples": [_show(x) for x in o["examples"]]}
            )
        else:
            outcomes.append(next(by_gx))
    metadata = {
        "rows_validated": rows,
        "rows_read_by_gx": len(head),
        "validated_by": (
            f"{len(in_sql)} expectations over every row in {engine}, {len(in_gx)} by GX on the first {len(head)} rows"
        ),
    }
    return _check_result(outcomes, suite_name, check_name, AssetCheckSeverity.ERROR, metadata), head


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
    return _check_result(
        outcomes,
        suite_name,
        check_name or suite_name,
        severity,
        {"rows_validated": len(frame), **(extra_metadata or {})},
    )


def _observed(outcome: dict) -> Any:
    """What the check table shows in its "unexpected" column: the count, else the observed value."""
    if outcome["unexpected_count"] is not None:
        return outcome["unexpected_count"]
    return outcome["observed_value"] if outcome["observed_value"] is not None else ""


def _check_result(
    outcomes: list[dict], suite_name: str, check_name: str, severity: AssetCheckSeverity, extra_metadata: dict
) -> AssetCheckResult:
    failed = [o for o in outcomes if not o["success"]]
    table = "\n".join(
        ["| expectation | ok | unexpected | examples |", "|---|---|---|---|"]
        + [
            f"| `{o['expectation']}` | {'yes' if o['success'] else '**no**'} | {_observed(o)} | "
            f"{', '.join(o['examples'])} |"
            for o in outcomes
        ]
    )
    metadata: dict[str, Any] = {
        "suite": suite_name,
        "expectations": len(outcomes),
        "failed_expectations": len(failed),
        "results": MetadataValue.md(table),
    }
    if failed:
        metadata["failures"] = MetadataValue.json(
            [
                {
                    k: o[k]
                    for k in ("expectation", "unexpected_count", "observed_value", "examples", "error")
                    if o[k] is not None
                }
                for o in failed
            ]
        )
    metadata.update(extra_metadata)
    return AssetCheckResult(
        check_name=check_name,
        passed=not failed,
        severity=severity,
        metadata=metadata,
        description=(
            f"{len(failed)} of {len(outcomes)} expectations failed: " + "; ".join(o["expectation"] for o in failed)
            if failed
            else None
        ),
    )
