"""Holes found by attacking the fixes of issue 18 as a hostile and a careless user (review/adversary).

Each test states what a user did and what must hold; each failed on main when it was written.
"""

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from assets.logic.ingest import IngestError, _whole_number_id, ingest
from assets.logic.lifecycle import record_alias_change, rollback_target
from workflows.cli import main

NOW = dt.datetime(2026, 1, 1)
DAY0 = 1511539200  # 2017-11-25 00:00 China time


def _taobao(path: Path, timestamps: list) -> str:
    path.write_text("".join(f"{i + 1},{i + 10},3,pv,{t}\n" for i, t in enumerate(timestamps)))
    return str(path)


@pytest.mark.parametrize(
    "timestamps",
    [
        [1600000000, 1600000100],  # a newer export in taobao's layout: every row after the format's period
        [1900000000, 1900000100],  # every row in the future
        ["", ""],  # no row has a time
    ],
    ids=["out_of_range", "future", "no_time"],
)
def test_a_file_without_a_single_valid_day_is_one_clear_error(tmp_path, timestamps):
    # main: TypeError in _write_days (min(day) of a file whose rows all lack a day is NULL)
    source = _taobao(tmp_path / "log.csv", timestamps)
    with pytest.raises(IngestError, match="log.csv"):
        ingest([source], "taobao", str(tmp_path / "landing"), now=NOW)
    assert not list((tmp_path / "landing").glob("*/*.parquet"))


def test_start_after_end_is_refused_naming_the_options(tmp_path):
    source = _taobao(tmp_path / "log.csv", [DAY0 + 3600, DAY0 + 86400 + 3600])
    with pytest.raises((IngestError, ValueError), match="--start|--end|start|end"):
        ingest(
            [source],
            "taobao",
            str(tmp_path / "landing"),
            start=dt.date(2017, 11, 27),
            end=dt.date(2017, 11, 26),
            now=NOW,
        )


@pytest.mark.parametrize(
    "line",
    [
        '{"event_time":"2024-01-02T10:00:00","user_id":"alice","user_id":"mallory","event_type":"view","item_id":"i1"}',
        '{"event_time":"2024-01-02T10:00:00","user_id":"alice","event_type":"view","event_type":"purchase","item_id":"i1"}',
    ],
)
def test_a_json_object_naming_a_field_twice_is_not_accepted_with_the_last_value(tmp_path, line):
    # main: json.loads keeps the last key; the row is accepted as mallory's / as a purchase (cf. issue 18 case 4)
    source = tmp_path / "log.jsonl"
    source.write_text(
        line + "\n" + '{"event_time":"2024-01-02T11:00:00","user_id":"bob","event_type":"view","item_id":"i2"}\n'
    )
    try:
        ingest([str(source)], "canonical-jsonl", str(tmp_path / "landing"), tz="UTC", now=NOW)
    except IngestError as error:
        assert "log.jsonl" in str(error)
        return
    rows = duckdb.sql(
        f"SELECT user_id, event_type, ingest_reason FROM read_parquet('{tmp_path}/landing/*/*.parquet') "
        "WHERE raw LIKE '%alice%'"
    ).fetchall()
    assert rows and all(reason is not None for _, _, reason in rows), rows


def test_a_source_file_with_a_long_but_legal_name_is_ingested_or_refused_cleanly(tmp_path):
    # main: duckdb.IOException "File name too long": the landing name adds 19 characters to a 250-character name
    source = _taobao(tmp_path / ("z" * 246 + ".csv"), [DAY0 + 3600, DAY0 + 7200])
    try:
        ingest([source], "taobao", str(tmp_path / "landing"), now=NOW)
    except IngestError:
        return
    assert len(list((tmp_path / "landing").glob("*/*.parquet"))) == 1


@pytest.mark.parametrize("text", ["9007199254740993.5", "0.99999999999999999", "1.00000000000000000001"])
def test_a_fractional_id_is_never_rounded_into_another_id(text):
    # the module docstring: "an id that is not a whole number (12.5) is bad_type ... rounding it would merge two
    # users"; main rounds these through DOUBLE/DECIMAL(38, 10) to 9007199254740994, 1 and 1
    with duckdb.connect() as conn:
        value = conn.execute(f"SELECT {_whole_number_id('x')} FROM (SELECT ? AS x)", [text]).fetchall()[0][0]
    assert value is None, f"{text!r} became id {value!r}"


def test_re_ingesting_a_symlink_that_now_points_at_the_corrected_export_replaces_the_old_rows(tmp_path):
    # a "latest.csv" symlink re-pointed at a corrected export: main keeps both versions (120 rows for 60), all
    # accepted since the corrected rows are not exact duplicates, and both record source_file 'latest.csv'
    old = _taobao(tmp_path / "v1.csv", [DAY0 + 3600 * i for i in range(60)])
    new = tmp_path / "v2.csv"
    new.write_text(Path(old).read_text().replace(",pv,", ",fav,"))
    latest = tmp_path / "latest.csv"
    latest.symlink_to("v1.csv")
    ingest([str(latest)], "taobao", str(tmp_path / "landing"), now=NOW)
    latest.unlink()
    latest.symlink_to("v2.csv")
    ingest([str(latest)], "taobao", str(tmp_path / "landing"), now=NOW)
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/landing/*/*.parquet')").fetchall()[0][0]
    assert rows == 60


def test_rollback_twice_never_returns_to_the_version_rolled_back_from():
    # issue 18 case 11; main toggles v1 <-> v2
    with duckdb.connect() as conn:
        record_alias_change(conn, "m", "champion", None, 1, "first", "champion_promotion")
        record_alias_change(conn, "m", "champion", 1, 2, "better", "champion_promotion")
        assert rollback_target(conn, "m", "champion", 2) == 1
        record_alias_change(conn, "m", "champion", 2, 1, "rollback", "shopseq rollback")
        with pytest.raises(ValueError, match="nothing to roll back to"):  # v2 was rolled back away from
            rollback_target(conn, "m", "champion", 1)


def test_rollback_after_promoting_the_champion_again_goes_back_to_the_previous_one():
    # shopseq promote --version 2 while 2 is already champion records 2 -> 2; main then "rolls back" 2 -> 2 forever
    with duckdb.connect() as conn:
        record_alias_change(conn, "m", "champion", None, 1, "first", "champion_promotion")
        record_alias_change(conn, "m", "champion", 1, 2, "better", "champion_promotion")
        record_alias_change(conn, "m", "champion", 2, 2, "promoted again by hand", "shopseq promote")
        assert rollback_target(conn, "m", "champion", 2) == 1


@pytest.mark.parametrize(
    "content",
    [b"{}\n", b"12\n", b'{"time": "t", "job": "j"}\n', b'{"time": "\xc3'],
    ids=["empty_object", "number", "missing_keys", "cut_utf8"],
)
def test_failures_survives_any_line_of_run_failures_jsonl(tmp_path, capsys, content):
    # main: KeyError / TypeError / UnicodeDecodeError tracebacks
    (tmp_path / "run_failures.jsonl").write_bytes(content)
    assert main(["failures", "--home", str(tmp_path)]) in (0, 1, 2)


def test_failures_with_run_failures_jsonl_a_folder_is_a_clear_error(tmp_path, capsys):
    # main: IsADirectoryError traceback
    (tmp_path / "run_failures.jsonl").mkdir()
    assert main(["failures", "--home", str(tmp_path)]) == 2
    assert "run_failures.jsonl" in capsys.readouterr().err


def test_a_planted_publish_journal_cannot_delete_or_move_files_outside_the_landing(tmp_path):
    # main: recover_landing trusts the journal's names: its "staging" is rmtree'd and its steps unlinked or renamed
    # wherever they point, so a journal naming "../../victim" deletes a folder outside the home on the next read
    # (shopseq run, ingest, predict's landing listing)
    from assets.logic.ingest import recover_landing

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.csv").write_text("precious\n")
    (tmp_path / "secret.csv").write_text("secret\n")
    landing = tmp_path / "home" / "landing"
    landing.mkdir(parents=True)
    (landing / ".publish.journal").write_text(
        json.dumps(
            {
                "staging": "../../victim",
                "steps": [["withdraw", "../../victim", "keep.csv"], ["move", "2017-11-25", "../../../secret.csv"]],
            }
        )
    )
    with pytest.raises(IngestError, match="publish.journal"):
        recover_landing(landing)
    assert (victim / "keep.csv").read_text() == "precious\n"
    assert (tmp_path / "secret.csv").exists()


def test_a_file_rewritten_while_it_is_read_is_refused(tmp_path, monkeypatch):
    # main: an exporter rewriting the file during the ingest (seen with a 1M-line file truncated after 4 s:
    # 95,012 rows read, exit 0) publishes whatever part was read, replacing the complete landing of that file
    import assets.logic.ingest as ingest_module

    source = _taobao(tmp_path / "log.csv", [DAY0 + 60 * i for i in range(40)])
    stage = ingest_module._stage_file

    def stage_then_rewrite(conn, path, fmt, max_bad_fraction):
        stage(conn, path, fmt, max_bad_fraction)
        with open(path, "a") as handle:  # the exporter is still writing
            handle.write("".join(f"{i},{i},3,pv,{DAY0 + 7200 + i}\n" for i in range(100, 140)))

    monkeypatch.setattr(ingest_module, "_stage_file", stage_then_rewrite)
    with pytest.raises(IngestError, match="log.csv"):
        ingest([source], "taobao", str(tmp_path / "landing"), now=NOW)
