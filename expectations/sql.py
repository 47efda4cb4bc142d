"""The row-wise expectations of a suite as DuckDB aggregates over every row of a relation.

Great Expectations validates pandas frames: on a 10M-row day that costs seconds and gigabytes per
suite, so large windows used to be checked on a sample. The expectations whose verdict depends on
every row (nulls, ranges, sets, uniqueness, row counts) are compiled here to one aggregate query and
counted by DuckDB over the whole window, with GX's semantics (missing values are not unexpected,
except for ``not_be_null``; a duplicated value makes every row that holds it unexpected). The rest
of the suite (columns exist, their types) is validated by GX on a small sample of the same rows.
``tests/unit/test_expectations.py`` runs both engines on the same frames and compares the counts.
"""

from typing import Any

import duckdb

MAX_EXAMPLES = 5


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _unexpected_condition(kind: str, kwargs: dict) -> str | None:
    """A SQL condition true for the rows GX would count as unexpected, or None for other kinds."""
    column = _q(kwargs["column"]) if "column" in kwargs else None
    if kind == "expect_column_values_to_not_be_null":
        return f"{column} IS NULL"
    if kind == "expect_column_values_to_be_between":
        bounds = []
        if kwargs.get("min_value") is not None:
            bounds.append(f"{column} {'<=' if kwargs.get('strict_min') else '<'} {_literal(kwargs['min_value'])}")
        if kwargs.get("max_value") is not None:
            bounds.append(f"{column} {'>=' if kwargs.get('strict_max') else '>'} {_literal(kwargs['max_value'])}")
        return f"{column} IS NOT NULL AND ({' OR '.join(bounds) or 'false'})"
    if kind == "expect_column_values_to_be_in_set":
        values = ", ".join(_literal(v) for v in kwargs["value_set"])
        return f"{column} IS NOT NULL AND {column} NOT IN ({values})"
    return None


def _unique_columns(kind: str, kwargs: dict) -> list[str] | None:
    if kind == "expect_column_values_to_be_unique":
        return [kwargs["column"]]
    if kind == "expect_compound_columns_to_be_unique":
        return list(kwargs["column_list"])
    return None


def _present(unique: list[str]) -> str:
    """Rows whose key is not missing altogether (GX ignores rows whose key columns are all missing)."""
    if len(unique) == 1:
        return f"{_q(unique[0])} IS NOT NULL"
    return "NOT (" + " AND ".join(f"{_q(c)} IS NULL" for c in unique) + ")"


def _duplicates_sql(relation: str, unique: list[str], select: str) -> str:
    """Groups of the key ``unique`` held by more than one row; rows whose key columns are all missing are
    ignored, as GX does by default."""
    keys = ", ".join(_q(c) for c in unique)
    return f"SELECT {select} FROM {relation} WHERE {_present(unique)} GROUP BY {keys} HAVING count(*) > 1"


def _hash_collisions_sql(unique: list[str]) -> str:
    """An aggregate that is 0 when every present key of ``unique`` is distinct, counted in the same scan as the
    other expectations: the present rows less their distinct 64-bit key hashes. Distinct hashes mean distinct keys;
    more rows than hashes means a duplicate or (about once in 10^5 suites of 20M rows) two keys sharing a hash,
    which ``sql_outcomes`` then tells apart by grouping the keys themselves. Counting the distinct hashes of the
    candidates' 20.8M keys took 1.3-1.7 s where grouping the keys took 2.5-3.5 s."""
    present = _present(unique)
    keys = ", ".join(_q(c) for c in unique)
    return f"count(*) FILTER (WHERE {present}) - count(DISTINCT hash({keys})) FILTER (WHERE {present})"


def counted_in_sql(expectation: dict) -> bool:
    """Whether the expectation is counted here (row-conditioned ones are left to GX)."""
    kind, kwargs = expectation["type"], expectation["kwargs"]
    return "row_condition" not in kwargs and (
        _unexpected_condition(kind, kwargs) is not None
        or _unique_columns(kind, kwargs) is not None
        or kind == "expect_table_row_count_to_be_between"
    )


def sql_outcomes(
    conn: duckdb.DuckDBPyConnection, relation: str, params: dict, expectations: list[dict]
) -> tuple[int, list[dict]]:
    """The rows of ``relation`` (a table name or a parenthesised SELECT with ``params``) and one outcome per
    expectation (all must be ``counted_in_sql``), counted over every row; examples are read for failures only."""
    columns = ["count(*)"]
    uniques = [_unique_columns(e["type"], e["kwargs"]) for e in expectations]
    for e, unique in zip(expectations, uniques):
        condition = _unexpected_condition(e["type"], e["kwargs"])
        if condition:
            columns.append(f"count(*) FILTER (WHERE {condition})")
        elif unique:
            columns.append(_hash_collisions_sql(unique))
        else:
            columns.append("NULL")
    counts = conn.execute(f"SELECT {', '.join(columns)} FROM {relation}", params).fetchone()
    rows = counts[0]
    outcomes = []
    for e, unique, unexpected in zip(expectations, uniques, counts[1:]):
        kind, kwargs = e["type"], e["kwargs"]
        if unique and unexpected:  # a duplicate or a shared hash: every row of a duplicated key is unexpected
            sql = f"SELECT coalesce(sum(n), 0) FROM ({_duplicates_sql(relation, unique, 'count(*) AS n')})"
            unexpected = conn.execute(sql, params).fetchone()[0]
        if kind == "expect_table_row_count_to_be_between":
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            success = (low is None or rows >= low) and (high is None or rows <= high)
            outcomes.append(_outcome(e, success, None, rows, []))
            continue
        examples = _examples(conn, relation, params, kind, kwargs) if unexpected else []
        outcomes.append(_outcome(e, unexpected == 0, int(unexpected), None, examples))
    return rows, outcomes


def _examples(conn, relation: str, params: dict, kind: str, kwargs: dict) -> list:
    condition = _unexpected_condition(kind, kwargs)
    if condition:
        sql = f"SELECT {_q(kwargs['column'])} FROM {relation} WHERE {condition} ORDER BY 1 LIMIT {MAX_EXAMPLES}"
    else:
        unique = _unique_columns(kind, kwargs)
        sql = f"{_duplicates_sql(relation, unique, ', '.join(_q(c) for c in unique))} ORDER BY ALL LIMIT {MAX_EXAMPLES}"
    rows = conn.execute(sql, params).fetchall()
    return [row[0] if len(row) == 1 else tuple(row) for row in rows]


def _outcome(expectation: dict, success: bool, unexpected: int | None, observed: Any, examples: list) -> dict:
    return {
        "expectation": expectation,
        "success": success,
        "unexpected_count": unexpected,
        "observed_value": observed,
        "examples": examples,
        "error": None,
    }
