"""Public e-commerce log formats -> daily landing partitions in the canonical schema.

``ingest(paths, format, landing_root, tz)`` reads every line of every file, maps it
onto the canonical event schema, and writes one Parquet file per (day, source
file) under ``landing_root/YYYY-MM-DD/``. Nothing is dropped: a line that cannot
become an event is written too, with its text and an ``ingest_reason``, and the
``raw_events`` asset moves it to the quarantine table. Days are days in ``tz``
(the shop's timezone); ``event_time`` is stored in UTC.

Formats (``FORMATS``):

==================  =============================================================
taobao              UserBehavior.csv, no header: user_id,item_id,category_id,
                    behavior_type (pv/cart/fav/buy),timestamp (unix seconds)
rees46              header event_time ("2019-10-01 00:00:00 UTC"),event_type,product_id,
                    category_id,category_code,brand,price,user_id,user_session
retailrocket        events.csv, header timestamp (ms),visitorid,event
                    (view/addtocart/transaction),itemid,transactionid
yoochoose-clicks    SessionId,Timestamp (ISO),ItemId,Category (original, no header)
                    or a header SessionId,ItemId,Time (unix seconds), tab or comma
yoochoose-buys      SessionId,Timestamp,ItemId,Price,Quantity (no header)
otto                jsonl {"session", "events": [{"aid", "ts" (ms), "type"}]}
diginetica          ';' header session_id;user_id;item_id;timeframe;eventdate
canonical-csv       header with canonical column names (event_time, user_id,
canonical-jsonl     event_type required); event_time ISO text, read in ``tz``
canonical-parquet   when it has no offset
==================  =============================================================

Formats without users (YooChoose, OTTO, DIGINETICA rows with user NA) use the
session as the user: ``user_id`` is ``s<session>``. Files ending in ``.gz`` are
decompressed on the fly.

Reasons set here (the rest are set by ``raw_events``, see ``assets.logic.events``):

=========================  ========================================================
non_utf8                   the line is not valid UTF-8 (raw keeps it, bytes escaped)
unparseable_line           blank line, broken quoting, not a JSON object
wrong_column_count         a delimited line with more or fewer fields than the header
bad_type                   an id, price or quantity that is not a number
bad_timestamp              the time field cannot be read as a time
timestamp_out_of_range     before ``start`` (default: the format's documented period,
                           else 1995-01-01) or after ``end``
future_timestamp           after the moment of ingestion
=========================  ========================================================

A row whose day cannot be trusted (any reason above) is quarantined in the
partition of the nearest preceding line of the same file that has a valid day,
or of the following one for lines before the first: every line of a file lands
in exactly one partition, so per partition ``read = accepted + quarantined``.

A file that cannot be read at all (missing, empty, truncated or corrupt gzip, a
header that is not the format's, or more than ``max_bad_fraction`` of its lines
unusable) stops the whole ingest with an ``IngestError`` naming the file and the
reason, before any landing file is replaced.

Every day from a file's first to its last event gets a landing file, an empty
one for a day without events, so a quiet day is told apart from a missing one.

Re-ingesting a file replaces the landing files it produced before (their names
derive from the file's absolute path), so ingesting twice leaves the same rows.

With ``pseudonym_key`` set, user and session ids are replaced by a keyed hash
(HMAC-SHA256, 20 hex digits) before anything is written, and the raw text of a
row becomes its canonical fields (with the pseudonyms) or, when the line could
not be parsed, a placeholder with its keyed hash: no raw identifier reaches the
landing files or the warehouse.
"""

import csv
import datetime as dt
import gzip
import hashlib
import hmac
import itertools
import json
import shutil
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from assets.logic.events import CANONICAL_COLUMNS, classify_landing

EARLIEST_DAY = dt.date(1995, 1, 1)
BATCH_LINES = 200_000


class IngestError(Exception):
    """A source file that cannot be ingested at all; names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _epoch(column: str, unit_seconds: float) -> str:
    """UTC timestamp from a number of ``unit_seconds`` since 1970 (NULL when not a number or absurd)."""
    micros = f"CAST(TRY_CAST({column} AS DOUBLE) * {int(unit_seconds * 1_000_000)} AS BIGINT)"
    return f"TRY(make_timestamp({micros}))"


def _text_time(column: str) -> str:
    """UTC timestamp from ISO-like text; text without an offset is read in the session's timezone."""
    return f"timezone('UTC', TRY_CAST({column} AS TIMESTAMPTZ))"


def _id(column: str) -> str:
    return f"NULLIF(trim({column}), '')"


def _session_user(column: str) -> str:
    return f"'s' || {_id(column)}"


@dataclass(frozen=True)
class SourceFormat:
    """How one public log format maps onto the canonical schema.

    ``columns`` names the fields of a delimited line (for header formats, the
    columns the header must have; ``optional`` ones are read when present); ``mapping`` gives the SQL of each canonical
    column over those VARCHAR fields; ``numeric`` lists the fields that must be
    numbers when present (``bad_type`` otherwise); ``time_field`` is checked for
    ``bad_timestamp``.
    """

    name: str
    kind: str  # delimited | jsonl | parquet
    columns: tuple[str, ...]
    mapping: dict[str, str]
    time_field: str
    numeric: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    delimiter: str = ","
    header: bool = False
    default_tz: str = "UTC"
    period: tuple[dt.date, dt.date] | None = None
    alternatives: tuple["SourceFormat", ...] = field(default=())

    @property
    def fields(self) -> tuple[str, ...]:
        return self.columns + self.optional


_CANONICAL_MAPPING = {
    "event_time": _text_time("event_time"),
    "user_id": _id("user_id"),
    "session_id": _id("session_id"),
    "event_type": "event_type",
    "item_id": _id("item_id"),
    "category_id": _id("category_id"),
    "price": "TRY_CAST(price AS DOUBLE)",
    "query": "NULLIF(query, '')",
    "event_id": _id("event_id"),
}

_YOOCHOOSE_SESSION_FILE = SourceFormat(
    name="yoochoose-clicks",
    kind="delimited",
    header=True,
    columns=("SessionId", "ItemId", "Time"),
    mapping={
        "event_time": _epoch("Time", 1),
        "user_id": _session_user("SessionId"),
        "session_id": _id("SessionId"),
        "event_type": "'view'",
        "item_id": _id("ItemId"),
    },
    time_field="Time",
    numeric=("SessionId", "ItemId", "Time"),
)

FORMATS: dict[str, SourceFormat] = {
    f.name: f
    for f in [
        SourceFormat(
            name="taobao",
            kind="delimited",
            columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
            mapping={
                "event_time": _epoch("timestamp", 1),
                "user_id": _id("user_id"),
                "event_type": "behavior_type",
                "item_id": _id("item_id"),
                "category_id": _id("category_id"),
            },
            time_field="timestamp",
            numeric=("user_id", "item_id", "category_id", "timestamp"),
            # The data set's documented period, in China time (Tianchi data set 649).
            default_tz="Asia/Shanghai",
            period=(dt.date(2017, 11, 25), dt.date(2017, 12, 3)),
        ),
        SourceFormat(
            name="rees46",
            kind="delimited",
            header=True,
            columns=("event_time", "event_type", "product_id", "category_id", "price", "user_id", "user_session"),
            mapping={
                "event_time": _text_time("event_time"),
                "user_id": _id("user_id"),
                "session_id": _id("user_session"),
                "event_type": "event_type",
                "item_id": _id("product_id"),
                "category_id": _id("category_id"),
                "price": "TRY_CAST(price AS DOUBLE)",
            },
            time_field="event_time",
            numeric=("product_id", "category_id", "price", "user_id"),
        ),
        SourceFormat(
            name="retailrocket",
            kind="delimited",
            header=True,
            columns=("timestamp", "visitorid", "event", "itemid", "transactionid"),
            mapping={
                "event_time": _epoch("timestamp", 0.001),
                "user_id": _id("visitorid"),
                "event_type": "event",
                "item_id": _id("itemid"),
            },
            time_field="timestamp",
            numeric=("timestamp", "visitorid", "itemid", "transactionid"),
        ),
        SourceFormat(
            name="yoochoose-clicks",
            kind="delimited",
            columns=("SessionId", "Timestamp", "ItemId", "Category"),
            mapping={
                "event_time": _text_time("Timestamp"),
                "user_id": _session_user("SessionId"),
                "session_id": _id("SessionId"),
                "event_type": "'view'",
                "item_id": _id("ItemId"),
                # 0 means "no category" in YooChoose; S (special offer) and brand ids are kept.
                "category_id": "NULLIF(NULLIF(trim(Category), ''), '0')",
            },
            time_field="Timestamp",
            numeric=("SessionId", "ItemId"),
            alternatives=(_YOOCHOOSE_SESSION_FILE,),
        ),
        SourceFormat(
            name="yoochoose-buys",
            kind="delimited",
            columns=("SessionId", "Timestamp", "ItemId", "Price", "Quantity"),
            mapping={
                "event_time": _text_time("Timestamp"),
                "user_id": _session_user("SessionId"),
                "session_id": _id("SessionId"),
                "event_type": "'purchase'",
                "item_id": _id("ItemId"),
                "price": "TRY_CAST(Price AS DOUBLE)",
            },
            time_field="Timestamp",
            numeric=("SessionId", "ItemId", "Price", "Quantity"),
        ),
        SourceFormat(
            name="otto",
            kind="jsonl",
            columns=("session", "aid", "ts", "type"),
            mapping={
                "event_time": _epoch("ts", 0.001),
                "user_id": _session_user("session"),
                "session_id": _id("session"),
                "event_type": "type",
                "item_id": _id("aid"),
            },
            time_field="ts",
            numeric=("session", "aid", "ts"),
        ),
        SourceFormat(
            name="diginetica",
            kind="delimited",
            delimiter=";",
            header=True,
            columns=("session_id", "user_id", "item_id", "timeframe", "eventdate"),
            mapping={
                # timeframe: milliseconds since the session's first event, on eventdate (CIKM Cup 2016).
                "event_time": "timezone('UTC', TRY_CAST(eventdate AS DATE)::TIMESTAMPTZ"
                " + to_milliseconds(TRY_CAST(timeframe AS BIGINT)))",
                "user_id": "coalesce(NULLIF(NULLIF(trim(user_id), ''), 'NA'), " + _session_user("session_id") + ")",
                "session_id": _id("session_id"),
                "event_type": "'view'",
                "item_id": _id("item_id"),
            },
            time_field="eventdate",
            numeric=("session_id", "item_id", "timeframe"),
        ),
        SourceFormat(name="canonical-csv", kind="delimited", header=True, columns=("event_time", "user_id", "event_type"),
                     optional=("session_id", "item_id", "category_id", "price", "query", "event_id"),
                     mapping=_CANONICAL_MAPPING, time_field="event_time", numeric=("price",)),
        SourceFormat(name="canonical-jsonl", kind="jsonl", columns=CANONICAL_COLUMNS,
                     mapping=_CANONICAL_MAPPING, time_field="event_time", numeric=("price",)),
        SourceFormat(name="canonical-parquet", kind="parquet", columns=CANONICAL_COLUMNS,
                     mapping=_CANONICAL_MAPPING, time_field="event_time", numeric=("price",)),
    ]
}


# ---------------------------------------------------------------- reading lines


def _open_lines(path: Path) -> Iterator[bytes]:
    """The file's lines as bytes, decompressing ``.gz``; read errors name the file."""
    if not path.exists():
        raise IngestError(str(path), "file not found")
    if path.is_dir():
        raise IngestError(str(path), "is a folder, not a file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield from handle
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise IngestError(str(path), f"corrupt or truncated gzip: {error}") from error
    except OSError as error:
        raise IngestError(str(path), f"cannot be read: {error}") from error


def _decode(line: bytes) -> tuple[str, str | None]:
    text = line.rstrip(b"\r\n")
    try:
        return text.decode("utf-8"), None
    except UnicodeDecodeError:
        return text.decode("utf-8", errors="backslashreplace"), "non_utf8"


def _split(text: str, delimiter: str) -> list[str] | None:
    """Fields of one delimited line (quotes honoured); None when its quoting is broken."""
    if '"' not in text:
        return text.split(delimiter)
    try:
        rows = list(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


class _Batches:
    """Accumulates parsed rows into Arrow record batches of VARCHAR fields."""

    def __init__(self, source_file: str, columns: tuple[str, ...]):
        self.source_file, self.columns = source_file, columns
        self.rows_before = 0
        self._reset()

    def _reset(self) -> None:
        self.lines: list[int] = []
        self.raws: list[str] = []
        self.reasons: list[str | None] = []
        self.values: dict[str, list[str | None]] = {c: [] for c in self.columns}

    def add(self, line_no: int, raw: str, reason: str | None, values: dict[str, str | None] | None = None) -> None:
        self.lines.append(line_no)
        self.raws.append(raw)
        self.reasons.append(reason)
        for c in self.columns:
            self.values[c].append(None if values is None else values.get(c))

    def __len__(self) -> int:
        return len(self.lines)

    def flush(self) -> pa.Table:
        n = len(self.lines)
        table = pa.table(
            {
                "source_file": pa.array([self.source_file] * n, pa.string()),
                "source_line": pa.array(self.lines, pa.int64()),
                "file_row": pa.array(range(self.rows_before + 1, self.rows_before + n + 1), pa.int64()),
                "raw": pa.array(self.raws, pa.string()),
                "parse_reason": pa.array(self.reasons, pa.string()),
                **{c: pa.array(v, pa.string()) for c, v in self.values.items()},
            }
        )
        self.rows_before += n
        self._reset()
        return table


def _delimited_batches(path: Path, fmt: SourceFormat) -> Iterator[tuple[SourceFormat, pa.Table]]:
    lines = enumerate(_open_lines(path), start=1)
    first = next(lines, None)
    if first is None:
        raise IngestError(str(path), "empty file: no lines to ingest")
    fmt, columns, delimiter, is_header = _layout(path, fmt, _decode(first[1])[0])
    if not is_header:  # the first line is data
        lines = itertools.chain([first], lines)
    batches = _Batches(str(path), fmt.fields)
    for line_no, line in lines:
        text, reason = _decode(line)
        values = None
        if reason is None:
            fields = _split(text, delimiter) if text.strip() else None
            if fields is None:
                reason = "unparseable_line"
            elif len(fields) != len(columns):
                reason = "wrong_column_count"
            else:
                row = dict(zip(columns, fields))
                values = {c: row.get(c) for c in fmt.fields}
        batches.add(line_no, text, reason, values)
        if len(batches) >= BATCH_LINES:
            yield fmt, batches.flush()
    if len(batches):
        yield fmt, batches.flush()


def _layout(path: Path, fmt: SourceFormat, first_line: str) -> tuple[SourceFormat, tuple[str, ...], str, bool]:
    """Which variant of ``fmt`` the first line announces: (format, field names, delimiter, is a header)."""
    for candidate in (fmt, *fmt.alternatives):
        if not candidate.header:
            continue
        for delimiter in dict.fromkeys((candidate.delimiter, "\t", ",", ";")):
            names = tuple(n.strip().strip('"').lstrip("\ufeff") for n in first_line.split(delimiter))
            if set(candidate.columns) <= set(names):
                return candidate, names, delimiter, True
    headerless = next((c for c in (fmt, *fmt.alternatives) if not c.header), None)
    if headerless is not None:
        return headerless, headerless.columns, headerless.delimiter, False
    raise IngestError(
        str(path),
        f"not a {fmt.name} file: its header {first_line[:200]!r} lacks the columns {', '.join(fmt.columns)}",
    )


def _jsonl_batches(path: Path, fmt: SourceFormat) -> Iterator[tuple[SourceFormat, pa.Table]]:
    batches = _Batches(str(path), fmt.columns)
    for line_no, line in enumerate(_open_lines(path), start=1):
        text, reason = _decode(line)
        if reason is not None:
            batches.add(line_no, text, reason)
            continue
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if fmt.name == "otto":  # one row per event of the session; a line without events is one row
            events = record.get("events") if isinstance(record, dict) else None
            if not isinstance(events, list) or not events:
                batches.add(line_no, text, "unparseable_line")
            for event in events or []:
                values = {"session": record.get("session"), **event} if isinstance(event, dict) else None
                reason = None if values is not None else "unparseable_line"
                raw = json.dumps(values if values is not None else event)
                batches.add(line_no, raw, reason, values and {c: _text(values.get(c)) for c in fmt.columns})
        elif isinstance(record, dict):
            batches.add(line_no, text, None, {c: _text(record.get(c)) for c in fmt.columns})
        else:
            batches.add(line_no, text, "unparseable_line")
        if len(batches) >= BATCH_LINES:
            yield fmt, batches.flush()
    if len(batches):
        yield fmt, batches.flush()


def _text(value) -> str | None:
    if value is None:
        return None
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _parquet_batches(path: Path, fmt: SourceFormat) -> Iterator[tuple[SourceFormat, pa.Table]]:
    if not path.exists():
        raise IngestError(str(path), "file not found")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise IngestError(str(path), f"not a readable Parquet file: {error}") from error
    missing = [c for c in ("event_time", "user_id", "event_type") if c not in parquet.schema_arrow.names]
    if missing:
        raise IngestError(str(path), f"not a canonical Parquet file: it lacks the columns {', '.join(missing)}")
    offset = 0
    for batch in parquet.iter_batches(batch_size=BATCH_LINES):
        rows = batch.num_rows
        columns = {c: (batch.column(c).cast(pa.string()) if c in batch.schema.names else pa.nulls(rows, pa.string()))
                   for c in fmt.columns}
        raws = [json.dumps(r, default=str) for r in batch.to_pylist()]
        yield fmt, pa.table(
            {
                "source_file": pa.array([str(path)] * rows, pa.string()),
                "source_line": pa.array(range(offset + 1, offset + rows + 1), pa.int64()),
                "file_row": pa.array(range(offset + 1, offset + rows + 1), pa.int64()),
                "raw": pa.array(raws, pa.string()),
                "parse_reason": pa.nulls(rows, pa.string()),
                **columns,
            }
        )
        offset += rows


_READERS = {"delimited": _delimited_batches, "jsonl": _jsonl_batches, "parquet": _parquet_batches}


# ---------------------------------------------------------------- typing and placing rows


def _typed_select(fmt: SourceFormat) -> str:
    """SQL turning one batch of VARCHAR fields into canonical columns and a parse-level reason."""
    canonical = ", ".join(f"{fmt.mapping.get(c, 'NULL')} AS {c}" for c in CANONICAL_COLUMNS)
    bad_numbers = " OR ".join(
        f"(NULLIF(trim({c}), '') IS NOT NULL AND TRY_CAST(trim({c}) AS DOUBLE) IS NULL)" for c in fmt.numeric
    ) or "false"
    return f"""
        WITH typed AS (
            SELECT source_file, source_line, file_row, raw, parse_reason, {canonical},
                   {bad_numbers} AS bad_number,
                   NULLIF(trim({fmt.time_field}), '') IS NOT NULL AS has_time
            FROM batch
        )
        SELECT * EXCLUDE (bad_number, has_time, parse_reason),
            CASE
                WHEN parse_reason IS NOT NULL THEN parse_reason
                WHEN bad_number THEN 'bad_type'
                WHEN has_time AND event_time IS NULL THEN 'bad_timestamp'
            END AS ingest_reason
        FROM typed"""


_STAGED_COLUMNS = """(source_file VARCHAR, source_line BIGINT, file_row BIGINT, raw VARCHAR, event_time TIMESTAMP, user_id VARCHAR,
    session_id VARCHAR, event_type VARCHAR, item_id VARCHAR, category_id VARCHAR, price DOUBLE, query VARCHAR,
    event_id VARCHAR, ingest_reason VARCHAR)"""

_PLACE_SQL = """
CREATE TABLE placed AS
WITH dated AS (
    SELECT *,
        CASE
            WHEN ingest_reason IS NOT NULL OR event_time IS NULL THEN ingest_reason
            WHEN event_time > $now THEN 'future_timestamp'
            WHEN CAST(timezone($tz, timezone('UTC', event_time)) AS DATE) NOT BETWEEN $first AND $last
                THEN 'timestamp_out_of_range'
        END AS reason_here
    FROM staged
),
own_day AS (
    SELECT *,
        CASE WHEN reason_here IS NULL AND event_time IS NOT NULL
             THEN CAST(timezone($tz, timezone('UTC', event_time)) AS DATE) END AS valid_day
    FROM dated
)
SELECT * EXCLUDE (ingest_reason, reason_here, valid_day),
    reason_here AS ingest_reason,
    coalesce(
        valid_day,
        last_value(valid_day IGNORE NULLS) OVER (
            PARTITION BY source_file ORDER BY file_row ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
        first_value(valid_day IGNORE NULLS) OVER (
            PARTITION BY source_file ORDER BY file_row ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
    ) AS day
FROM own_day
"""


@dataclass
class IngestReport:
    """What an ingest read and where it went: per day and per file, accepted and quarantined rows."""

    per_day: dict[dt.date, dict[str, int]]
    per_file: dict[str, dict[str, int]]
    timezone: str

    @property
    def read(self) -> int:
        return sum(c["read"] for c in self.per_day.values())

    @property
    def accepted(self) -> int:
        return sum(c["accepted"] for c in self.per_day.values())

    @property
    def quarantined(self) -> int:
        return self.read - self.accepted

    def table(self) -> str:
        reasons = sorted({k for c in self.per_day.values() for k in c} - {"read", "accepted", "quarantined"})
        header = ["day", "read", "accepted", "quarantined", *reasons]
        rows = [[str(day), *(c.get(k, 0) for k in header[1:])] for day, c in sorted(self.per_day.items())]
        rows.append(["total", *(sum(c.get(k, 0) for c in self.per_day.values()) for k in header[1:])])
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(str(v).rjust(w) for v, w in zip(r, widths)) for r in [header, *rows])


def landing_name(path: Path) -> str:
    """The landing file name of a source file: its name plus a digest of its absolute path,
    so that re-ingesting the same file replaces its files and two files never collide."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in path.name)
    return f"{stem}-{digest}.parquet"


def pseudonym(key: str, value: str) -> str:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:20]


def _pseudonymise(conn: duckdb.DuckDBPyConnection, key: str) -> None:
    """Replace user and session ids of ``placed`` by keyed hashes, and raw text by what is safe to keep."""
    ids = [r[0] for r in conn.execute(
        "SELECT user_id FROM placed WHERE user_id IS NOT NULL UNION SELECT session_id FROM placed WHERE session_id IS NOT NULL"
    ).fetchall()]
    conn.register("pseudonyms", pa.table({"id": ids, "alias": [pseudonym(key, i) for i in ids]}))
    line_hashes = conn.execute("SELECT DISTINCT raw FROM placed WHERE event_time IS NULL AND raw IS NOT NULL").fetchall()
    conn.register("line_hashes", pa.table({
        "raw": [r[0] for r in line_hashes], "digest": [pseudonym(key, r[0]) for r in line_hashes],
    }))
    conn.execute(
        """CREATE OR REPLACE TABLE placed AS
           SELECT p.* REPLACE (
                      u.alias AS user_id, s.alias AS session_id,
                      CASE WHEN p.event_time IS NULL
                           THEN '[raw text withheld: pseudonymised ingest; line hash ' || h.digest || ']'
                           ELSE CAST(to_json(struct_pack(event_time := p.event_time, user_id := u.alias,
                                session_id := s.alias, event_type := p.event_type, item_id := p.item_id,
                                category_id := p.category_id, price := p.price, query := p.query)) AS VARCHAR)
                      END AS raw)
           FROM placed p
           LEFT JOIN pseudonyms u ON u.id = p.user_id
           LEFT JOIN pseudonyms s ON s.id = p.session_id
           LEFT JOIN line_hashes h ON h.raw = p.raw"""
    )
    conn.unregister("pseudonyms")
    conn.unregister("line_hashes")


def place(
    conn: duckdb.DuckDBPyConnection,
    paths: list[str],
    format_name: str,
    tz: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    now: dt.datetime | None = None,
    max_bad_fraction: float = 0.5,
) -> list[Path]:
    """Read source files into the table ``placed``: one row per line, in canonical columns, with its
    ingest reason (NULL when the line parsed) and its ``day``. Returns the files read, once each."""
    if format_name not in FORMATS:
        raise ValueError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")
    fmt = FORMATS[format_name]
    tz = tz or fmt.default_tz
    first = start or (fmt.period[0] if fmt.period else EARLIEST_DAY)
    last = end or (fmt.period[1] if fmt.period else dt.date(9999, 12, 31))
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    conn.execute(f"SET TimeZone = '{tz}'")
    conn.execute(f"CREATE TABLE staged {_STAGED_COLUMNS}")
    sources = [Path(p) for p in dict.fromkeys(paths)]  # a file named twice is read once
    for source in sources:
        _stage_file(conn, source, fmt, max_bad_fraction)
    conn.execute(_PLACE_SQL, {"tz": tz, "now": now, "first": first, "last": last})
    conn.execute("DROP TABLE staged")
    return sources


def ingest(
    paths: list[str],
    format_name: str,
    landing_root: str,
    tz: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    now: dt.datetime | None = None,
    pseudonym_key: str | None = None,
    max_bad_fraction: float = 0.5,
) -> IngestReport:
    """Split source files into daily landing partitions; see the module docstring for the rules."""
    tz = tz or (FORMATS[format_name].default_tz if format_name in FORMATS else "UTC")
    if pseudonym_key is not None and len(pseudonym_key) < 16:
        raise ValueError("the pseudonymisation key must have at least 16 characters")
    root = Path(landing_root)
    staging = root / f".ingest-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        with duckdb.connect(str(staging / "ingest.duckdb")) as conn:
            sources = place(conn, paths, format_name, tz, start, end, now, max_bad_fraction)
            if pseudonym_key is not None:
                _pseudonymise(conn, pseudonym_key)
            written = _write_days(conn, staging, sources)
            report = _report(conn, staging, written, sources, tz)
        _publish(root, staging, written, sources)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _stage_file(conn: duckdb.DuckDBPyConnection, source: Path, fmt: SourceFormat, max_bad_fraction: float) -> None:
    read = 0
    for variant, batch in _READERS[fmt.kind](source, fmt):
        conn.register("batch", batch)
        try:
            conn.execute(f"INSERT INTO staged BY NAME {_typed_select(variant)}").fetchall()
        finally:
            conn.unregister("batch")
        read += batch.num_rows
    if read == 0:
        raise IngestError(str(source), "empty file: no lines to ingest")
    unusable, first_problem = conn.execute(
        """SELECT count(*) FILTER (WHERE ingest_reason IS NOT NULL),
                  arg_min(source_line || ': ' || ingest_reason, source_line) FILTER (WHERE ingest_reason IS NOT NULL)
           FROM staged WHERE source_file = ?""",
        [str(source)],
    ).fetchall()[0]
    if unusable > max_bad_fraction * read:
        raise IngestError(
            str(source),
            f"does not look like {fmt.name}: {unusable:,} of {read:,} rows unusable (first: line {first_problem})",
        )


def _write_days(conn: duckdb.DuckDBPyConnection, staging: Path, sources: list[Path]) -> list[tuple[dt.date, str]]:
    written = []
    for source in sources:
        name = landing_name(source)
        first, last = conn.execute("SELECT min(day), max(day) FROM placed WHERE source_file = ?", [str(source)]).fetchall()[0]
        # Every day the file spans lands, days without events as an empty file: such a day is
        # known to be empty, unlike a day whose landing has not arrived.
        for day in (first + dt.timedelta(days=i) for i in range((last - first).days + 1)):
            folder = staging / day.isoformat()
            folder.mkdir(exist_ok=True)
            conn.execute(
                f"""COPY (SELECT {', '.join(CANONICAL_COLUMNS)}, source_file, source_line, raw, ingest_reason
                          FROM placed WHERE source_file = $source AND day = $day ORDER BY file_row)
                    TO '{folder / name}' (FORMAT parquet)""",
                {"source": str(source), "day": day},
            )
            written.append((day, name))
    return written


def _report(conn: duckdb.DuckDBPyConnection, staging: Path, written, sources: list[Path], tz: str) -> IngestReport:
    """Classify each staged day exactly as ``raw_events`` will, for the counts the command prints."""
    per_day: dict[dt.date, dict[str, int]] = {}
    for day in sorted({d for d, _ in written}):
        files = [str(staging / day.isoformat() / name) for d, name in written if d == day]
        counts = classify_landing(conn, files, day, tz)
        conn.execute("DROP TABLE landing_rejected")
        read = sum(counts.values())
        accepted = counts.pop("accepted", 0)
        per_day[day] = {"read": read, "accepted": accepted, "quarantined": read - accepted, **counts}
    per_file = {
        str(s): dict(zip(("read", "quarantined_at_ingest"), conn.execute(
            "SELECT count(*), count(ingest_reason) FROM placed WHERE source_file = ?", [str(s)]
        ).fetchall()[0]))
        for s in sources
    }
    return IngestReport(per_day=per_day, per_file=per_file, timezone=tz)


def _publish(root: Path, staging: Path, written: list[tuple[dt.date, str]], sources: list[Path]) -> None:
    """Replace the landing files of these sources: first remove what an earlier ingest of them
    left (in any day), then move the new files in (each move is atomic)."""
    names = {landing_name(s) for s in sources}
    for old in root.glob("*/*.parquet"):
        if old.name in names and not old.parent.name.startswith("."):
            old.unlink()
    for day, name in written:
        target = root / day.isoformat()
        target.mkdir(parents=True, exist_ok=True)
        (staging / day.isoformat() / name).replace(target / name)
