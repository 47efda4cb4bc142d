"""The daily graph's DuckDB SQL as Spark SQL: SQLGlot's duckdb -> spark translation plus the rewrites it lacks.

The DuckDB statements of ``events.py``, ``sequences.py``, ``features.py`` and ``candidates.py`` stay the one source;
``to_spark`` turns one of them, with its named parameters (``$cutoff``), into a Spark SQL statement. SQLGlot
translates most of it (``QUALIFY``, ``FILTER``, struct literals, lambdas, ``strftime``, null ordering); these
differences it leaves, each caught by the parity tests (``tests/scale/test_spark_sql.py``), are rewritten here:

=====================================  ===================================================================
DuckDB                                 Spark
=====================================  ===================================================================
``$name`` parameters                   typed literals: ``CAST('2025-03-02' AS DATE)``, numbers, strings,
                                       ``ARRAY(...)`` for lists (bound as nodes, never pasted as text)
``INTERVAL (30) MINUTE``               ``INTERVAL 30 MINUTE`` (Spark takes no parenthesised quantity)
``x / 3600.0`` (decimal literals)      ``x / CAST(3600.0 AS DOUBLE)``: Spark types ``3600.0`` as DECIMAL and
                                       keeps decimal arithmetic; DuckDB divides as doubles
``date_diff('second', a, b)``          ``unix_seconds(b) - unix_seconds(a)``: DuckDB counts the boundaries
                                       crossed, Spark's ``datediff`` the whole units elapsed (one second
                                       apart for almost every user)
``list(x ORDER BY k)``                 ``transform(array_sort(collect_list(struct(k IS NULL, k, x))), ...)``:
                                       Spark's ``collect_list`` takes no ORDER BY (SQLGlot drops it)
``any_value(x ORDER BY k)``            the first element of the same sorted list, NULL values of ``x`` skipped
``arg_max(x, (a, b))``                 ``max_by(x, IF(x IS NULL, NULL, struct(a, b)))``: a struct orders
                                       like DuckDB's tuple, and DuckDB's ``arg_max`` skips rows whose ``x``
                                       is NULL while Spark's ``max_by`` returns it
``SELECT * EXCLUDE (a)``               the remaining columns, listed from ``schemas`` (Spark has no
                                       ``EXCLUDE`` or ``EXCEPT`` of columns)
``UNION ALL BY NAME``                  ``UNION ALL`` of branches that each select every name, NULL where
                                       they lack it
``SELECT unnest(a) AS x, unnest(b)``   ``SELECT inline(arrays_zip(a, b)) AS (x, y)``: Spark allows one
                                       generator per SELECT; DuckDB unnests side by side
``hash(a, b)`` (64 bits)               ``xxhash64(a, b)``: Spark's ``hash`` has 32 bits, so the suites'
                                       distinct key hashes (``expectations.sql``) would collide on big days
=====================================  ===================================================================

No pyspark import here: the translation is pure and tested without a JVM.
"""

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp


class TranslationError(ValueError):
    """A statement (or a parameter) the translation cannot carry to Spark exactly."""


def to_spark(sql: str, params: Mapping | None = None, schemas: Mapping[str, Sequence[str]] | None = None) -> str:
    """The Spark SQL of the DuckDB statement ``sql``.

    ``params`` holds the values of its ``$name`` parameters (each bound as a typed literal node); ``schemas`` the
    columns, in order, of the tables it reads (needed where a star must be expanded: ``EXCLUDE``, ``BY NAME``)."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    tree = bind_parameters(tree, params or {})
    tree = _expand_excluding_stars(tree, schemas or {})
    tree = _union_by_name(tree, schemas or {})
    tree = tree.transform(_rewrite_node)
    return tree.sql(dialect="spark")


def tables_read(sql: str) -> set[str]:
    """The names of the tables (and CTEs) a DuckDB statement reads."""
    return {table.name for table in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Table)}


def bind_parameters(tree: exp.Expression, params: Mapping) -> exp.Expression:
    """``tree`` with each ``$name`` replaced by the typed literal of ``params[name]``."""

    def bind(node: exp.Expression) -> exp.Expression:
        if not isinstance(node, exp.Placeholder):
            return node
        name = node.name
        if not name:
            raise TranslationError("positional parameters (?) cannot be translated: name them ($name)")
        if name not in params:
            raise TranslationError(f"parameter ${name} has no value (given: {sorted(params)})")
        return literal(params[name], name)

    return tree.transform(bind)


def literal(value, name: str = "value") -> exp.Expression:
    """The Spark literal node of a Python value: validated by type, so no text of it ever reaches the SQL as
    code."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(int(value))
    if isinstance(value, float):
        text = (
            repr(value) if math.isfinite(value) else {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(value)]
        )
        return exp.cast(exp.Literal.string(text), exp.DataType.Type.DOUBLE)
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            raise TranslationError(f"parameter ${name}: timestamps are naive UTC here, got {value!r}")
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), exp.DataType.Type.TIMESTAMPNTZ)
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.Type.DATE)
    if isinstance(value, (list, tuple)):
        return exp.Array(expressions=[literal(v, name) for v in value])
    raise TranslationError(f"parameter ${name}: values of type {type(value).__name__} cannot be bound for Spark")


# -- stars -------------------------------------------------------------------------------------------------------


def _ctes(node: exp.Expression) -> dict[str, exp.Expression]:
    """The CTEs visible from ``node``: those of every enclosing WITH (inner ones win)."""
    chain = []
    while node is not None:
        chain.append(node)
        node = node.parent
    found: dict[str, exp.Expression] = {}
    for scope in reversed(chain):
        with_ = scope.args.get("with_")
        if with_:
            for cte in with_.expressions:
                found[cte.alias_or_name] = cte.this
    return found


def _sources(select: exp.Select) -> list[exp.Expression]:
    from_ = select.args.get("from_")
    sources = [from_.this] if from_ else []
    return sources + [join.this for join in select.args.get("joins") or []]


def _source_columns(source: exp.Expression, scope: exp.Expression, schemas: Mapping) -> list[str]:
    """The columns of a FROM item: a CTE, a table of ``schemas`` or a subquery."""
    if isinstance(source, exp.Table) and not source.args.get("db"):
        ctes = _ctes(scope)
        if source.name in ctes:
            return query_columns(ctes[source.name], schemas)
        if source.name in schemas:
            return list(schemas[source.name])
        raise TranslationError(f"the columns of table {source.name} are needed to expand a star: add it to schemas")
    if isinstance(source, exp.Subquery):
        return query_columns(source.this, schemas)
    raise TranslationError(f"cannot tell the columns of {source.sql(dialect='duckdb')} to expand a star")


def query_columns(query: exp.Expression, schemas: Mapping) -> list[str]:
    """The output column names of a query, stars expanded from ``schemas`` and the CTEs."""
    if isinstance(query, exp.Union):
        if query.args.get("by_name"):
            return _by_name_columns(_by_name_branches(query), schemas)
        return query_columns(query.this, schemas)
    if not isinstance(query, exp.Select):
        raise TranslationError(f"cannot tell the columns of {query.sql(dialect='duckdb')[:80]}")
    names: list[str] = []
    for projection in query.expressions:
        star = projection if isinstance(projection, exp.Star) else None
        if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
            star = projection.this
            sources = [s for s in _sources(query) if s.alias_or_name == projection.table]
        else:
            sources = _sources(query)
        if star is None:
            names.append(projection.alias_or_name)
            continue
        if len(sources) != 1:
            raise TranslationError(f"cannot expand {projection.sql(dialect='duckdb')} over {len(sources)} sources")
        excluded = {c.name for c in star.args.get("except_") or []}
        names.extend(c for c in _source_columns(sources[0], query, schemas) if c not in excluded)
    return names


def _expand_excluding_stars(tree: exp.Expression, schemas: Mapping) -> exp.Expression:
    """``SELECT * EXCLUDE (a, b) FROM t`` -> ``SELECT c, d FROM t``."""
    for star in list(tree.find_all(exp.Star)):
        excluded = star.args.get("except_")
        if not excluded:
            continue
        select = star.find_ancestor(exp.Select)
        qualifier = star.parent.table if isinstance(star.parent, exp.Column) else None
        sources = [s for s in _sources(select) if qualifier is None or s.alias_or_name == qualifier]
        if len(sources) != 1:
            raise TranslationError(f"cannot expand * EXCLUDE over {len(sources)} sources: qualify the star")
        have = _source_columns(sources[0], select, schemas)
        names = {c.name for c in excluded}
        if names - set(have):
            raise TranslationError(f"EXCLUDE names columns {sorted(names - set(have))} that {have} lack")
        columns = [exp.column(c, table=qualifier) for c in have if c not in names]
        target = star.parent if isinstance(star.parent, exp.Column) else star
        index = select.expressions.index(target)
        select.set("expressions", select.expressions[:index] + columns + select.expressions[index + 1 :])
    return tree


# -- UNION BY NAME -----------------------------------------------------------------------------------------------


def _by_name_branches(union: exp.Union) -> list[exp.Expression]:
    branches = []
    for side in (union.this, union.expression):
        if isinstance(side, exp.Union) and side.args.get("by_name") and not side.args.get("distinct"):
            branches.extend(_by_name_branches(side))
        else:
            branches.append(side)
    return branches


def _by_name_columns(branches: list[exp.Expression], schemas: Mapping) -> list[str]:
    names: list[str] = []
    for branch in branches:
        names.extend(c for c in query_columns(branch, schemas) if c not in names)
    return names


def _union_by_name(tree: exp.Expression, schemas: Mapping) -> exp.Expression:
    """``a UNION ALL BY NAME b`` -> ``UNION ALL`` of branches selecting every name, in DuckDB's order (the names
    of the first branch, then each new name of the next ones), NULL where a branch lacks one."""

    def rewrite(node: exp.Expression) -> exp.Expression:
        if not (isinstance(node, exp.Union) and node.args.get("by_name")):
            return node
        if node.args.get("distinct"):
            raise TranslationError("UNION BY NAME (distinct) is not translated: the daily SQL uses UNION ALL BY NAME")
        branches = _by_name_branches(node)
        names = _by_name_columns(branches, schemas)
        rebuilt = []
        for branch in branches:
            have = query_columns(branch, schemas)
            projections = [exp.column(c) if c in have else exp.alias_(exp.Null(), c) for c in names]
            rebuilt.append(exp.select(*projections).from_(exp.Subquery(this=branch.copy(), alias="by_name")))
        result = rebuilt[0]
        for branch in rebuilt[1:]:
            result = exp.Union(this=result, expression=branch, distinct=False)
        return result

    return tree.transform(rewrite)


# -- functions and literals --------------------------------------------------------------------------------------


def _sorted_struct_list(value: exp.Expression, order: exp.Order, skip_null_values: bool) -> exp.Expression:
    """``array_sort(collect_list(struct(k1 IS NULL, k1, ..., value)))``: sorted like DuckDB's ascending
    ``ORDER BY k1, ...`` (nulls last)."""
    fields: list[exp.Expression] = []
    for i, ordered in enumerate(order.expressions):
        if ordered.args.get("desc") or ordered.args.get("nulls_first"):
            raise TranslationError(f"ordered aggregate {order.sql(dialect='duckdb')}: only ascending keys translate")
        key = ordered.this
        fields.append(exp.alias_(exp.Is(this=key.copy(), expression=exp.Null()), f"n{i}"))
        fields.append(exp.alias_(key.copy(), f"k{i}"))
    fields.append(exp.alias_(value.copy(), "v"))
    item: exp.Expression = exp.Struct(expressions=fields)
    if skip_null_values:
        item = exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()), true=exp.Null(), false=item)
    return exp.func("array_sort", exp.func("collect_list", item))


def _value_lambda(array: exp.Expression) -> exp.Expression:
    element = exp.to_identifier("_e")
    return exp.func(
        "transform",
        array,
        exp.Lambda(this=exp.Dot(this=exp.column(element), expression=exp.to_identifier("v")), expressions=[element]),
    )


_BOUNDARY_UNITS = {"MICROSECOND": ("unix_micros", 1), "MILLISECOND": ("unix_millis", 1), "SECOND": ("unix_seconds", 1)}
_BOUNDARY_SECONDS = {"MINUTE": 60, "HOUR": 3600}


def _date_diff(node: exp.DateDiff) -> exp.Expression:
    """DuckDB's ``date_diff(unit, a, b)``: the unit boundaries between ``a`` and ``b``, not the units elapsed."""
    unit = node.text("unit").upper()
    start, end = node.expression, node.this

    def epoch(function: str, value: exp.Expression) -> exp.Expression:
        return exp.func(function, exp.cast(value.copy(), exp.DataType.Type.TIMESTAMP))

    if unit in _BOUNDARY_UNITS:
        function = _BOUNDARY_UNITS[unit][0]
        return exp.paren(exp.Sub(this=epoch(function, end), expression=epoch(function, start)))
    if unit in _BOUNDARY_SECONDS:
        size = exp.Literal.number(_BOUNDARY_SECONDS[unit])

        def boundary(value: exp.Expression) -> exp.Expression:
            return exp.func("floor", exp.Div(this=epoch("unix_seconds", value), expression=size.copy()))

        return exp.paren(exp.Sub(this=boundary(end), expression=boundary(start)))
    if unit == "DAY":
        return exp.func(
            "datediff", exp.cast(end.copy(), exp.DataType.Type.DATE), exp.cast(start.copy(), exp.DataType.Type.DATE)
        )
    raise TranslationError(f"date_diff('{unit.lower()}', ...) is not translated (second, minute, hour, day are)")


def _zipped_unnests(select: exp.Select) -> exp.Select:
    """``SELECT unnest(a) AS x, unnest(b) AS y``: DuckDB unnests the lists side by side; Spark allows one generator
    per SELECT, so the lists are zipped and inlined once: ``SELECT inline(arrays_zip(a, b)) AS (x, y)``."""
    unnests = [e for e in select.expressions if isinstance(e, exp.Alias) and isinstance(e.this, exp.Explode)]
    if len(unnests) < 2:
        return select
    if len(unnests) != len(select.expressions):
        raise TranslationError(f"{select.sql(dialect='duckdb')}: side-by-side unnests translate only on their own")
    zipped = exp.Inline(this=exp.ArraysZip(expressions=[e.this.this.copy() for e in unnests]))
    select.set("expressions", [exp.Aliases(this=zipped, expressions=[e.args["alias"].copy() for e in unnests])])
    return select


def _rewrite_node(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.CTE) and node.args.get("materialized") is not None:
        # DuckDB's [NOT] MATERIALIZED is a plan hint Spark's SQL does not have: the rows are the same without it
        node.set("materialized", None)
        return node
    if isinstance(node, exp.Select):
        return _zipped_unnests(node)
    if isinstance(node, exp.Interval) and isinstance(node.this, exp.Paren):
        quantity = node.this.this
        if not (isinstance(quantity, exp.Literal) and quantity.is_int):
            raise TranslationError(f"{node.sql(dialect='duckdb')}: only a whole-number interval translates")
        return exp.Interval(this=exp.Literal.number(quantity.this), unit=node.args.get("unit"))
    if isinstance(node, exp.Literal) and node.is_number and not node.is_int:
        # Spark reads 3600.0 as DECIMAL(5, 1) and keeps decimal arithmetic; DuckDB divides as doubles
        if isinstance(node.parent, exp.DataTypeParam):
            return node
        return exp.cast(node.copy(), exp.DataType.Type.DOUBLE)
    if isinstance(node, exp.DateDiff):
        return _date_diff(node)
    if isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order):
        return _value_lambda(_sorted_struct_list(node.this.this, node.this, skip_null_values=False))
    if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.AnyValue):
        node = node.this
    if isinstance(node, exp.AnyValue) and isinstance(node.this, exp.Order):
        first = exp.func("try_element_at", _sorted_struct_list(node.this.this, node.this, True), exp.Literal.number(1))
        return exp.Dot(this=first, expression=exp.to_identifier("v"))
    if isinstance(node, exp.Anonymous) and node.name.lower() == "hash":
        return exp.func("xxhash64", *(e.copy() for e in node.expressions))
    if isinstance(node, (exp.ArgMax, exp.ArgMin)):
        value, key = node.this, node.expression
        if isinstance(key, exp.Tuple):
            key = exp.Struct(expressions=[k.copy() for k in key.expressions])
        guarded = exp.If(this=exp.Is(this=value.copy(), expression=exp.Null()), true=exp.Null(), false=key.copy())
        return exp.func("max_by" if isinstance(node, exp.ArgMax) else "min_by", value.copy(), guarded)
    return node


# -- table layouts -----------------------------------------------------------------------------------------------


_TIMESTAMPS = (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMP_NS, exp.DataType.Type.TIMESTAMP_MS)


def table_layout(name: str) -> list[tuple[str, str, str, bool]]:
    """The columns of the warehouse table ``name`` (``schema.py``) as ``(column, duckdb type, spark type,
    not null)``. Timestamps are naive UTC in the warehouse: Spark's ``TIMESTAMP_NTZ``."""
    from assets.logic.schema import table_columns

    create = sqlglot.parse_one(f"CREATE TABLE t {table_columns(name)}", read="duckdb")
    layout = []
    for column in create.this.expressions:
        kind = column.args["kind"]
        spark_type = "TIMESTAMP_NTZ" if kind.is_type(*_TIMESTAMPS) else kind.sql("spark")
        not_null = any(isinstance(c.kind, exp.NotNullColumnConstraint) for c in column.constraints)
        layout.append((column.name, kind.sql("duckdb"), spark_type, not_null))
    return layout


@dataclass(frozen=True)
class DailyStatement:
    """One daily table's day: the DuckDB SELECT of its builder, its parameters, and the window it replaces."""

    table: str
    day: dt.date
    start: dt.date | dt.datetime
    end: dt.date | dt.datetime
    sql: str
    params: dict


def daily_statement(table: str, day: dt.date, tz: str = "UTC", bot_events_per_day: int = 2000) -> DailyStatement:
    """The statement of the daily ``table`` (one of ``lake.LAKE_TABLES``) for ``day``, with the parameters its DuckDB
    builder (``clean_day``, ``build_sessions_day``, ..., ``build_candidates_day``) binds, for an engine to replace
    the day. The SQL is the builder's own; candidates read the co-visitation pairs and the day's item features as
    CTEs, in one pass (the DuckDB builder stores them as temp tables and splits the users into passes by id range,
    which gives the same rows)."""
    from assets.logic.candidates import candidates_sql, covis_pairs_sql
    from assets.logic.events import CLEAN_SQL
    from assets.logic.features import _ITEM_FEATURES_SQL, daily_history_sql, user_features_sql
    from assets.logic.lake import LAKE_TABLES
    from assets.logic.sequences import _SEQUENCES_SQL, _SESSIONS_SQL
    from assets.logic.warehouse_sql import date_bounds, day_bounds

    start, end = day_bounds(day, tz)
    window = {"start": start, "end": end}
    features = {"cutoff": end, "as_of_date": day}
    if table == "cleaned_events":
        return DailyStatement(
            table, day, start, end, CLEAN_SQL, {**window, "day": day, "bot_events_per_day": bot_events_per_day}
        )
    if table == "sessions":
        return DailyStatement(table, day, start, end, _SESSIONS_SQL, window)
    if table == "user_sequences":
        return DailyStatement(table, day, *date_bounds(day), _SEQUENCES_SQL, {**window, "day": day})
    if table == "user_features":
        return DailyStatement(table, day, *date_bounds(day), user_features_sql(daily_history_sql()), features)
    if table == "item_features":
        return DailyStatement(table, day, *date_bounds(day), _ITEM_FEATURES_SQL, features)
    if table == "ranking_candidates":
        candidates = candidates_sql(
            history=daily_history_sql(),
            covis_pairs=covis_pairs_sql(),
            item_now="SELECT * FROM item_features WHERE as_of_date = $as_of_date",
        )
        return DailyStatement(table, day, *date_bounds(day), candidates, features)
    raise ValueError(f"{table!r} is not a daily table an engine builds from a statement: one of {LAKE_TABLES}")


def daily_statements(day: dt.date, tz: str = "UTC", bot_events_per_day: int = 2000) -> list[DailyStatement]:
    """The statements of the daily graph after raw_events, in order (``daily_statement`` of each lake table)."""
    from assets.logic.lake import LAKE_TABLES

    return [daily_statement(table, day, tz, bot_events_per_day) for table in LAKE_TABLES]
