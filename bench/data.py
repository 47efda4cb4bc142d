"""Synthetic benchmark days: the seeded synthetic shop's day (up to ``BASE_EVENTS``), tiled in DuckDB to the size
asked for with every copy's users, sessions and event ids renamed, so a 10M-event day has the shop's item
popularity, funnel and faults, and ten times its users. Source session ids are dropped: the pipeline derives
sessions from 30-minute gaps, the heaviest per-event work of cleaning."""

import datetime as dt
from pathlib import Path

import duckdb

from assets.logic.synthetic import ShopParams, write_day

BASE_EVENTS = 1_000_000
DAY = dt.date(2025, 3, 1)


def make_day(folder: Path, events: int, seed: int = 7) -> Path:
    """``folder/landing/<DAY>/events.parquet`` with about ``events`` rows; returns the file."""
    base_events = min(events, BASE_EVENTS)
    base_root = folder / f"base_{base_events}_{seed}"
    base = base_root / DAY.isoformat() / "events.parquet"
    if not base.exists():
        write_day(ShopParams(seed=seed, events_per_day=base_events, shop_start=DAY), DAY, str(base_root))
    out = folder / "landing" / DAY.isoformat() / "events.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    copies = max(1, round(events / base_events))
    with duckdb.connect() as conn:
        conn.execute(
            f"""
            COPY (
                SELECT event_time,
                       CASE WHEN k = 0 THEN user_id ELSE user_id || 'x' || k END AS user_id,
                       CAST(NULL AS VARCHAR) AS session_id,
                       event_type, item_id, category_id, price, query,
                       CASE WHEN k = 0 THEN event_id ELSE event_id || 'x' || k END AS event_id
                FROM read_parquet($base) CROSS JOIN range({int(copies)}) AS copies(k)
                ORDER BY event_time
            ) TO $out (FORMAT parquet, ROW_GROUP_SIZE 122880)""",
            {"base": str(base), "out": str(out)},
        )
    return out
