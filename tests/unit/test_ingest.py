"""shopseq ingest: every format, every quarantine reason, every unreadable file, idempotence, privacy."""

import datetime as dt
import fcntl
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.logic.events import load_raw_day
from assets.logic.ingest import IngestError, ingest, landing_name, pseudonym
from resources import LandingSource
from tests.samples import SHARED, needs_samples

NOW = dt.datetime(2026, 1, 1)  # "now" for future_timestamp, fixed so the tests do not age
SHANGHAI = "Asia/Shanghai"
TS = 1512100000  # 2017-12-01 03:46:40 UTC = 11:46:40 China time


def _write(path: Path, lines: list, binary: bool = False) -> str:
    data = b"".join(line + b"\n" for line in lines) if binary else "".join(f"{line}\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return str(path)


def _landed(root: Path) -> pd.DataFrame:
    files = sorted(str(p) for p in root.glob("*/*.parquet"))
    return duckdb.sql(f"SELECT * FROM read_parquet({files}, filename = true)").df() if files else pd.DataFrame()


def _warehouse_outcomes(root: Path, tz: str) -> tuple[duckdb.DuckDBPyConnection, dict]:
    """Load every landed day through raw_events' own classification; counts per day."""
    conn = duckdb.connect()
    counts = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        day = dt.date.fromisoformat(folder.name)
        counts[day] = load_raw_day(conn, sorted(str(f) for f in folder.glob("*.parquet")), day, tz)
    return conn, counts


TAOBAO_CORPUS = [
    # (line, expected outcome)
    (f"1,100,10,pv,{TS}", "accepted"),
    (f"1,101,10,cart,{TS + 60}", "accepted"),
    (f"1,101,10,buy,{TS + 120}", "accepted"),
    (f"2,102,11,fav,{TS + 30}", "accepted"),
    (f"1,100,10,pv,{TS}", "exact_duplicate"),
    ("", "unparseable_line"),
    ('1,"102,10,pv,' + str(TS), "unparseable_line"),  # broken quoting
    ("1,103,10,pv", "wrong_column_count"),
    (f"1,103,10,pv,{TS},extra", "wrong_column_count"),
    (f"abc,103,10,pv,{TS}", "bad_type"),
    ("1,103,10,pv,yesterday", "bad_type"),  # a non-numeric epoch is a bad type first
    (f"1,103,10,teleport,{TS}", "unknown_event_type"),
    (f",103,10,pv,{TS}", "missing_user"),
    (f"1,,10,pv,{TS}", "missing_item"),
    ("1,104,10,pv,1505100000", "timestamp_out_of_range"),  # 2017-09-11, before the data set's period
    ("1,104,10,pv,1893456000", "future_timestamp"),  # 2030
]


def test_every_line_of_a_bad_taobao_file_is_accepted_or_quarantined_with_its_reason(tmp_path):
    lines = [line for line, _ in TAOBAO_CORPUS]
    raw_lines = [line.encode() for line in lines] + [b"1,105,10,pv,15121\xff0000"]
    source = _write(tmp_path / "UserBehavior.csv", raw_lines, binary=True)
    root = tmp_path / "landing"
    report = ingest([source], "taobao", str(root), now=NOW)

    expected = pd.Series([o for _, o in TAOBAO_CORPUS] + ["non_utf8"]).value_counts().to_dict()
    assert report.read == len(raw_lines) == report.accepted + report.quarantined
    assert report.accepted == expected.pop("accepted")
    reported = {
        k: v for c in report.per_day.values() for k, v in c.items() if k not in ("read", "accepted", "quarantined")
    }
    assert reported == expected
    assert list(report.per_day) == [dt.date(2017, 12, 1)]  # every line, even unplaceable ones, lands in a day

    conn, counts = _warehouse_outcomes(root, SHANGHAI)
    stored = dict(conn.execute("SELECT reason, count(*) FROM raw_events_quarantine GROUP BY 1").fetchall())
    assert stored == expected
    for day, c in counts.items():
        assert c["read"] == c["accepted"] + c["quarantined"] == report.per_day[day]["read"]
    rows = conn.execute(
        "SELECT source_file, source_line, reason, raw FROM raw_events_quarantine ORDER BY source_line"
    ).fetchall()
    by_line = {line: (reason, raw) for _, line, reason, raw in rows}
    assert all(f == source for f, *_ in rows)
    assert by_line[8] == ("wrong_column_count", "1,103,10,pv")  # line numbers are the file's own
    assert by_line[17][0] == "non_utf8" and "\\xff" in by_line[17][1]  # raw text kept, bad bytes escaped
    assert by_line[12][1] == f"1,103,10,teleport,{TS}"


def test_canonical_csv_rules_prices_queries_and_quoting(tmp_path):
    source = _write(
        tmp_path / "events.csv",
        [
            "event_time,user_id,event_type,item_id,price,query,session_id",
            "2025-03-02 10:00:00,u1,view,i1,9.5,,s1",
            '2025-03-02 10:01:00,u1,search,,,"red shoes, size 4",s1',
            "2025-03-02 10:02:00+01:00,u1, Add_To_Cart ,i1,9.5,,s1",
            "2025-03-02 10:03:00,u1,purchase,i1,-1,,s1",
            "2025-03-02 10:04:00,u1,purchase,i1,cheap,,s1",
            "2025-03-02 10:05:00,u2,view,,,,",
            "not a time,u2,view,i2,,,",
        ],
    )
    root = tmp_path / "landing"
    report = ingest([source], "canonical-csv", str(root), now=NOW)
    outcome = report.per_day[dt.date(2025, 3, 2)]
    assert outcome["accepted"] == 3
    assert {k: outcome.get(k) for k in ("negative_price", "bad_type", "missing_item", "bad_timestamp")} == {
        "negative_price": 1,
        "bad_type": 1,
        "missing_item": 1,
        "bad_timestamp": 1,
    }
    conn, _ = _warehouse_outcomes(root, "UTC")
    accepted = conn.execute("SELECT event_time, event_type, query FROM raw_events ORDER BY event_time").fetchall()
    assert accepted[0][1:] == ("add_to_cart", None) and accepted[0][0] == dt.datetime(
        2025, 3, 2, 9, 2
    )  # offset honoured
    assert accepted[2][1:] == ("search", "red shoes, size 4")


@pytest.mark.parametrize(
    "fmt, name, lines, expected",
    [
        (
            "rees46",
            "rees.csv",
            [
                "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session",
                "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7",
                "2019-10-01 00:00:05 UTC,cart,3900821,2053013552326770905,appliances.water,aqua,33.20,554748717,9333",
            ],
            [
                ("2019-10-01 00:00:00", "541312140", "72d7", "view", "44600062", 35.79),
                ("2019-10-01 00:00:05", "554748717", "9333", "add_to_cart", "3900821", 33.2),
            ],
        ),
        (
            "retailrocket",
            "events.csv.gz",
            [
                "timestamp,visitorid,event,itemid,transactionid",
                "1433221332117,257597,view,355908,",
                "1433224214164,992329,addtocart,248676,",
                "1433193500981,121688,transaction,15335,11117",
            ],
            [
                ("2015-06-01 21:18:20.981", "121688", None, "purchase", "15335", None),
                ("2015-06-02 05:02:12.117", "257597", None, "view", "355908", None),
                ("2015-06-02 05:50:14.164", "992329", None, "add_to_cart", "248676", None),
            ],
        ),
        (
            "yoochoose-clicks",
            "yoochoose-clicks.dat",
            [
                "1,2014-04-07T10:51:09.277Z,214536502,0",
                "1,2014-04-07T10:54:09.868Z,214536500,S",
            ],
            [
                ("2014-04-07 10:51:09.277", "s1", "1", "view", "214536502", None),
                ("2014-04-07 10:54:09.868", "s1", "1", "view", "214536500", None),
            ],
        ),
        (
            "yoochoose-clicks",
            "clicks.tsv",
            [
                "SessionId\tItemId\tTime",
                "7\t214536502\t1396867869.277",
            ],
            [("2014-04-07 10:51:09.277", "s7", "7", "view", "214536502", None)],
        ),
        (
            "yoochoose-buys",
            "yoochoose-buys.dat",
            [
                "420374,2014-04-06T18:44:58.314Z,214537888,12462,1",
            ],
            [("2014-04-06 18:44:58.314", "s420374", "420374", "purchase", "214537888", 12462.0)],
        ),
        (
            "otto",
            "train.jsonl",
            [
                json.dumps(
                    {
                        "session": 0,
                        "events": [
                            {"aid": 1517085, "ts": 1659304800025, "type": "clicks"},
                            {"aid": 1563459, "ts": 1659304904511, "type": "orders"},
                        ],
                    }
                ),
            ],
            [
                ("2022-07-31 22:00:00.025", "s0", "0", "view", "1517085", None),
                ("2022-07-31 22:01:44.511", "s0", "0", "purchase", "1563459", None),
            ],
        ),
        (
            "diginetica",
            "train-item-views.csv",
            [
                "session_id;user_id;item_id;timeframe;eventdate",
                "1;NA;81766;526309;2016-05-09",
                "2;4711;31331;1031018;2016-05-09",
            ],
            [
                ("2016-05-09 00:08:46.309", "s1", "1", "view", "81766", None),
                ("2016-05-09 00:17:11.018", "4711", "2", "view", "31331", None),
            ],
        ),
        (
            "canonical-jsonl",
            "events.jsonl",
            [
                json.dumps({"event_time": "2025-03-02T10:00:00Z", "user_id": 5, "event_type": "fav", "item_id": "i9"}),
            ],
            [("2025-03-02 10:00:00", "5", None, "favorite", "i9", None)],
        ),
    ],
)
def test_each_public_format_maps_onto_the_canonical_schema(tmp_path, fmt, name, lines, expected):
    source = _write(tmp_path / name, lines)
    root = tmp_path / "landing"
    report = ingest([source], fmt, str(root), tz="UTC", now=NOW)
    assert report.read == report.accepted == len(expected)
    conn, _ = _warehouse_outcomes(root, "UTC")
    got = conn.execute(
        """SELECT strftime(event_time, '%Y-%m-%d %H:%M:%S.%g'), user_id, session_id, event_type, item_id, price
           FROM raw_events ORDER BY event_time"""
    ).fetchall()
    assert [(t.removesuffix(".000"), *rest) for t, *rest in got] == expected


def test_canonical_parquet_and_otto_lines_without_events(tmp_path):
    frame = pd.DataFrame(
        {
            "event_time": pd.to_datetime(["2025-03-02 10:00", "2025-03-02 11:00"]).tz_localize("UTC"),
            "user_id": ["u1", "u2"],
            "event_type": ["view", "buy"],
            "item_id": ["a", "b"],
        }
    )
    frame.to_parquet(tmp_path / "events.parquet")
    report = ingest([str(tmp_path / "events.parquet")], "canonical-parquet", str(tmp_path / "p"), now=NOW)
    assert report.accepted == 2
    otto = _write(
        tmp_path / "s.jsonl",
        [
            json.dumps({"session": 1, "events": [{"aid": 5, "ts": 1659304800025, "type": "carts"}, 7]}),
            "{not json",
            json.dumps({"session": 2, "events": []}),
            json.dumps(
                {"session": 3, "events": [{"aid": a, "ts": 1659304800025, "type": "carts"} for a in range(6, 9)]}
            ),
        ],
    )
    report = ingest([otto], "otto", str(tmp_path / "o"), now=NOW)
    day = report.per_day[dt.date(2022, 7, 31)]
    assert (day["read"], day["accepted"], day["unparseable_line"]) == (7, 4, 3)


def test_timezone_decides_the_day_and_times_are_stored_in_utc(tmp_path):
    late_evening_utc = 1512145800  # 2017-12-01 16:30 UTC = 2017-12-02 00:30 China time
    source = _write(tmp_path / "t.csv", [f"1,100,10,pv,{late_evening_utc}"])
    report = ingest([source], "taobao", str(tmp_path / "cn"), now=NOW)
    assert list(report.per_day) == [dt.date(2017, 12, 2)] and report.timezone == SHANGHAI
    assert _landed(tmp_path / "cn")["event_time"].iloc[0] == pd.Timestamp("2017-12-01 16:30")
    report = ingest([source], "taobao", str(tmp_path / "utc"), tz="UTC", now=NOW)
    assert list(report.per_day) == [dt.date(2017, 12, 1)]


@pytest.mark.parametrize(
    "case, make, reason",
    [
        ("missing", lambda p: str(p / "nope.csv"), "file not found"),
        ("empty", lambda p: _write(p / "empty.csv", []), "empty file"),
        ("truncated gzip", lambda p: _truncated_gzip(p), "corrupt or truncated gzip"),
        (
            "not gzip",
            lambda p: _write(p / "plain.csv", [f"1,1,1,pv,{TS}"]) and _rename(p / "plain.csv", "plain.csv.gz"),
            "corrupt or truncated gzip",
        ),
        (
            "wrong format",
            lambda p: _write(p / "other.csv", ['{"a": 1}', '{"b": 2}', f"1,1,1,pv,{TS}"]),
            "does not look like taobao",
        ),
        ("folder", lambda p: str(p), "is a folder"),
    ],
)
def test_an_unreadable_file_fails_naming_it_and_leaves_the_landing_untouched(tmp_path, case, make, reason):
    root = tmp_path / "landing"
    good = _write(tmp_path / "good.csv", [f"1,100,10,pv,{TS}"])
    ingest([good], "taobao", str(root), now=NOW)
    before = sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*.parquet"))
    (tmp_path / "bad").mkdir()
    bad = make(tmp_path / "bad")
    with pytest.raises(IngestError) as error:
        ingest([good, bad], "taobao", str(root), now=NOW)  # the good file is not half-replaced either
    assert bad in str(error.value) and reason in str(error.value)
    assert sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*.parquet")) == before
    assert not any(p.name.startswith(".ingest-") for p in root.iterdir())  # staging removed


def test_a_header_of_another_format_is_refused(tmp_path):
    source = _write(tmp_path / "rees.csv", ["event_time,event_type,product_id", "2019-10-01 00:00:00 UTC,view,1"])
    with pytest.raises(IngestError, match="not a retailrocket file: its header"):
        ingest([source], "retailrocket", str(tmp_path / "landing"), now=NOW)


def _truncated_gzip(folder: Path) -> str:
    data = gzip.compress("".join(f"1,{i},10,pv,{TS}\n" for i in range(5000)).encode())
    path = folder / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def _rename(path: Path, name: str) -> str:
    return str(path.rename(path.with_name(name)))


def test_reingesting_a_file_replaces_its_landing_files(tmp_path):
    source = tmp_path / "log.csv"
    _write(source, [f"1,100,10,pv,{TS}", f"1,101,10,pv,{TS + 86400}"])
    root = tmp_path / "landing"
    conn = duckdb.connect()

    def ingest_and_load():
        ingest([str(source)], "taobao", str(root), now=NOW)
        for folder in sorted(root.glob("[0-9]*")):  # the day folders, not the locks beside them
            load_raw_day(conn, [str(f) for f in folder.glob("*.parquet")], dt.date.fromisoformat(folder.name), SHANGHAI)
        return _landed(root).drop(columns="filename"), conn.execute("SELECT * FROM raw_events ORDER BY ALL").df()

    landed_once, warehouse_once = ingest_and_load()
    landed_twice, warehouse_twice = ingest_and_load()
    pd.testing.assert_frame_equal(landed_once, landed_twice)
    pd.testing.assert_frame_equal(warehouse_once, warehouse_twice)
    assert len(warehouse_twice) == 2
    # The file shrank to one day: the other day's old rows must not linger.
    _write(source, [f"1,100,10,pv,{TS}"])
    ingest([str(source)], "taobao", str(root), now=NOW)
    assert len(_landed(root)) == 1 and [p.name for p in root.rglob("*.parquet")] == [landing_name(source)]


def test_pseudonymised_ingest_lets_no_raw_identifier_through(tmp_path):
    source = _write(
        tmp_path / "log.csv",
        [f"918273,100,10,pv,{TS}", f"918273,101,10,buy,{TS + 5}", f"918273,101,10,buy,{TS + 5}", "918273 garbage line"],
    )
    key = "k" * 32
    root = tmp_path / "landing"
    ingest([source], "taobao", str(root), now=NOW, pseudonym_key=key)
    landed = _landed(root)
    text = landed.drop(columns="filename").astype(str).to_string()
    assert "918273" not in text
    assert set(landed["user_id"].dropna()) == {pseudonym(key, "918273")}
    conn, counts = _warehouse_outcomes(root, SHANGHAI)
    everything = (
        conn.execute("SELECT * FROM raw_events").df().to_string()
        + conn.execute("SELECT * FROM raw_events_quarantine").df().to_string()
    )
    assert "918273" not in everything
    assert sum(c["read"] for c in counts.values()) == 4
    # A different key gives different pseudonyms; no key keeps the id.
    other = tmp_path / "other"
    ingest([source], "taobao", str(other), now=NOW, pseudonym_key="z" * 32)
    assert set(_landed(other)["user_id"].dropna()) != set(landed["user_id"].dropna())
    with pytest.raises(ValueError, match="at least 16"):
        ingest([source], "taobao", str(tmp_path / "x"), now=NOW, pseudonym_key="short")


# Row and event-type counts published in ../shared/data/README.md.
SAMPLES = {
    "taobao": ("taobao/UserBehavior_head_84k.csv", 84_475, {"pv": 75_872, "cart": 4_497, "fav": 2_356, "buy": 1_750}),
    "rees46": ("rees46/2019-Oct_head_17k.csv", 17_435, {"view": 17_056, "purchase": 214, "cart": 165}),
    "otto": ("otto/train_fixture.jsonl", 862, {"clicks": 800, "carts": 52, "orders": 10}),
    "diginetica": ("diginetica/sample_train-item-views.csv", 12_391, {"view": 12_391}),
}


@needs_samples
@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_shared_samples_reproduce_their_published_counts(tmp_path, fmt):
    path, rows, mix = SAMPLES[fmt]
    report = ingest([str(SHARED / path)], fmt, str(tmp_path / "landing"), now=NOW)
    assert report.read == rows == report.accepted + report.quarantined
    landed = _landed(tmp_path / "landing")
    # Each row's source event type, from the parsed field or (for a truncated line) its raw text.
    types = landed["event_type"].fillna(landed["raw"].str.split(",").str[1])
    assert types.value_counts().to_dict() == mix


def test_a_mostly_unusable_file_is_refused_naming_its_first_bad_line(tmp_path):
    lines = [f"1,{i},10,pv,{TS}" for i in range(3)] + ["not,a,taobao,line"] * 9  # lines 4..12 are bad
    source = _write(tmp_path / "mixed.csv", lines)
    with pytest.raises(IngestError, match=r"9 of 12 rows unusable \(first: line 4: wrong_column_count\)"):
        ingest([source], "taobao", str(tmp_path / "landing"), now=NOW)


# ---------------------------------------------------------------- issue 18: nothing lost, nothing injected


def test_a_file_named_twice_under_two_spellings_is_read_once(tmp_path, monkeypatch):
    source = tmp_path / "a.csv"
    _write(source, [f"1,100,10,pv,{TS}", f"1,101,10,pv,{TS + 86400}"])
    (tmp_path / "link.csv").symlink_to(source)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "landing"
    report = ingest(["a.csv", "./a.csv", str(source), "link.csv"], "taobao", str(root), now=NOW)
    assert report.read == 2 and list(report.per_file) == ["a.csv"]  # the first spelling names the file
    assert len(_landed(root)) == 2
    # A copy is another file, even with the same content: its rows land beside the original's.
    _write(tmp_path / "copy.csv", [f"1,100,10,pv,{TS}", f"1,101,10,pv,{TS + 86400}"])
    report = ingest(["a.csv", "copy.csv"], "taobao", str(root), now=NOW)
    assert report.read == 4 and len(_landed(root)) == 4
    assert report.accepted == 2  # the copy's rows are exact duplicates of the original's


def test_reingesting_a_shorter_file_reports_the_withdrawn_days(tmp_path):
    root = tmp_path / "landing"
    log, other = tmp_path / "log.csv", tmp_path / "other.csv"
    _write(log, [f"1,100,10,pv,{TS + i * 86400}" for i in range(4)])  # 12-01 .. 12-04 China time
    _write(other, [f"2,200,10,pv,{TS + 2 * 86400}"])  # 12-03 holds another file too
    first = ingest([str(log), str(other)], "taobao", str(root), now=NOW, end=dt.date(2017, 12, 31))
    assert first.withdrawn == []
    _write(log, [f"1,100,10,pv,{TS}"])
    report = ingest([str(log)], "taobao", str(root), now=NOW, end=dt.date(2017, 12, 31))
    assert report.withdrawn == [dt.date(2017, 12, 2), dt.date(2017, 12, 4)]  # 12-03 still holds other.csv's file
    landing = LandingSource(home=str(tmp_path), mode="files")
    assert landing.landed_days() == [dt.date(2017, 12, 1), dt.date(2017, 12, 3)]


# Kill an ingest (SIGKILL) at the n-th call of a filesystem primitive, or once everything is staged, in a
# child process: the primitives are the ones any publish must use, so the test does not depend on its steps.
KILL_SCRIPT = """
import datetime as dt, os, signal, sys
from pathlib import Path
from assets.logic.ingest import ingest

source, root, primitive, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

options = {"on_staged": die} if primitive == "on_staged" else {}
if primitive != "on_staged":
    real, calls = getattr(Path, primitive), []

    def counting(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == n:
            die()
        return real(self, *args, **kwargs)

    setattr(Path, primitive, counting)
ingest([source], "taobao", root, now=dt.datetime(2026, 1, 1), end=dt.date(2017, 12, 31), **options)
"""


@pytest.mark.parametrize(
    "primitive, n", [("on_staged", 0), ("replace", 1), ("replace", 3), ("unlink", 1), ("unlink", 2)]
)
def test_a_killed_reingest_leaves_the_complete_old_or_new_landing(tmp_path, primitive, n):
    home = tmp_path / "home"
    root = home / "landing"
    source = tmp_path / "log.csv"
    old_days = [dt.date(2017, 12, 1) + dt.timedelta(days=i) for i in range(5)]
    new_days = old_days[1:] + [dt.date(2017, 12, 6)]
    _write(source, [f"1,{100 + i},10,pv,{TS + i * 86400}" for i in range(5)])  # one event a day
    ingest([str(source)], "taobao", str(root), now=NOW, end=dt.date(2017, 12, 31))
    _write(source, [f"1,{200 + i},10,pv,{TS + (i // 2 + 1) * 86400 + i}" for i in range(10)])  # two a day, a day later
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(source), str(root), primitive, str(n)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    landing = LandingSource(home=str(home), mode="files")

    def rows_per_day(_) -> dict:
        return {
            day: duckdb.connect()
            .execute("SELECT count(*) FROM read_parquet($f)", {"f": landing.files_for_day(day)})
            .fetchone()[0]
            for day in landing.landed_days()
        }

    try:  # the first read asks for the day only the new version has
        newest_day_files = len(landing.files_for_day(new_days[-1]))
    except FileNotFoundError:
        newest_day_files = 0
    with ThreadPoolExecutor(4) as readers:  # readers that find the killed publish finish it once, together
        seen = list(readers.map(rows_per_day, range(4)))
    old_version, new_version = {d: 1 for d in old_days}, {d: 2 for d in new_days}
    assert seen[0] in (old_version, new_version) and seen == seen[:1] * 4
    assert newest_day_files == (seen[0] == new_version)
    # The next ingest cleans what the killed one left and publishes the new version whole.
    report = ingest([str(source)], "taobao", str(root), now=NOW, end=dt.date(2017, 12, 31))
    assert sorted(report.per_day) == new_days
    assert landing.landed_days() == new_days and len(_landed(root)) == 10
    assert not [p.name for p in root.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_a_publish_that_fails_halfway_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    root = tmp_path / "landing"
    source = tmp_path / "log.csv"
    _write(source, [f"1,100,10,pv,{TS + i * 86400}" for i in range(3)])
    ingest([str(source)], "taobao", str(root), now=NOW, end=dt.date(2017, 12, 31))
    _write(source, [f"1,200,10,pv,{TS + i * 86400}" for i in range(1, 4)])
    real, calls = Path.replace, []

    def full_disk(self, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ingest([str(source)], "taobao", str(root), now=NOW, end=dt.date(2017, 12, 31))
    monkeypatch.setattr(Path, "replace", real)
    landing = LandingSource(home=str(tmp_path), mode="files")
    assert landing.landed_days() == [dt.date(2017, 12, 2), dt.date(2017, 12, 3), dt.date(2017, 12, 4)]
    assert set(_landed(root)["item_id"]) == {"200"}


def test_two_ingests_into_one_landing_cannot_interleave(tmp_path):
    root = tmp_path / "landing"
    root.mkdir()
    source = _write(tmp_path / "log.csv", [f"1,100,10,pv,{TS}"])
    with open(root / ".ingest.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(IngestError, match="another ingest"):
            ingest([source], "taobao", str(root), now=NOW)
        assert not list(root.rglob("*.parquet"))
    assert ingest([source], "taobao", str(root), now=NOW).read == 1


def test_on_staged_sees_the_report_before_anything_is_published_and_can_stop_it(tmp_path):
    root = tmp_path / "landing"
    source = _write(tmp_path / "log.csv", [f"1,100,10,pv,{TS}"])
    seen = []

    def refuse(report):
        seen.append((report.read, list(root.glob("[0-9]*/*.parquet"))))
        raise RuntimeError("settings cannot be written")

    with pytest.raises(RuntimeError, match="settings cannot be written"):
        ingest([source], "taobao", str(root), now=NOW, on_staged=refuse)
    assert seen == [(1, [])]
    assert not list(root.rglob("*.parquet")) and not [p for p in root.iterdir() if p.name.startswith(".ingest-")]
    assert ingest([source], "taobao", str(root), now=NOW).read == 1  # and the next ingest runs


@pytest.mark.parametrize(
    "fmt, header",
    [
        ("canonical-csv", "event_time,user_id,event_type,user_id"),
        ("rees46", "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session,brand"),
    ],
)
def test_a_duplicated_header_name_is_refused(tmp_path, fmt, header):
    row = {
        "canonical-csv": "2025-03-02 10:00:00,u1,view,u2",
        "rees46": "2019-10-01 00:00:00 UTC,view,1,2,,b,1.0,3,s,b",
    }[fmt]
    source = _write(tmp_path / "dup.csv", [header, row])
    with pytest.raises(IngestError, match=r"dup\.csv: .*duplicated column") as error:
        ingest([source], fmt, str(tmp_path / "landing"), now=NOW)
    assert ("user_id" if fmt == "canonical-csv" else "brand") in str(error.value)


def test_a_duplicated_parquet_column_is_refused(tmp_path):
    table = pa.table(
        [["2025-03-02 10:00:00"], ["u1"], ["view"], ["u2"]], names=["event_time", "user_id", "event_type", "user_id"]
    )
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(IngestError, match="duplicated column 'user_id'"):
        ingest([str(tmp_path / "dup.parquet")], "canonical-parquet", str(tmp_path / "landing"), now=NOW)


def test_a_timezone_is_validated_and_never_pasted_into_sql(tmp_path):
    source = _write(tmp_path / "log.csv", [f"1,100,10,pv,{TS}"])
    target = tmp_path / "injected.txt"
    with pytest.raises(ValueError, match="--tz"):
        ingest(
            [source],
            "taobao",
            str(tmp_path / "landing"),
            tz=f"UTC'; COPY (SELECT 'x') TO '{target}'; SET TimeZone = 'UTC",
            now=NOW,
        )
    assert not target.exists()
    with pytest.raises(ValueError, match="--tz 'utc'"):
        ingest([source], "taobao", str(tmp_path / "landing"), tz="utc", now=NOW)


def test_a_home_whose_path_has_quotes_ingests_and_reads(tmp_path):
    home = tmp_path / 'it\'s "x"; y'
    source = _write(tmp_path / "log.csv", [f"1,100,10,pv,{TS}", f"1,101,10,pv,{TS + 86400}"])
    for _ in range(2):  # re-ingesting replaces, through the same quoting
        report = ingest([source], "taobao", str(home / "landing"), now=NOW)
    assert report.accepted == 2
    landing = LandingSource(home=str(home), mode="files")
    assert landing.landed_days() == [dt.date(2017, 12, 1), dt.date(2017, 12, 2)]
    assert (
        load_raw_day(duckdb.connect(), landing.files_for_day(dt.date(2017, 12, 1)), dt.date(2017, 12, 1), SHANGHAI)[
            "accepted"
        ]
        == 1
    )


@pytest.mark.parametrize(
    "column, values",
    [
        ("user_id", pa.array([{"id": 1}, {"id": 2}])),
        ("item_id", pa.array([[1, 2], [3]])),
    ],
)
def test_a_nested_canonical_parquet_column_is_refused_naming_it_and_its_type(tmp_path, column, values):
    columns = {
        "event_time": pa.array(["2025-03-02 10:00:00", "2025-03-02 11:00:00"]),
        "user_id": pa.array(["u1", "u2"]),
        "event_type": pa.array(["view", "view"]),
        "item_id": pa.array(["a", "b"]),
    }
    pq.write_table(pa.table({**columns, column: values}), tmp_path / "nested.parquet")
    with pytest.raises(IngestError, match=rf"nested\.parquet: column {column} has the type (struct|list)"):
        ingest([str(tmp_path / "nested.parquet")], "canonical-parquet", str(tmp_path / "landing"), now=NOW)


@pytest.mark.parametrize(
    "fmt, name, lines",
    [
        (
            "diginetica",
            "d.csv",
            [
                "session_id;user_id;item_id;timeframe;eventdate",
                "1;NA;5;526309;2016-05-09",
                "1;NA;6;10000000000000000;2016-05-09",
                "1;NA;7;1e16;2016-05-09",
                "1;NA;8;526310;2016-05-09",
                "1;NA;9;526311;2016-05-09",
            ],
        ),
        (
            "taobao",
            "t.csv",
            [f"1,100,10,pv,{TS}", "1,101,10,pv,1e20", "1,102,10,pv,-1e20", f"1,103,10,pv,{TS}", f"1,104,10,pv,{TS}"],
        ),
        (
            "retailrocket",
            "r.csv",
            [
                "timestamp,visitorid,event,itemid,transactionid",
                "1433221332117,1,view,5,",
                "1e20,1,view,6,",
                "100000000000000000000000,1,view,7,",
                "1433221332118,1,view,8,",
                "1433221332119,1,view,9,",
            ],
        ),
        (
            "yoochoose-clicks",
            "y.tsv",
            [
                "SessionId\tItemId\tTime",
                "7\t5\t1396867869.277",
                "7\t6\t1e20",
                "7\t7\tinf",
                "7\t8\t1396867869.3",
                "7\t9\t1396867869.4",
            ],
        ),
        (
            "otto",
            "o.jsonl",
            [
                json.dumps(
                    {
                        "session": 1,
                        "events": [
                            {"aid": 5, "ts": 1659304800025, "type": "clicks"},
                            {"aid": 6, "ts": 1e20, "type": "clicks"},
                            {"aid": 7, "ts": -1e300, "type": "clicks"},
                            {"aid": 8, "ts": 1659304800026, "type": "clicks"},
                            {"aid": 9, "ts": 1659304800027, "type": "clicks"},
                        ],
                    }
                )
            ],
        ),
    ],
)
def test_a_huge_time_is_quarantined_as_bad_timestamp_and_the_rest_accepted(tmp_path, fmt, name, lines):
    source = _write(tmp_path / name, lines)
    report = ingest([source], fmt, str(tmp_path / "landing"), tz="UTC", now=NOW, start=dt.date(2000, 1, 1))
    assert (report.read, report.accepted) == (5, 3)
    assert [c.get("bad_timestamp") for c in report.per_day.values()] == [2]


def test_a_time_beyond_the_calendar_in_text_is_quarantined(tmp_path):
    source = _write(
        tmp_path / "e.csv",
        [
            "event_time,user_id,event_type,item_id",
            "2025-03-02 10:00:00,u1,view,i1",
            "294247-01-10 04:00:54,u1,view,i2",
            "infinity,u1,view,i3",
            "-infinity,u1,view,i4",
        ],
    )
    report = ingest([source], "canonical-csv", str(tmp_path / "landing"), tz="Asia/Shanghai", now=NOW)
    assert (report.read, report.accepted) == (4, 1)


def test_a_fifo_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "events.csv"
    os.mkfifo(fifo)
    # Should the ingest open the FIFO, this writer lets it see an end of file instead of hanging the test.
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
    writer.start()
    try:
        with pytest.raises(IngestError, match="events.csv: is not a regular file"):
            ingest([str(fifo)], "taobao", str(tmp_path / "landing"), now=NOW)
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # releases the writer if nobody read
        writer.join(timeout=5)
    assert not [p for p in (tmp_path / "landing").iterdir() if p.name.startswith(".ingest-")]


def test_a_symlink_loop_is_named_as_such(tmp_path):
    (tmp_path / "a.csv").symlink_to(tmp_path / "b.csv")
    (tmp_path / "b.csv").symlink_to(tmp_path / "a.csv")
    with pytest.raises(IngestError, match=r"a\.csv: symlink loop"):
        ingest([str(tmp_path / "a.csv")], "taobao", str(tmp_path / "landing"), now=NOW)


def test_option_errors_name_the_option(tmp_path):
    source = _write(tmp_path / "log.csv", [f"1,100,10,pv,{TS}"])
    with pytest.raises(ValueError, match="--format 'nope'"):
        ingest([source], "nope", str(tmp_path / "landing"), now=NOW)
    with pytest.raises(ValueError, match="at least 16 characters, not 5"):
        ingest([source], "taobao", str(tmp_path / "landing"), now=NOW, pseudonym_key="short")


BOM = "\ufeff"


@pytest.mark.parametrize(
    "fmt, name, lines",
    [
        ("taobao", "t.csv", [f"{BOM}1,100,10,pv,{TS}", f"1,101,10,pv,{TS}"]),
        (
            "yoochoose-clicks",
            "y.dat",
            [f"{BOM}1,2014-04-07T10:51:09.277Z,214536502,0", "1,2014-04-07T10:54:09.868Z,214536500,S"],
        ),
        (
            "rees46",
            "r.csv",
            [
                BOM + "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session",
                "2019-10-01 00:00:00 UTC,view,1,2,,b,1.0,3,s",
                "2019-10-01 00:00:01 UTC,view,1,2,,b,1.0,3,s",
            ],
        ),
        (
            "canonical-jsonl",
            "e.jsonl",
            [
                BOM
                + json.dumps(
                    {"event_time": "2025-03-02T10:00:00Z", "user_id": "1", "event_type": "view", "item_id": "i"}
                ),
                json.dumps(
                    {"event_time": "2025-03-02T11:00:00Z", "user_id": "1", "event_type": "view", "item_id": "i"}
                ),
            ],
        ),
        (
            "otto",
            "o.jsonl",
            [
                BOM + json.dumps({"session": 1, "events": [{"aid": 5, "ts": 1659304800025, "type": "clicks"}]}),
                json.dumps({"session": 1, "events": [{"aid": 6, "ts": 1659304800026, "type": "clicks"}]}),
            ],
        ),
    ],
)
def test_a_utf8_bom_before_the_first_line_is_accepted(tmp_path, fmt, name, lines):
    source = _write(tmp_path / name, lines)
    report = ingest([source], fmt, str(tmp_path / "landing"), tz="UTC", now=NOW)
    assert report.read == report.accepted == 2
    assert BOM not in _landed(tmp_path / "landing").drop(columns="filename").astype(str).to_string()


@pytest.mark.parametrize(
    "fmt, name, lines, ids",
    [
        (
            "taobao",
            "t.csv",
            [
                f"12,100,10,pv,{TS}",
                f"12.0,100.0,10,pv,{TS + 1}",
                f" 12 ,1.0e2, 10 ,pv,{TS + 2}",
                f"1.2e1,0100,10.00,pv,{TS + 3}",
                f"+12,100,10,pv,{TS + 4}",
            ],
            {("12", "100", "10")},
        ),
        (
            "retailrocket",
            "r.csv",
            [
                "timestamp,visitorid,event,itemid,transactionid",
                "1433221332117,12.0,view,100,",
                "1433221332118,12,view,1e2,",
            ],
            {("12", "100", None)},
        ),
        (
            "otto",
            "o.jsonl",
            [
                json.dumps(
                    {
                        "session": 12.0,
                        "events": [
                            {"aid": 100, "ts": 1659304800025, "type": "clicks"},
                            {"aid": 100.0, "ts": 1659304800026, "type": "clicks"},
                        ],
                    }
                )
            ],
            {("s12", "100", None)},
        ),
        (
            "rees46",
            "rees.csv",
            [
                "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session",
                "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,b,35.79,541312140,72d7",
                "2019-10-01 00:00:01 UTC,view,44600062.0,2103807459595387724,,b,35.79,541312140.0,72d7",
            ],
            {("541312140", "44600062", "2103807459595387724")},
        ),
    ],
)
def test_numeric_ids_are_stored_as_canonical_integer_text(tmp_path, fmt, name, lines, ids):
    source = _write(tmp_path / name, lines)
    report = ingest([source], fmt, str(tmp_path / "landing"), tz="UTC", now=NOW)
    assert report.read == report.accepted
    landed = _landed(tmp_path / "landing")
    assert set(landed[["user_id", "item_id", "category_id"]].itertuples(index=False, name=None)) == ids


def test_a_non_integral_or_non_numeric_id_is_bad_type_and_canonical_formats_keep_text(tmp_path):
    good = [f"12,{100 + i},10,pv,{TS}" for i in range(4)]
    source = _write(
        tmp_path / "t.csv",
        good + [f"12.5,100,10,pv,{TS}", f"12,1e400,10,pv,{TS}", f"12,abc,10,pv,{TS}", f"nan,100,10,pv,{TS}"],
    )
    report = ingest([source], "taobao", str(tmp_path / "t"), now=NOW)
    assert report.accepted == 4 and report.per_day[dt.date(2017, 12, 1)]["bad_type"] == 4
    canonical = _write(
        tmp_path / "c.csv", ["event_time,user_id,event_type,item_id", "2025-03-02 10:00:00, 12.0 ,view,007"]
    )
    ingest([canonical], "canonical-csv", str(tmp_path / "c"), now=NOW)
    assert _landed(tmp_path / "c")[["user_id", "item_id"]].values.tolist() == [["12.0", "007"]]


def test_partial_days_are_a_tiny_first_or_last_day_beside_the_median():
    from assets.logic.ingest import IngestReport

    def report(*accepted, shared=()):
        days = {dt.date(2025, 3, 1) + dt.timedelta(days=i): {"read": n, "accepted": n} for i, n in enumerate(accepted)}
        return IngestReport(days, {}, "UTC", shared=list(shared))

    first, last = dt.date(2025, 3, 1), dt.date(2025, 3, 5)
    assert report(3, 100, 90, 110, 4).partial_days() == [(first, 3, 90), (last, 4, 90)]
    assert report(100, 90, 2, 110, 95).partial_days() == []  # a quiet day inside the log is the shop's, not a cut
    assert report(100, 100, 100, 100, 5).partial_days() == []  # 5% of the median: not below it
    assert report(100, 100, 100, 100, 4).partial_days() == [(last, 4, 100)]
    sixth = dt.date(2025, 3, 6)  # six days: the median 100.5 is not rounded down
    assert report(100, 100, 101, 101, 101, 5).partial_days() == [(sixth, 5, 100.5)]
    assert report(100, 1).partial_days() == []  # two days have no median to speak of
    # other sources land on the day too: this ingest's count is not the day's
    assert report(3, 100, 90, 110, 4, shared=[last]).partial_days() == [(first, 3, 90)]
