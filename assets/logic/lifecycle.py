"""The champion alias over time: every change (automatic promotion, ``shopseq promote``, ``rollback``)
is one row of the warehouse table ``alias_history``, which rollback reads back."""

import datetime as dt

import duckdb


def record_alias_change(
    conn: duckdb.DuckDBPyConnection,
    model_name: str,
    alias: str,
    from_version: int | None,
    to_version: int,
    reason: str,
    changed_by: str,
) -> None:
    from assets.logic.warehouse_sql import ensure_table

    ensure_table(conn, "alias_history")
    conn.execute(
        "INSERT INTO alias_history VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            dt.datetime.now(dt.UTC).replace(tzinfo=None),
            model_name,
            alias,
            from_version,
            to_version,
            reason,
            changed_by,
        ],
    )


ROLLBACK_BY = "shopseq rollback"  # the ``changed_by`` of the rows ``shopseq rollback`` records


def rollback_target(conn: duckdb.DuckDBPyConnection, model_name: str, alias: str, current: int) -> int | None:
    """The version a rollback of ``alias`` from ``current`` returns to: the latest version the alias pointed at
    before, other than ``current``, that no rollback moved away from since it last became the alias by another
    way (a promotion, ``shopseq promote`` by name, a move in the MLflow UI). Rollbacks thus walk back the history
    of champions and never toggle between two versions. None when the alias never pointed at another version;
    a ``ValueError`` when every other version it pointed at was rolled back away from."""
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'alias_history'"
    ).fetchone()[0]
    if not exists:
        return None
    rows = conn.execute(
        """SELECT from_version, to_version, changed_by FROM alias_history WHERE model_name = ? AND alias = ?
           ORDER BY changed_at, rowid""",
        [model_name, alias],
    ).fetchall()
    held, rolled_away = [], set()  # versions in the order they became the alias; those a rollback left
    for from_version, to_version, changed_by in rows:
        if changed_by == ROLLBACK_BY:
            rolled_away.add(from_version)
        else:
            rolled_away.discard(to_version)
        held.append(to_version)
    earlier = [v for v in reversed(held) if v != current]
    for version in earlier:
        if version not in rolled_away:
            return version
    if not earlier:
        return None
    left = ", ".join(f"v{v}" for v in dict.fromkeys(earlier))
    raise ValueError(
        f"{model_name}: nothing to roll back to: every earlier {alias} ({left}) was rolled back away from; "
        f"promote one by name (shopseq promote --model {model_name} --version N) to re-instate it"
    )


def record_outside_moves(conn: duckdb.DuckDBPyConnection, alias: str, moves: dict[str, list], changed_by: str) -> int:
    """Record alias moves seen from outside (``{model: [from, to]}``) that no row of ``alias_history`` records
    yet (the CLI and the promotion asset record their own); returns how many were recorded."""
    from assets.logic.warehouse_sql import ensure_table

    ensure_table(conn, "alias_history")
    recorded = 0
    for model_name, (from_version, to_version) in moves.items():
        latest = conn.execute(
            "SELECT to_version FROM alias_history WHERE model_name = ? AND alias = ? ORDER BY changed_at DESC, "
            "rowid DESC LIMIT 1",
            [model_name, alias],
        ).fetchone()
        if to_version is not None and (latest is None or latest[0] != to_version):
            record_alias_change(
                conn,
                model_name,
                alias,
                from_version,
                to_version,
                "moved outside shopseq (seen by champion_alias_sensor)",
                changed_by,
            )
            recorded += 1
    return recorded
