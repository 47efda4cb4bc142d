"""The champion alias over time: every change (automatic promotion, ``shopseq promote``, ``rollback``)
is one row of the warehouse table ``alias_history``, which rollback reads back."""

import datetime as dt

import duckdb

ALIAS_HISTORY_COLUMNS = """(changed_at TIMESTAMP NOT NULL, model_name VARCHAR NOT NULL, alias VARCHAR NOT NULL,
    from_version BIGINT, to_version BIGINT NOT NULL, reason VARCHAR NOT NULL, changed_by VARCHAR NOT NULL)"""


def record_alias_change(
    conn: duckdb.DuckDBPyConnection, model_name: str, alias: str, from_version: int | None, to_version: int,
    reason: str, changed_by: str,
) -> None:
    from assets.logic.warehouse_sql import ensure_table

    ensure_table(conn, "alias_history", ALIAS_HISTORY_COLUMNS)
    conn.execute(
        "INSERT INTO alias_history VALUES (?, ?, ?, ?, ?, ?, ?)",
        [dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), model_name, alias, from_version, to_version, reason, changed_by],
    )


def rollback_target(conn: duckdb.DuckDBPyConnection, model_name: str, alias: str, current: int) -> int | None:
    """The version ``alias`` pointed at before it moved to ``current`` (None when it never pointed elsewhere)."""
    exists = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'alias_history'").fetchone()[0]
    if not exists:
        return None
    row = conn.execute(
        """SELECT from_version FROM alias_history WHERE model_name = ? AND alias = ? AND to_version = ?
           ORDER BY changed_at DESC LIMIT 1""",
        [model_name, alias, current],
    ).fetchone()
    return None if row is None else row[0]


def record_outside_moves(conn: duckdb.DuckDBPyConnection, alias: str, moves: dict[str, list], changed_by: str) -> int:
    """Record alias moves seen from outside (``{model: [from, to]}``) that no row of ``alias_history`` records
    yet (the CLI and the promotion asset record their own); returns how many were recorded."""
    from assets.logic.warehouse_sql import ensure_table

    ensure_table(conn, "alias_history", ALIAS_HISTORY_COLUMNS)
    recorded = 0
    for model_name, (from_version, to_version) in moves.items():
        latest = conn.execute(
            "SELECT to_version FROM alias_history WHERE model_name = ? AND alias = ? ORDER BY changed_at DESC LIMIT 1",
            [model_name, alias],
        ).fetchone()
        if to_version is not None and (latest is None or latest[0] != to_version):
            record_alias_change(conn, model_name, alias, from_version, to_version,
                                "moved outside shopseq (seen by champion_alias_sensor)", changed_by)
            recorded += 1
    return recorded
