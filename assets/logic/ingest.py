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
decompressed on the fly; a UTF-8 byte order mark before the first line is dropped
(header or not).

Ids that a format declares numeric (``SourceFormat.ids``: the user, item, session
and category ids of taobao, rees46, retailrocket, yoochoose, otto and diginetica)
are stored as the decimal text of the whole number they hold, so that one id has
one spelling across files and formats: ``12``, ``12.0``, `` 12 ``, ``+12``,
``012`` and ``1.2e1`` are all ``12`` (digits are read exactly, up to 38 of them;
other notations as DECIMAL(38, 10)). An id that is not a whole number (``12.5``,
``abc``, ``nan``) is ``bad_type``: a fraction cannot be an id, and rounding it
would merge two users or items. Canonical formats keep ids as trimmed text,
since their ids are whatever the shop's system uses.

Reasons set here (the rest are set by ``raw_events``, see ``assets.logic.events``):

=========================  ========================================================
non_utf8                   the line is not valid UTF-8 (raw keeps it, bytes escaped)
unparseable_line           blank line, broken quoting, not a JSON object (or one naming a field twice)
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

A file that cannot be read at all (missing, a symlink loop, a folder, a FIFO or
anything else that is not a regular file, empty, truncated or corrupt gzip, a
header that is not the format's or that names a column twice, a canonical Parquet
column of a nested type, or more than ``max_bad_fraction`` of its lines unusable)
stops the whole ingest with an ``IngestError`` naming the file and the reason,
before any landing file is replaced. Bad options (format, time zone, a short
pseudonymisation key) raise ``ValueError`` naming the option.

A source file is identified by its resolved path: ``a.csv``, ``./a.csv``, its
absolute path or a symlink to it, named together, are read once (rows record the
file as first named). Two paths with the same content are two files: a shop may
legitimately export the same rows twice (two stores, two days without change),
and re-ingesting a corrected file must replace what that path produced, which a
content identity could not follow; duplicated rows are caught downstream
(``exact_duplicate``).

Every day from a file's first to its last event gets a landing file, an empty
one for a day without events, so a quiet day is told apart from a missing one.

Re-ingesting a file replaces the landing files it produced before (their names
derive from the file's resolved path), so ingesting twice leaves the same rows.
The days that held files of these sources and hold no landing file at all
afterwards are ``IngestReport.withdrawn``: the warehouse must drop them too.

Publishing is atomic per ingest, keeping the layout ``YYYY-MM-DD/<name>.parquet``
that readers list. Everything is staged in ``.ingest-<id>/`` first; then one rename
installs a journal (``.publish.journal``: every move into the landing and every
withdrawal of an old file), which is the switch from the old landing to the new
one; the steps are applied, the journal removed, the staging folder deleted. A
process killed before the rename leaves the old landing whole (its staging folder
is deleted by the next ingest); killed after it, the next reader or ingest rolls
the journal forward (``recover_landing``; every step can run twice). Journals are
applied under an exclusive ``flock`` on ``.publish.lock`` and readers list under a
shared one (``settled_landing``), so a listing sees the whole old landing or the
whole new one. An ingest holds ``.ingest.lock`` from start to end: a second ingest
into the same landing is refused while one runs.

With ``pseudonym_key`` set, user and session ids are replaced by a keyed hash
(HMAC-SHA256, 20 hex digits) before anything is written, and the raw text of a
row becomes its canonical fields (with the pseudonyms) or, when the line could
not be parsed, a placeholder with its keyed hash: no raw identifier reaches the
landing files or the warehouse.
"""

import csv
import datetime as dt
import errno
import fcntl
import gzip
import hashlib
import hmac
import itertools
import json
import os
import re
import shutil
import stat
import statistics
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from assets.logic.events import classify_landing
from assets.logic.schema import CANONICAL_COLUMNS
from assets.logic.warehouse_sql import check_timezone

EARLIEST_DAY = dt.date(1995, 1, 1)
# Landing file names keep this much of the source's name (file systems allow 255 bytes; the digest identifies it).
MAX_STEM = 120
# A first or last day with fewer accepted events than this share of the median day's is reported as partial.
PARTIAL_DAY_SHARE = 0.05
BATCH_LINES = 200_000
UTF8_BOM = b"\xef\xbb\xbf"
# Beside the day folders of the landing root; none of these names is a day, so readers skip them.
INGEST_LOCK = ".ingest.lock"
PUBLISH_LOCK = ".publish.lock"
JOURNAL = ".publish.journal"
STAGING_PREFIX = ".ingest-"


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
    """UTC timestamp from ISO-like text; text without an offset is read in the session's timezone.
    NULL when it cannot be read or falls off the calendar once converted."""
    return f"TRY(timezone('UTC', TRY_CAST({column} AS TIMESTAMPTZ)))"


def _id(column: str) -> str:
    return f"NULLIF(trim({column}), '')"


def _whole_number_id(column: str) -> str:
    """The decimal text of the whole number in ``column`` (see the module docstring); NULL when it holds none.

    Only notations read exactly are accepted, so that no fraction is ever rounded into another id: plain digits
    (through HUGEINT), digits with a fraction of zeros (``12.0``), and exponent notation of at most 15 significant
    digits whole below 2 ** 53 (``1.2e1``), where a DOUBLE holds the value exactly. DuckDB's casts to integers round
    ``12.5``, and a DOUBLE rounds ``9007199254740993.5`` or ``0.99999999999999999`` to a whole number."""
    text = f"trim({column})"
    number = f"TRY_CAST({text} AS DOUBLE)"
    return f"""CASE WHEN regexp_full_match({text}, '[+-]?[0-9]+(\\.0*)?')
            THEN CAST(TRY_CAST(regexp_extract({text}, '^[+-]?[0-9]+') AS HUGEINT) AS VARCHAR)
        WHEN regexp_full_match({text}, '[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)[eE][+-]?[0-9]+')
            AND length(regexp_replace(regexp_replace({text}, '[eE].*$', ''), '[^0-9]|^[0.+-]+', '', 'g')) <= 15
            AND {number} = floor({number}) AND abs({number}) < 9007199254740992
            THEN CAST(CAST({number} AS HUGEINT) AS VARCHAR) END"""


def _session_user(column: str) -> str:
    return f"'s' || {_id(column)}"


@dataclass(frozen=True)
class SourceFormat:
    """How one public log format maps onto the canonical schema.

    ``columns`` names the fields of a delimited line (for header formats, the
    columns the header must have; ``optional`` ones are read when present); ``mapping`` gives the SQL of each canonical
    column over those VARCHAR fields; ``numeric`` lists the fields that must be
    numbers when present and ``ids`` the id fields that must be whole numbers (``bad_type`` otherwise), which
    ``mapping`` sees as their canonical integer text; ``time_field`` is checked for ``bad_timestamp``.
    """

    name: str
    kind: str  # delimited | jsonl | parquet
    columns: tuple[str, ...]
    mapping: dict[str, str]
    time_field: str
    numeric: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
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
    numeric=("Time",),
    ids=("SessionId", "ItemId"),
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
            numeric=("timestamp",),
            ids=("user_id", "item_id", "category_id"),
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
            numeric=("price",),
            ids=("product_id", "category_id", "user_id"),
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
            numeric=("timestamp", "transactionid"),
            ids=("visitorid", "itemid"),
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
            ids=("SessionId", "ItemId"),
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
            numeric=("Price", "Quantity"),
            ids=("SessionId", "ItemId"),
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
            numeric=("ts",),
            ids=("session", "aid"),
        ),
        SourceFormat(
            name="diginetica",
            kind="delimited",
            delimiter=";",
            header=True,
            columns=("session_id", "user_id", "item_id", "timeframe", "eventdate"),
            mapping={
                # timeframe: milliseconds since the session's first event, on eventdate (CIKM Cup 2016);
                # TRY: a timeframe too large for an interval is a bad timestamp of its row, not an error.
                "event_time": "TRY(timezone('UTC', TRY_CAST(eventdate AS DATE)::TIMESTAMPTZ"
                " + to_milliseconds(TRY_CAST(timeframe AS BIGINT))))",
                "user_id": "coalesce(NULLIF(NULLIF(trim(user_id), ''), 'NA'), " + _session_user("session_id") + ")",
                "session_id": _id("session_id"),
                "event_type": "'view'",
                "item_id": _id("item_id"),
            },
            time_field="eventdate",
            numeric=("timeframe",),
            ids=("session_id", "item_id"),
        ),
        SourceFormat(
            name="canonical-csv",
            kind="delimited",
            header=True,
            columns=("event_time", "user_id", "event_type"),
            optional=("session_id", "item_id", "category_id", "price", "query", "event_id"),
            mapping=_CANONICAL_MAPPING,
            time_field="event_time",
            numeric=("price",),
        ),
        SourceFormat(
            name="canonical-jsonl",
            kind="jsonl",
            columns=CANONICAL_COLUMNS,
            mapping=_CANONICAL_MAPPING,
            time_field="event_time",
            numeric=("price",),
        ),
        SourceFormat(
            name="canonical-parquet",
            kind="parquet",
            columns=CANONICAL_COLUMNS,
            mapping=_CANONICAL_MAPPING,
            time_field="event_time",
            numeric=("price",),
        ),
    ]
}


# ---------------------------------------------------------------- reading lines


def source_files(paths: list[str]) -> list[Path]:
    """Each source file once, as first named, identified by its resolved path (see the module docstring).

    Everything is checked before a byte is read: anything but a regular file is refused, since a FIFO or a
    device would block the ingest or never end.
    """
    sources: dict[Path, Path] = {}
    for name in paths:
        path = Path(name)
        try:
            resolved = path.resolve(strict=True)
            mode = resolved.stat().st_mode
        except FileNotFoundError:
            raise IngestError(str(path), "file not found") from None
        except RuntimeError:  # how Python before 3.13 reports a symlink loop
            raise IngestError(str(path), "symlink loop: the path cannot be resolved to a file") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise IngestError(str(path), "symlink loop: the path cannot be resolved to a file") from None
            raise IngestError(str(path), f"cannot be resolved: {error.strerror}") from None
        if stat.S_ISDIR(mode):
            raise IngestError(str(path), "is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise IngestError(str(path), "is not a regular file (a FIFO, device or socket cannot be ingested)")
        sources.setdefault(resolved, path)
    return list(sources.values())


def source_identity(path: Path) -> Path:
    """The name a source's landing files derive from: the file as named, in its resolved folder. ``a.csv``,
    ``./a.csv`` and its absolute path are one name; a symlink keeps its own, so ``latest.csv`` re-pointed at a
    corrected export replaces what ``latest.csv`` produced before. (Within one ingest a file is read once, however
    many names lead to it.)"""
    return path.absolute().parent.resolve() / path.name


def _open_lines(path: Path) -> Iterator[bytes]:
    """The file's lines as bytes, decompressing ``.gz``, without a UTF-8 byte order mark before the first
    (spreadsheets write one; it would stick to the first field); read errors name the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            first = handle.readline()
            if first:
                yield first.removeprefix(UTF8_BOM)
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
            names = tuple(n.strip().strip('"') for n in first_line.split(delimiter))
            if set(candidate.columns) <= set(names):
                _refuse_duplicated_columns(path, names, "its header")
                return candidate, names, delimiter, True
    headerless = next((c for c in (fmt, *fmt.alternatives) if not c.header), None)
    if headerless is not None:
        return headerless, headerless.columns, headerless.delimiter, False
    raise IngestError(
        str(path),
        f"not a {fmt.name} file: its header {first_line[:200]!r} lacks the columns {', '.join(fmt.columns)}",
    )


def _refuse_duplicated_columns(path: Path, names: list[str] | tuple[str, ...], where: str) -> None:
    """A column named twice is refused: which of the two holds the field is anyone's guess, and taking either
    would accept every row with the other's values."""
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        listed = ", ".join(repr(n) for n in duplicated)
        raise IngestError(str(path), f"{where} has the duplicated column{'s' if len(duplicated) > 1 else ''} {listed}")


def _fields_once(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose fields are each named once: ``json`` keeps the last of two values silently, which would
    accept ``{"user_id": "alice", "user_id": "mallory"}`` as mallory's (the line is quarantined instead)."""
    record = dict(pairs)
    if len(record) < len(pairs):
        raise ValueError("a field is named twice")
    return record


def _jsonl_batches(path: Path, fmt: SourceFormat) -> Iterator[tuple[SourceFormat, pa.Table]]:
    batches = _Batches(str(path), fmt.columns)
    for line_no, line in enumerate(_open_lines(path), start=1):
        text, reason = _decode(line)
        if reason is not None:
            batches.add(line_no, text, reason)
            continue
        try:
            record = json.loads(text, object_pairs_hook=_fields_once)
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
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise IngestError(str(path), f"not a readable Parquet file: {error}") from error
    schema = parquet.schema_arrow
    _refuse_duplicated_columns(path, schema.names, "its schema")
    missing = [c for c in ("event_time", "user_id", "event_type") if c not in schema.names]
    if missing:
        raise IngestError(str(path), f"not a canonical Parquet file: it lacks the columns {', '.join(missing)}")
    # A column of the wrong type is wrong in every row: the file is refused, naming it, rather than every
    # row quarantined as bad_type (which would read as a file of bad rows, not of a bad schema).
    for column in fmt.columns:
        if column in schema.names and pa.types.is_nested(schema.field(column).type):
            raise IngestError(
                str(path),
                f"column {column} has the type {schema.field(column).type}: a canonical "
                "column holds text, a number or a time, not a nested value",
            )
    offset = 0
    for batch in parquet.iter_batches(batch_size=BATCH_LINES):
        rows = batch.num_rows
        columns = {
            c: (_as_text(path, batch.column(c), c) if c in batch.schema.names else pa.nulls(rows, pa.string()))
            for c in fmt.columns
        }
        raws = [json.dumps(r, default=str) for r in batch.to_pylist()]
        yield (
            fmt,
            pa.table(
                {
                    "source_file": pa.array([str(path)] * rows, pa.string()),
                    "source_line": pa.array(range(offset + 1, offset + rows + 1), pa.int64()),
                    "file_row": pa.array(range(offset + 1, offset + rows + 1), pa.int64()),
                    "raw": pa.array(raws, pa.string()),
                    "parse_reason": pa.nulls(rows, pa.string()),
                    **columns,
                }
            ),
        )
        offset += rows


def _as_text(path: Path, values: pa.Array, column: str) -> pa.Array:
    try:
        return values.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise IngestError(
            str(path), f"column {column} has the type {values.type}, which cannot be read as text: {error}"
        ) from None


_READERS = {"delimited": _delimited_batches, "jsonl": _jsonl_batches, "parquet": _parquet_batches}


# ---------------------------------------------------------------- typing and placing rows


def _typed_select(fmt: SourceFormat) -> str:
    """SQL turning one batch of VARCHAR fields into canonical columns and a parse-level reason."""
    canonical = ", ".join(f"{fmt.mapping.get(c, 'NULL')} AS {c}" for c in CANONICAL_COLUMNS)
    bad_numbers = (
        " OR ".join(
            [
                f"(NULLIF(trim(batch.{c}), '') IS NOT NULL AND TRY_CAST(trim(batch.{c}) AS DOUBLE) IS NULL)"
                for c in fmt.numeric
            ]
            + [
                f"(NULLIF(trim(batch.{c}), '') IS NOT NULL AND {_whole_number_id(f'batch.{c}')} IS NULL)"
                for c in fmt.ids
            ]
        )
        or "false"
    )
    ids = ", ".join(f"{_whole_number_id(f'batch.{c}')} AS {c}" for c in fmt.ids)
    return f"""
        WITH fields AS (
            SELECT *{f" REPLACE ({ids})" if ids else ""}, {bad_numbers} AS bad_number FROM batch
        ),
        typed AS (
            SELECT source_file, source_line, file_row, raw, parse_reason, {canonical}, bad_number,
                   NULLIF(trim({fmt.time_field}), '') IS NOT NULL AS has_time
            FROM fields
        )
        SELECT * EXCLUDE (bad_number, has_time, parse_reason),
            CASE
                WHEN parse_reason IS NOT NULL THEN parse_reason
                WHEN bad_number THEN 'bad_type'
                WHEN has_time AND event_time IS NULL THEN 'bad_timestamp'
            END AS ingest_reason
        FROM typed"""


_STAGED_COLUMNS = """(source_file VARCHAR, source_line BIGINT, file_row BIGINT, raw VARCHAR, event_time TIMESTAMP,
    user_id VARCHAR, session_id VARCHAR, event_type VARCHAR, item_id VARCHAR, category_id VARCHAR, price DOUBLE,
    query VARCHAR, event_id VARCHAR, ingest_reason VARCHAR)"""

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
    # Days that held landing files of these sources before the ingest and hold no landing file after it.
    withdrawn: list[dt.date] = field(default_factory=list)
    # Days that also hold landing files of other sources: their counts here are not the whole day's.
    shared: list[dt.date] = field(default_factory=list)

    @property
    def read(self) -> int:
        return sum(c["read"] for c in self.per_day.values())

    @property
    def accepted(self) -> int:
        return sum(c["accepted"] for c in self.per_day.values())

    @property
    def quarantined(self) -> int:
        return self.read - self.accepted

    def partial_days(self, share: float = PARTIAL_DAY_SHARE) -> list[tuple[dt.date, int, float]]:
        """The first and last day of the report when it accepted fewer than ``share`` of the median day's events
        (a log that starts or ends within a day of the home's timezone), as (day, accepted, median); none for
        fewer than three days, nor for a day other sources land on too (its count here is not the day's)."""
        if len(self.per_day) < 3:
            return []
        days = sorted(self.per_day)
        median = statistics.median(self.per_day[d]["accepted"] for d in days)
        return [
            (d, self.per_day[d]["accepted"], median)
            for d in (days[0], days[-1])
            if self.per_day[d]["accepted"] < share * median and d not in self.shared
        ]

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
    digest = hashlib.sha1(str(source_identity(path)).encode()).hexdigest()[:10]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in path.name)[:MAX_STEM]
    return f"{stem}-{digest}.parquet"


def pseudonym(key: str, value: str) -> str:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:20]


def _pseudonymise(conn: duckdb.DuckDBPyConnection, key: str) -> None:
    """Replace user and session ids of ``placed`` by keyed hashes, and raw text by what is safe to keep."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT user_id FROM placed WHERE user_id IS NOT NULL UNION SELECT session_id FROM placed WHERE "
            "session_id IS NOT NULL"
        ).fetchall()
    ]
    conn.register("pseudonyms", pa.table({"id": ids, "alias": [pseudonym(key, i) for i in ids]}))
    line_hashes = conn.execute(
        "SELECT DISTINCT raw FROM placed WHERE event_time IS NULL AND raw IS NOT NULL"
    ).fetchall()
    conn.register(
        "line_hashes",
        pa.table(
            {
                "raw": [r[0] for r in line_hashes],
                "digest": [pseudonym(key, r[0]) for r in line_hashes],
            }
        ),
    )
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
    ingest reason (NULL when the line parsed) and its ``day``. Returns the files read, once each, as
    first named (see ``_source_files``)."""
    fmt = _source_format(format_name)
    tz = check_timezone(tz or fmt.default_tz, "--tz")
    first = start or (fmt.period[0] if fmt.period else EARLIEST_DAY)
    last = end or (fmt.period[1] if fmt.period else dt.date(9999, 12, 31))
    if first > last:
        raise ValueError(f"--start {first} is after --end {last}: no day could be valid")
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    sources = source_files(paths)
    conn.execute("SET TimeZone = $tz", {"tz": tz})
    conn.execute(f"CREATE TABLE staged {_STAGED_COLUMNS}")
    for source in sources:
        before = _signature(source)
        _stage_file(conn, source, fmt, max_bad_fraction)
        if _signature(source) != before:
            raise IngestError(
                str(source), "changed while it was read (is it still being written?): ingest it once it is complete"
            )
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
    on_staged: Callable[[IngestReport], None] | None = None,
) -> IngestReport:
    """Split source files into daily landing partitions; see the module docstring for the rules.

    ``on_staged`` is called with the report once every file is read, classified and staged, right before
    anything is published: if it raises, nothing is published, the staging is removed and the exception
    propagates (the command records the home's settings there, so they never lag behind its landing).
    """
    fmt = _source_format(format_name)
    tz = check_timezone(tz or fmt.default_tz, "--tz")
    if pseudonym_key is not None and len(pseudonym_key) < 16:
        raise ValueError(
            f"the pseudonymisation key (--pseudonymise) must have at least 16 characters, not {len(pseudonym_key)}"
        )
    root = Path(landing_root)
    root.mkdir(parents=True, exist_ok=True)
    with _sole_ingest(root):
        recover_landing(root)
        _remove_leftovers(root)
        staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            with duckdb.connect(str(staging / "ingest.duckdb")) as conn:
                sources = place(conn, paths, format_name, tz, start, end, now, max_bad_fraction)
                if pseudonym_key is not None:
                    _pseudonymise(conn, pseudonym_key)
                written = _write_days(conn, staging, sources)
                report = _report(conn, staging, written, sources, tz)
            steps, report.withdrawn, report.shared = _publish_steps(root, written, sources)
            if on_staged is not None:
                on_staged(report)
            _publish(root, staging, steps)
        finally:
            if not (root / JOURNAL).exists():  # else a publish failed halfway: its journal still needs the staging
                shutil.rmtree(staging, ignore_errors=True)
    return report


def _signature(path: Path) -> tuple[int, int, int]:
    """Size, modification time and inode: a file rewritten or replaced while it is read changes one of them."""
    status = path.stat()
    return status.st_size, status.st_mtime_ns, status.st_ino


def _source_format(name: str) -> SourceFormat:
    if name not in FORMATS:
        raise ValueError(f"--format {name!r} is not a format shopseq reads; known: {', '.join(FORMATS)}")
    return FORMATS[name]


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
        first, last = conn.execute(
            "SELECT min(day), max(day) FROM placed WHERE source_file = ?", [str(source)]
        ).fetchall()[0]
        if first is None:
            reasons = conn.execute(
                """SELECT string_agg(ingest_reason || ' ' || n, ', ' ORDER BY n DESC, ingest_reason) FROM (
                       SELECT ingest_reason, count(*) AS n FROM placed WHERE source_file = ? GROUP BY 1)""",
                [str(source)],
            ).fetchall()[0][0]
            raise IngestError(
                str(source),
                f"no row has a valid day, so none can land ({reasons}); check --start, "
                "--end and --tz, or the file's format",
            )
        # Every day the file spans lands, days without events as an empty file: such a day is
        # known to be empty, unlike a day whose landing has not arrived.
        for day in (first + dt.timedelta(days=i) for i in range((last - first).days + 1)):
            folder = staging / day.isoformat()
            folder.mkdir(exist_ok=True)
            conn.execute(
                f"""COPY (SELECT {", ".join(CANONICAL_COLUMNS)}, source_file, source_line, raw, ingest_reason
                          FROM placed WHERE source_file = $source AND day = $day ORDER BY file_row)
                    TO $target (FORMAT parquet)""",
                {"source": str(source), "day": day, "target": str(folder / name)},
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
        str(s): dict(
            zip(
                ("read", "quarantined_at_ingest"),
                conn.execute(
                    "SELECT count(*), count(ingest_reason) FROM placed WHERE source_file = ?", [str(s)]
                ).fetchall()[0],
            )
        )
        for s in sources
    }
    return IngestReport(per_day=per_day, per_file=per_file, timezone=tz)


# ---------------------------------------------------------------- publishing and recovering the landing


def _publish_steps(
    root: Path, written: list[tuple[dt.date, str]], sources: list[Path]
) -> tuple[list[list[str]], list[dt.date], list[dt.date]]:
    """The steps that replace the landing files of ``sources`` by the staged ``written`` ones: move each new
    file in, then withdraw every file an earlier ingest of these sources left in a day they no longer reach.
    Also the days withdrawn (those that held files of these sources and are left with no landing file) and the
    days written that also hold files of other sources."""
    names = {landing_name(s) for s in sources}
    before = {folder.name: {f.name for f in folder.glob("*.parquet")} for folder in _day_folders(root)}
    new = {(day.isoformat(), name) for day, name in written}
    old = {(day, name) for day, files in before.items() for name in files & names}
    after = {day: set(files) for day, files in before.items()}
    for day, name in old - new:
        after[day].discard(name)
    for day, name in new:
        after.setdefault(day, set()).add(name)
    steps = [["move", day, name] for day, name in sorted(new)]
    steps += [["withdraw", day, name] for day, name in sorted(old - new)]
    withdrawn = sorted(dt.date.fromisoformat(day) for day in {day for day, _ in old} if not after[day])
    shared = sorted(dt.date.fromisoformat(day) for day in {day for day, _ in new} if after[day] - names)
    return steps, withdrawn, shared


def _day_folders(root: Path) -> list[Path]:
    """The landing's day folders, named exactly YYYY-MM-DD (the locks, journal and staging are not)."""
    days = []
    for folder in root.iterdir():
        try:
            is_day = dt.date.fromisoformat(folder.name).isoformat() == folder.name
        except ValueError:
            is_day = False
        if is_day and folder.is_dir():
            days.append(folder)
    return days


@contextmanager
def _publish_lock(root: Path, operation: int) -> Iterator[None]:
    """``flock`` on the landing's publish lock for the block: exclusive to apply a journal, shared to list the
    landing. The kernel drops it when its process dies, so a killed holder never leaves it taken."""
    with open(root / PUBLISH_LOCK, "a") as handle:
        fcntl.flock(handle, operation)
        yield


@contextmanager
def _sole_ingest(root: Path) -> Iterator[None]:
    """Hold the landing's ingest lock for the block; a second ingest is refused rather than queued, since
    what its command checked (the home's time zone, its kind of landing) may no longer hold once it runs."""
    with open(root / INGEST_LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestError(str(root), "another ingest into this landing is running; run this one after it") from None
        yield


def _publish(root: Path, staging: Path, steps: list[list[str]]) -> None:
    """Switch the landing to the staged files: the journal's rename is the one atomic switch, then its
    steps are applied (by this process, or by whoever recovers the landing after a kill)."""
    journal = {"staging": staging.name, "steps": steps}
    with _publish_lock(root, fcntl.LOCK_EX):
        pending = root / f"{JOURNAL}.tmp"
        with open(pending, "w") as handle:
            json.dump(journal, handle)
            handle.flush()
            os.fsync(handle.fileno())
        pending.replace(root / JOURNAL)
        _apply_journal(root, journal)
        (root / JOURNAL).unlink()


def _read_journal(root: Path) -> dict:
    """The publish journal, refused unless every name in it is one an ingest writes: a staging folder of the
    landing, day folders, landing file names. A journal is trusted with renames and deletions, so one planted or
    corrupted must not reach outside the landing (``../``) or touch anything else in it."""
    path = root / JOURNAL
    try:
        journal = json.loads(path.read_text())
        staging, steps = journal["staging"], journal["steps"]
        valid = re.fullmatch(rf"{re.escape(STAGING_PREFIX)}[0-9a-f]{{12}}", staging) is not None and all(
            action in ("move", "withdraw")
            and dt.date.fromisoformat(day).isoformat() == day
            and re.fullmatch(r"[A-Za-z0-9_-]+\.parquet", name) is not None
            for action, day, name in steps
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IngestError(str(path), f"is not a publish journal shopseq wrote ({error}); move it away") from None
    if not valid:
        raise IngestError(str(path), "names a file outside the landing or not written by an ingest; move it away")
    return journal


def _apply_journal(root: Path, journal: dict) -> None:
    """Apply every step of a publish journal. Each step may already have been applied (a publish killed
    halfway): a move whose staged file is gone was made, a withdrawn file already gone was withdrawn."""
    for action, day, name in journal["steps"]:
        target = root / day / name
        if action == "move":
            staged = root / journal["staging"] / day / name
            if staged.exists():
                target.parent.mkdir(exist_ok=True)
                staged.replace(target)
        else:
            target.unlink(missing_ok=True)
            if target.parent.is_dir() and not any(target.parent.iterdir()):
                target.parent.rmdir()  # a day left without files is not a landed day


def recover_landing(root: str | Path) -> None:
    """Finish a publish that was killed after its switch (rename of the journal), so that the landing is
    the complete new one; a publish killed before the switch left the old landing untouched.

    Called before the landing is read (``LandingSource``, through ``settled_landing``) and at the start of
    every ingest. Journals are applied under the exclusive publish lock, and a journal found under it
    belongs to a dead process (a live publisher removes it before unlocking), so two processes recovering
    at once apply it once, and its staging folder is nobody's any more.
    """
    root = Path(root)
    if not (root / JOURNAL).exists():
        return
    with _publish_lock(root, fcntl.LOCK_EX):
        if (root / JOURNAL).exists():  # not finished by another process while this one waited
            journal = _read_journal(root)
            _apply_journal(root, journal)
            (root / JOURNAL).unlink()
            shutil.rmtree(root / journal["staging"], ignore_errors=True)


@contextmanager
def settled_landing(root: str | Path) -> Iterator[None]:
    """Hold publishes off while the caller lists the landing under ``root``, after finishing a killed one:
    the listing sees the whole old landing or the whole new one, never a publish half applied."""
    root = Path(root)
    while True:
        recover_landing(root)
        with _publish_lock(root, fcntl.LOCK_SH):
            if not (root / JOURNAL).exists():  # else a publish was killed between the two locks: finish it too
                yield
                return


def _remove_leftovers(root: Path) -> None:
    """Delete the staging folders (and a half-written journal) of ingests killed before their switch: called
    under the ingest lock, after ``recover_landing``, when no other ingest can own them."""
    for leftover in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover)
    if (root / f"{JOURNAL}.tmp").exists():
        (root / f"{JOURNAL}.tmp").unlink()
