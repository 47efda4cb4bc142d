"""``python -m bench.gru_eval --home HOME``: the recurrent session model on a home ``shopseq run`` has trained, beside
the LightGBM session reranker and its rules on the same positions.

The days are the pipeline's: the training cut-offs and the hold-out of ``session_training_set``. The GRU learns from
the sessions that start on the day after each training cut-off (``gru_model.session_sequences``), the last of them
the validation day of early stopping, and is measured on the hold-out's positions (``session_model.session_targets``)
two ways, each by ``session_model.evaluate_sessions``:

* ``gru_rerank``: the GRU ranks the hold-out's candidate rows (the reranker's candidates: the same lists to choose
  from; a position whose next item is not a candidate is a miss);
* ``gru_full``: the GRU's own top 20 over every item it knows (what its pyfunc serves, and what its catalogue spec
  measures: ``gru_model.evaluate_gru``).

``--feature`` also measures the GRU's score as a feature of the LightGBM reranker: each training day's and the
hold-out's scores come from a GRU fitted on the days before it only (so a training row's feature is as honest as a
hold-out row's), for the reranker with and without the feature on the same days. Prints the tables, the training
curve and the seconds each step took.
"""

import argparse
import dataclasses
import datetime as dt
import resource
import time

import duckdb
import numpy as np
import pandas as pd

from assets.logic import gru_model, session_model, training
from assets.logic.catalogue import read_training_set
from assets.logic.training import LightGBMParams
from assets.logic.warehouse_sql import day_bounds
from resources.home import home_paths, read_settings

COLUMNS = ("hr@10", "mrr@10", "hr@20", "mrr@20", "ndcg@20", "coverage@20")


def windows(holdout: pd.DataFrame, train: pd.DataFrame, tz: str):
    """The training windows (the day after each training cut-off) and the hold-out window, as the pipeline built
    them."""
    days = sorted({pd.Timestamp(d).date() for d in train["as_of_date"]})
    train_windows = [day_bounds(day + dt.timedelta(days=1), tz) for day in days]
    start, end = (pd.Timestamp(holdout[c].iloc[0]).to_pydatetime() for c in ("cutoff", "window_end"))
    return train_windows, (start, end)


def table(evaluation: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    shown = evaluation.pivot(index="method", columns="metric", values="value")
    return shown.loc[[m for m in methods if m in shown.index], list(COLUMNS)].round(4)


def with_gru_feature(frame: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """The GRU's score and its rank among the prefix's candidates as two more feature columns."""
    frame = frame.assign(gru_score=np.nan_to_num(scores, nan=-50.0))
    return frame.assign(gru_rank=frame.groupby("prefix_id")["gru_score"].rank(ascending=False, method="first"))


def feature_experiment(conn, train, holdout, targets, train_windows, hold_window, params, epochs):
    """The reranker with and without the GRU features, on the training days that have a day before them."""
    features = [*session_model.SESSION_FEATURES, "gru_score", "gru_rank"]
    sequences = [gru_model.session_sequences(conn, s, e) for s, e in train_windows]
    fixed = dataclasses.replace(params, epochs=epochs, patience=0)
    parts = []
    days = sorted(train["cutoff"].unique())
    for i in range(1, len(days)):
        model = gru_model.train_gru(sequences[:i], fixed)
        rows = train[train["cutoff"] == days[i]]
        parts.append(with_gru_feature(rows, model.score_candidates(sequences[i], rows)))
    stacked = pd.concat(parts, ignore_index=True)
    model = gru_model.train_gru(sequences, fixed)
    scored_holdout = with_gru_feature(
        holdout, model.score_candidates(gru_model.session_sequences(conn, *hold_window), holdout)
    )
    results = {}
    for name, columns in (("lgbm_same_days", session_model.SESSION_FEATURES), ("lgbm_plus_gru", features)):
        dataset = training.ranking_dataset(["cutoff", "prefix_id"], columns)
        lgb_params = (
            {"max_bin": 63}
            | LightGBMParams().to_lightgbm("lambdarank")
            | {"lambdarank_truncation_level": 20, "metric": "ndcg", "eval_at": [20]}
        )
        read = stacked[["cutoff", "prefix_id", "item_id", "relevance", *columns]]
        booster = training.boost(
            lgb_params,
            dataset,
            read.assign(as_of_date=read["cutoff"]),
            LightGBMParams(),
            start=lambda rows, columns=columns: training.rule_offset(
                rows, columns, session_model.SESSION_RULE_START, rows["relevance"].to_numpy() > 0
            ),
        )
        scores = booster.predict(scored_holdout[columns].astype(float))
        policy = gru_model.FixedScores(scores)  # in the rows' order of scored_holdout
        evaluation = session_model.evaluate_sessions(scored_holdout, policy, targets)
        results[name] = evaluation[evaluation["method"] == "model"].assign(method=name)
        if name == "lgbm_plus_gru":
            gain = pd.Series(booster.feature_importance("gain"), index=booster.feature_name())
            results["gain"] = (gain / gain.sum()).sort_values(ascending=False).head(8)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--epochs", type=int, default=gru_model.GRUParams.epochs)
    parser.add_argument("--embedding", type=int, default=gru_model.GRUParams.embedding)
    parser.add_argument("--hidden", type=int, default=gru_model.GRUParams.hidden)
    parser.add_argument("--learning-rate", type=float, default=gru_model.GRUParams.learning_rate)
    parser.add_argument("--dropout", type=float, default=gru_model.GRUParams.dropout)
    parser.add_argument("--batch-size", type=int, default=gru_model.GRUParams.batch_size)
    parser.add_argument("--max-steps", type=int, default=gru_model.GRUParams.max_steps)
    parser.add_argument(
        "--untied", action="store_true", help="score items with an output embedding of their own, not their input one"
    )
    parser.add_argument("--feature", action="store_true", help="also measure the GRU's score as a reranker feature")
    args = parser.parse_args(argv)
    params = gru_model.GRUParams(
        embedding=args.embedding,
        hidden=args.hidden,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        dropout=args.dropout,
        batch_size=args.batch_size,
        tied=not args.untied,
        max_steps=args.max_steps,
    )
    tz = read_settings(args.home).get("timezone", "UTC")
    conn = duckdb.connect(str(home_paths(args.home)["warehouse"]), read_only=True)
    seconds = {}
    mark = time.perf_counter()
    holdout = read_training_set(conn, "session_training_set", "holdout")
    train = read_training_set(conn, "session_training_set", "train")
    train_windows, (start, end) = windows(holdout, train, tz)
    targets = session_model.session_targets(conn, start, end)
    days = [gru_model.session_sequences(conn, s, e) for s, e in train_windows]
    hold_sequences = gru_model.session_sequences(conn, start, end)
    seconds["sequences"] = time.perf_counter() - mark
    mark = time.perf_counter()
    model = gru_model.train_gru(days, params)
    seconds["training"] = time.perf_counter() - mark
    mark = time.perf_counter()
    evaluation = session_model.evaluate_sessions(
        holdout, gru_model.GRUPrefixPolicy(model, hold_sequences, holdout), targets
    )
    popularity = conn.execute(
        "SELECT item_id, count(*) AS events FROM cleaned_events WHERE event_time < ? AND NOT is_bot "
        "AND item_id IS NOT NULL GROUP BY item_id",
        [start],
    ).df()
    full = gru_model.evaluate_gru(
        model, hold_sequences, holdout, targets, popularity.set_index("item_id")["events"].astype(float)
    )
    seconds["evaluation"] = time.perf_counter() - mark
    stored = conn.execute(
        "SELECT method, metric, value FROM model_evaluations WHERE model_name = ? AND policy = 'lightgbm' "
        "AND method = 'model' ORDER BY evaluated_at DESC",
        [session_model_name()],
    ).df()
    lightgbm = stored.drop_duplicates("metric").assign(method="lightgbm (pipeline)")
    frames = [
        evaluation.replace({"method": {"model": "gru_rerank"}}),
        full[full["method"] == "model"].replace({"method": {"model": "gru_full"}}),
        lightgbm,
    ]
    print(
        f"training days: {', '.join(str(s.date()) for s, _ in train_windows)} "
        f"({sum(len(d) for d in days):,} events); hold-out [{start}, {end}): {len(targets):,} positions"
    )
    print(f"params: {model.describe()}")
    print(pd.DataFrame(model.curve).round(4).to_string(index=False))
    methods = ["lightgbm (pipeline)", "gru_rerank", "gru_full", "sknn", "sr", "sr3", "markov", "popularity"]
    print(table(pd.concat(frames, ignore_index=True), methods).to_string())
    if args.feature:
        mark = time.perf_counter()
        results = feature_experiment(conn, train, holdout, targets, train_windows, (start, end), params, model.epochs)
        seconds["feature experiment"] = time.perf_counter() - mark
        gain = results.pop("gain")
        print(table(pd.concat(results.values(), ignore_index=True), list(results)).to_string())
        print("gain share:", ", ".join(f"{k} {v:.3f}" for k, v in gain.items()))
    print(
        "seconds:",
        ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()),
        f"| CPU {time.process_time():.1f} s",
        f"| peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB",
    )


def session_model_name() -> str:
    from assets.logic.catalogue import SESSION_MODEL

    return SESSION_MODEL


if __name__ == "__main__":
    main()
