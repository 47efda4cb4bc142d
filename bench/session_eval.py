"""``python -m bench.session_eval --home HOME``: the in-session next-item model on an ingested home, beside its rules.

The hold-out is session-rec's validation split as the warehouse holds it: the last day of the log that is at least
24 hours before its last event, to the end (on the YooChoose sample: 2014-04-06 and the 43 minutes of 2014-04-07 that
end the day's sessions). The ``--train-days`` days before it (3 by default; on the
validation day three days trained as well as four, in three quarters of the time) are the training cut-offs; the
last of them is the validation day on which early stopping picks the rounds, so nothing is tuned on the hold-out.
Prints the table of model and rules (HR, MRR, NDCG at 10 and 20, coverage), the positions, the candidates'
recall per source, the seconds each step took, and the reranker's top features by gain.
"""

import argparse
import datetime as dt
import resource
import time

import duckdb
import pandas as pd

from assets.logic import session_model
from assets.logic.training import LightGBMParams
from assets.logic.warehouse_sql import day_bounds
from resources.home import home_paths, read_settings

METHODS = ("model", "sr", "sr3", "sknn", "markov", "popularity")
COLUMNS = ("hr@10", "mrr@10", "hr@20", "mrr@20", "ndcg@20", "coverage@20", "popularity_bias@20")


def split(
    conn: duckdb.DuckDBPyConnection, tz: str, train_days: int = 0
) -> tuple[list[tuple[dt.datetime, dt.datetime]], tuple[dt.datetime, dt.datetime]]:
    """The training windows (one per day, the last ``train_days`` of them; 0: all) and the hold-out window, in UTC."""
    first, last = conn.execute(
        "SELECT min(event_time), max(event_time) FROM cleaned_events WHERE NOT is_bot"
    ).fetchone()
    zone_day = lambda t: pd.Timestamp(t).tz_localize("UTC").tz_convert(tz).date()  # noqa: E731
    holdout_day, last_day, first_day = zone_day(last - dt.timedelta(days=1)), zone_day(last), zone_day(first)
    holdout = (day_bounds(holdout_day, tz)[0], day_bounds(last_day, tz)[1])
    days = [first_day + dt.timedelta(days=i) for i in range(1, (holdout_day - first_day).days)]
    return [day_bounds(day, tz) for day in days[-train_days if train_days else 0 :]], holdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument(
        "--train-days",
        type=int,
        default=3,
        help="training cut-offs before the hold-out (0: every day with a day of history before it)",
    )
    args = parser.parse_args(argv)
    tz = read_settings(args.home).get("timezone", "UTC")
    conn = duckdb.connect(str(home_paths(args.home)["warehouse"]), read_only=True)
    seconds = {}
    started = time.perf_counter()
    train_windows, (start, end) = split(conn, tz, args.train_days)
    train = pd.concat(
        [session_model.session_frame(conn, s, e, positives_only=True) for s, e in train_windows], ignore_index=True
    )
    holdout = session_model.session_frame(conn, start, end, positives_only=False)
    targets = session_model.session_targets(conn, start, end)
    seconds["frames"] = time.perf_counter() - started
    mark = time.perf_counter()
    booster = session_model.train_session_ranker(train, LightGBMParams())
    seconds["training"] = time.perf_counter() - mark
    mark = time.perf_counter()
    evaluation = session_model.evaluate_sessions(holdout, booster, targets)
    seconds["evaluation"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started

    print(
        f"training cut-offs: {', '.join(str(s) for s, _ in train_windows)} ({len(train):,} rows, "
        f"{train['prefix_id'].nunique():,} prefixes with their next item among the candidates)"
    )
    print(
        f"hold-out [{start}, {end}): {len(targets):,} positions, {len(holdout):,} candidate rows, "
        f"{holdout.groupby('prefix_id').size().mean():.1f} per prefix; rounds {booster.current_iteration()}"
    )
    table = evaluation.pivot(index="method", columns="metric", values="value").loc[list(METHODS), list(COLUMNS)]
    print(table.round(4).to_string())
    sr = table.loc["sr"]
    print(
        f"model / sr: HR@20 x{table.loc['model', 'hr@20'] / sr['hr@20']:.3f}, MRR@20 "
        f"x{table.loc['model', 'mrr@20'] / sr['mrr@20']:.3f}"
    )
    intervals = evaluation[(evaluation["metric"] == "hr@20")].set_index("method")[["value", "ci_low", "ci_high"]]
    print(
        "HR@20 95% intervals:",
        ", ".join(f"{m} {r.ci_low:.3f}-{r.ci_high:.3f}" for m, r in intervals.loc[list(METHODS)].iterrows()),
    )
    hits = holdout.merge(targets[["prefix_id", "item_id"]], on=["prefix_id", "item_id"])
    recall = {
        flag.removeprefix("in_"): hits[hits[flag] == 1]["prefix_id"].nunique() / len(targets)
        for flag in ("in_session", "in_sr", "in_sr3", "in_sknn", "in_markov", "in_pop")
    }
    print(
        "next item among the candidates of:",
        ", ".join(f"{s} {r:.3f}" for s, r in recall.items()),
        f"| union {hits['prefix_id'].nunique() / len(targets):.3f}",
    )
    gain = pd.Series(booster.feature_importance("gain"), index=booster.feature_name()).sort_values(ascending=False)
    print(
        "top features by gain:", ", ".join(f"{name} {value / gain.sum():.3f}" for name, value in gain.head(10).items())
    )
    print(
        "seconds:",
        ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()),
        f"| CPU {time.process_time():.1f} s (the wall time grows when others share the cores)",
        f"| peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB",
    )


if __name__ == "__main__":
    main()
