"""shopseq ingest: every format, every quarantine reason, every unreadable file, idempotence, privacy."""

import datetime as dt
import gzip
import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from assets.logic.events import load_raw_day
from assets.logic.ingest import IngestError, ingest, landing_name, pseudonym
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
    reported = {k: v for c in report.per_day.values() for k, v in c.items() if k not in ("read", "accepted", "quarantined")}
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
    source = _write(tmp_path / "events.csv", [
        "event_time,user_id,event_type,item_id,price,query,session_id",
        "2025-03-02 10:00:00,u1,view,i1,9.5,,s1",
        '2025-03-02 10:01:00,u1,search,,,"red shoes, size 4",s1',
        "2025-03-02 10:02:00+01:00,u1, Add_To_Cart ,i1,9.5,,s1",
        "2025-03-02 10:03:00,u1,purchase,i1,-1,,s1",
        "2025-03-02 10:04:00,u1,purchase,i1,cheap,,s1",
        "2025-03-02 10:05:00,u2,view,,,,",
        "not a time,u2,view,i2,,,",
    ])
    root = tmp_path / "landing"
    report = ingest([source], "canonical-csv", str(root), now=NOW)
    outcome = report.per_day[dt.date(2025, 3, 2)]
    assert outcome["accepted"] == 3
    assert {k: outcome.get(k) for k in ("negative_price", "bad_type", "missing_item", "bad_timestamp")} == {
        "negative_price": 1, "bad_type": 1, "missing_item": 1, "bad_timestamp": 1}
    conn, _ = _warehouse_outcomes(root, "UTC")
    accepted = conn.execute("SELECT event_time, event_type, query FROM raw_events ORDER BY event_time").fetchall()
    assert accepted[0][1:] == ("add_to_cart", None) and accepted[0][0] == dt.datetime(2025, 3, 2, 9, 2)  # offset honoured
    assert accepted[2][1:] == ("search", "red shoes, size 4")


@pytest.mark.parametrize(
    "fmt, name, lines, expected",
    [
        ("rees46", "rees.csv", [
            "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session",
            "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7",
            "2019-10-01 00:00:05 UTC,cart,3900821,2053013552326770905,appliances.water,aqua,33.20,554748717,9333",
        ], [("2019-10-01 00:00:00", "541312140", "72d7", "view", "44600062", 35.79),
            ("2019-10-01 00:00:05", "554748717", "9333", "add_to_cart", "3900821", 33.2)]),
        ("retailrocket", "events.csv.gz", [
            "timestamp,visitorid,event,itemid,transactionid",
            "1433221332117,257597,view,355908,",
            "1433224214164,992329,addtocart,248676,",
            "1433193500981,121688,transaction,15335,11117",
        ], [("2015-06-01 21:18:20.981", "121688", None, "purchase", "15335", None),
            ("2015-06-02 05:02:12.117", "257597", None, "view", "355908", None),
            ("2015-06-02 05:50:14.164", "992329", None, "add_to_cart", "248676", None)]),
        ("yoochoose-clicks", "yoochoose-clicks.dat", [
            "1,2014-04-07T10:51:09.277Z,214536502,0",
            "1,2014-04-07T10:54:09.868Z,214536500,S",
        ], [("2014-04-07 10:51:09.277", "s1", "1", "view", "214536502", None),
            ("2014-04-07 10:54:09.868", "s1", "1", "view", "214536500", None)]),
        ("yoochoose-clicks", "clicks.tsv", [
            "SessionId\tItemId\tTime",
            "7\t214536502\t1396867869.277",
        ], [("2014-04-07 10:51:09.277", "s7", "7", "view", "214536502", None)]),
        ("yoochoose-buys", "yoochoose-buys.dat", [
            "420374,2014-04-06T18:44:58.314Z,214537888,12462,1",
        ], [("2014-04-06 18:44:58.314", "s420374", "420374", "purchase", "214537888", 12462.0)]),
        ("otto", "train.jsonl", [
            json.dumps({"session": 0, "events": [{"aid": 1517085, "ts": 1659304800025, "type": "clicks"},
                                                  {"aid": 1563459, "ts": 1659304904511, "type": "orders"}]}),
        ], [("2022-07-31 22:00:00.025", "s0", "0", "view", "1517085", None),
            ("2022-07-31 22:01:44.511", "s0", "0", "purchase", "1563459", None)]),
        ("diginetica", "train-item-views.csv", [
            "session_id;user_id;item_id;timeframe;eventdate",
            "1;NA;81766;526309;2016-05-09",
            "2;4711;31331;1031018;2016-05-09",
        ], [("2016-05-09 00:08:46.309", "s1", "1", "view", "81766", None),
            ("2016-05-09 00:17:11.018", "4711", "2", "view", "31331", None)]),
        ("canonical-jsonl", "events.jsonl", [
            json.dumps({"event_time": "2025-03-02T10:00:00Z", "user_id": 5, "event_type": "fav", "item_id": "i9"}),
        ], [("2025-03-02 10:00:00", "5", None, "favorite", "i9", None)]),
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
    frame = pd.DataFrame({"event_time": pd.to_datetime(["2025-03-02 10:00", "2025-03-02 11:00"]).tz_localize("UTC"),
                          "user_id": ["u1", "u2"], "event_type": ["view", "buy"], "item_id": ["a", "b"]})
    frame.to_parquet(tmp_path / "events.parquet")
    report = ingest([str(tmp_path / "events.parquet")], "canonical-parquet", str(tmp_path / "p"), now=NOW)
    assert report.accepted == 2
    otto = _write(tmp_path / "s.jsonl", [
        json.dumps({"session": 1, "events": [{"aid": 5, "ts": 1659304800025, "type": "carts"}, 7]}),
        "{not json",
        json.dumps({"session": 2, "events": []}),
        json.dumps({"session": 3, "events": [{"aid": a, "ts": 1659304800025, "type": "carts"} for a in range(6, 9)]}),
    ])
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
        ("not gzip", lambda p: _write(p / "plain.csv", [f"1,1,1,pv,{TS}"]) and _rename(p / "plain.csv", "plain.csv.gz"),
         "corrupt or truncated gzip"),
        ("wrong format", lambda p: _write(p / "other.csv", ['{"a": 1}', '{"b": 2}', f"1,1,1,pv,{TS}"]), "does not look like taobao"),
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
    assert not any(p.name.startswith(".ingest") for p in root.iterdir())  # staging removed


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
        for folder in sorted(root.iterdir()):
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
    source = _write(tmp_path / "log.csv", [f"918273,100,10,pv,{TS}", f"918273,101,10,buy,{TS + 5}",
                                           f"918273,101,10,buy,{TS + 5}", "918273 garbage line"])
    key = "k" * 32
    root = tmp_path / "landing"
    ingest([source], "taobao", str(root), now=NOW, pseudonym_key=key)
    landed = _landed(root)
    text = landed.drop(columns="filename").astype(str).to_string()
    assert "918273" not in text
    assert set(landed["user_id"].dropna()) == {pseudonym(key, "918273")}
    conn, counts = _warehouse_outcomes(root, SHANGHAI)
    everything = conn.execute("SELECT * FROM raw_events").df().to_string() + conn.execute(
        "SELECT * FROM raw_events_quarantine").df().to_string()
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
