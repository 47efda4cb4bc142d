"""Point-in-time training sets, LightGBM training and the temporal hold-out evaluation.

A cut-off day D pairs features as of the end of D with labels from day D + 1.
Training stacks the cut-offs before the hold-out; the hold-out is the last cut-off
whose next day has landed, so no label the model was trained on is evaluated.
"""

import datetime as dt
from dataclasses import dataclass, field

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa

from assets.logic import profile
from assets.logic.candidates import COLD_ITEM_DAYS, RANKER_FEATURES, stored_ranker_rows_sql
from assets.logic.features import HISTORY_DAYS, USER_FEATURE_COLUMNS
from assets.logic.metrics import (
    RANKING_METRICS,
    RankedLists,
    binary_metrics,
    bootstrap_intervals,
    percentile_interval,
    resampled_aucs,
    top_k,
)
from assets.logic.policies import RulePolicy, logistic_fit
from assets.logic.serving import RULE_COLUMNS, BusinessRules, ranked_table, ranker_scores
from assets.logic.warehouse_sql import LABEL_WINDOWS_SQL, day_bounds, fetch_frame, label_windows

NEXT_ACTION_LABELS = {
    "purchase": "count(*) FILTER (WHERE event_type = 'purchase') > 0",
    "add_to_cart": "count(*) FILTER (WHERE event_type = 'add_to_cart') > 0",
    "return": "count(*) > 0",
}
RELEVANCE_SQL = "max(CASE event_type WHEN 'purchase' THEN 3 WHEN 'add_to_cart' THEN 2 ELSE 1 END)"
# Training sets up to this many rows train on one thread (``boost``, ``rule_offset``): a thread's share of a small
# set's histogram is microseconds of work and every split waits for both threads, so beside another busy process
# the waits dominate (BENCHMARKS.md). One thread grew the same trees.
SINGLE_THREAD_MAX_ROWS = 50_000


def lightgbm_threads(rows: int) -> int:
    """LightGBM's threads for a training set of ``rows`` rows (see ``SINGLE_THREAD_MAX_ROWS``)."""
    return 1 if rows <= SINGLE_THREAD_MAX_ROWS else 2


@dataclass(frozen=True)
class LightGBMParams:
    """Fixed, seeded LightGBM settings: the same data gives the same model."""

    num_boost_round: int = 200  # the cap: early stopping on the validation day picks the rounds up to it
    early_stopping_rounds: int = 30  # 0: no validation day, every training cut-off fits num_boost_round rounds
    refit_max_rows: int = 50_000  # training sets up to this size are refitted on every cut-off (see ``boost``)
    learning_rate: float = 0.1
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.9
    bagging_freq: int = 1
    seed: int = 42
    extra: dict = field(default_factory=dict)

    def to_lightgbm(self, objective: str) -> dict:
        return {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": 2,
            "verbosity": -1,
            **self.extra,
        }


def labelled_cutoffs(conn: duckdb.DuckDBPyConnection, tz: str) -> list[dt.date]:
    """Days D (of the shop's time zone ``tz``) with user features and candidates as of D and cleaned events on
    D + 1."""
    featured = conn.execute(
        """SELECT DISTINCT as_of_date FROM user_features
           WHERE as_of_date IN (SELECT DISTINCT as_of_date FROM ranking_candidates) ORDER BY 1"""
    ).fetchall()
    rows = conn.execute(
        f"""SELECT w.day FROM {LABEL_WINDOWS_SQL} w
            WHERE EXISTS (SELECT 1 FROM cleaned_events e
                          WHERE e.event_time >= w.label_start AND e.event_time < w.label_end)
            ORDER BY 1""",
        {"windows": label_windows([r[0] for r in featured], tz)},
    ).fetchall()
    return [r[0] for r in rows]


def split_cutoffs(cutoffs: list[dt.date], train_days: int = 0) -> tuple[list[dt.date], dt.date]:
    """The last labelled cut-off is the hold-out; up to ``train_days`` before it (0: all of them) train."""
    if len(cutoffs) < 2:
        raise ValueError(
            f"need at least 2 labelled cut-off days (features as of D and events on D + 1), found {len(cutoffs)}: "
            "materialise more daily partitions first"
        )
    return cutoffs[:-1][-train_days if train_days else 0 :], cutoffs[-1]


def next_action_frame(conn: duckdb.DuckDBPyConnection, days: list[dt.date], tz: str) -> pd.DataFrame:
    """User features as of each cut-off day (of the shop's time zone ``tz``) with labels ``label_<target>`` (0/1)
    from the next day."""
    labels = ", ".join(f"CAST({sql} AS INTEGER) AS label_{name}" for name, sql in NEXT_ACTION_LABELS.items())
    return conn.execute(
        f"""
        WITH next_day AS (
            SELECT w.day AS as_of_date, e.user_id, {labels}
            FROM {LABEL_WINDOWS_SQL} w
            JOIN cleaned_events e ON e.event_time >= w.label_start AND e.event_time < w.label_end AND NOT e.is_bot
            GROUP BY w.day, e.user_id
        )
        SELECT u.*, {", ".join(f"coalesce(n.label_{name}, 0) AS label_{name}" for name in NEXT_ACTION_LABELS)}
        FROM user_features u LEFT JOIN next_day n USING (as_of_date, user_id)
        WHERE list_contains($days, u.as_of_date)
        ORDER BY u.as_of_date, u.user_id
        """,
        {"days": days, "windows": label_windows(days, tz)},
    ).df()


def ranker_frame(conn: duckdb.DuckDBPyConnection, days: list[dt.date], positives_only: bool, tz: str) -> pd.DataFrame:
    """Candidates as of each cut-off day (of the shop's time zone ``tz``) with the ranker's features (those stored
    apart joined, see ``candidates.ranker_rows_sql``) and relevance from the next day (0 none, 1 view, 2 cart,
    3 purchase).

    ``positives_only`` keeps the (user, day) groups with at least one relevant
    candidate: the only groups LambdaRank learns from.
    """
    rows = stored_ranker_rows_sql("list_contains($days, as_of_date)")
    return fetch_frame(
        conn,
        f"""
        WITH next_day AS (
            SELECT w.day AS as_of_date, e.user_id, e.item_id, {RELEVANCE_SQL} AS relevance
            FROM {LABEL_WINDOWS_SQL} w
            JOIN cleaned_events e ON e.event_time >= w.label_start AND e.event_time < w.label_end
                 AND NOT e.is_bot AND e.item_id IS NOT NULL
            GROUP BY ALL
        ),
        labelled AS (
            SELECT c.*, coalesce(n.relevance, 0) AS relevance
            FROM ({rows}) c LEFT JOIN next_day n USING (as_of_date, user_id, item_id)
        )
        SELECT * FROM labelled
        WHERE NOT $positives_only
           OR (as_of_date, user_id) IN (SELECT (as_of_date, user_id) FROM labelled WHERE relevance > 0)
        ORDER BY as_of_date, user_id, item_id
        """,
        {"days": days, "positives_only": positives_only, "windows": label_windows(days, tz)},
    )


def validation_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the training cut-offs before the last one (fit) and of the last one (validation).

    The validation day lies before the hold-out, so the hold-out stays untouched while the validation day picks
    the number of boosting rounds. A training set of one cut-off has no validation day (empty frame). A set read in
    day order (as the training sets are stored) is split into two slices of it, not copied: views that must not be
    written to."""
    days = frame["as_of_date"]
    if days.nunique() < 2:
        return frame, frame.iloc[0:0]
    before, last = (days < days.max()).to_numpy(), (days == days.max()).to_numpy()
    first = int(last.argmax())
    if before[:first].all() and last[first:].all():  # the earlier days' rows, then the last day's
        return frame.iloc[:first], frame.iloc[first:]
    return frame[before], frame[last]


def boost(lgb_params: dict, dataset, frame: pd.DataFrame, params: LightGBMParams, start=None) -> lgb.Booster:
    """LightGBM on ``frame`` (``dataset(rows, reference)`` makes its ``lgb.Dataset``) with the number of rounds
    picked by early stopping: fitted on the cut-offs before the validation day, boosting stops when the first metric
    of ``lgb_params`` has not improved on that day for ``early_stopping_rounds`` rounds (at most ``num_boost_round``).
    Rounds that only fit noise are left out, so on small or noisy data the model stays close to where it started.
    A training set of at most ``refit_max_rows`` rows is then refitted on every cut-off, the validation day
    included, with that many rounds: cheap there, and on a few days the validation day is much of the data (a tiny
    demo's purchase model fitted on one day fell below its rule). A larger one keeps the stopped model, its rounds
    up to the best one: the refit ran every round twice and measured within noise of it (docs/models.md). Without a
    validation day (one training cut-off, or ``early_stopping_rounds`` 0) every cut-off fits ``num_boost_round``
    rounds.

    ``start(rows)``: the booster the model starts from, fitted on ``rows`` (the rule, see ``rule_offset``): its
    trees come first in the model file and its margin is every row's initial score, so the new trees boost the
    residual and no scorer can leave the offset out."""
    if "num_threads" not in params.extra:
        lgb_params = lgb_params | {"num_threads": lightgbm_threads(len(frame))}
    fit, valid = validation_split(frame) if params.early_stopping_rounds else (frame, frame.iloc[0:0])
    with profile.step("rule"):
        first = start(fit) if start else None
    with profile.step("boost"):  # LightGBM bins the datasets first
        fit_set = dataset(fit, None)
        if not len(valid):
            return lgb.train(lgb_params, fit_set, num_boost_round=params.num_boost_round, init_model=first)
        stopped = lgb.train(
            lgb_params,
            fit_set,
            num_boost_round=params.num_boost_round,
            valid_sets=[dataset(valid, fit_set)],
            init_model=first,
            callbacks=[lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)],
        )
    if len(frame) > params.refit_max_rows:
        # the rule's trees and the rounds up to the best one (best_iteration counts the rule's trees too)
        return lgb.Booster(model_str=stopped.model_to_string(num_iteration=stopped.best_iteration))
    rounds = stopped.best_iteration - (first.current_iteration() if first else 0)
    with profile.step("rule"):
        first = start(frame) if start else None
    with profile.step("boost"):
        return lgb.train(lgb_params, dataset(frame, None), num_boost_round=rounds, init_model=first)


# LightGBM settings under which one regression tree on one feature reproduces a function of that feature: a leaf
# and a bin per distinct value (up to 4,095 of them; beyond, neighbouring values share a leaf and their mean).
_EXACT_TREE = {
    "objective": "regression",
    "learning_rate": 1.0,
    "num_leaves": 4095,
    "min_data_in_leaf": 1,
    "min_sum_hessian_in_leaf": 0.0,
    "lambda_l2": 0.0,
    "min_data_in_bin": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


def rule_offset(frame: pd.DataFrame, features: list[str], weights: dict[str, float], y: np.ndarray) -> lgb.Booster:
    """A rule that sums ``weights`` times features, calibrated to log-odds of ``y`` on ``frame`` (a + b * rule, a
    logistic fit) and written as trees: one tree per feature holding its term of the offset in a leaf per value. As
    the ``start`` of ``boost`` these trees come first in the model file, so every scorer adds the offset and none can
    forget it, and the rule's order is kept (the offset ranks rows as the rule does)."""
    # The rule's columns; every other feature is 0 here, one value, which LightGBM leaves out of the Dataset (a tree
    # may not split on it anyway): binning every feature of a large frame was most of the rule's time. The trees are
    # the same; the model file's ranges of the other features are those of the Dataset boosting continues on.
    values = np.zeros((len(frame), len(features)), order="F")  # a column at a time, as LightGBM reads it
    for column in weights:
        values[:, features.index(column)] = frame[column].to_numpy(dtype=float)
    score = sum(weight * values[:, features.index(column)] for column, weight in weights.items())
    a, b = logistic_fit(score, y.astype(float))
    offset, booster = np.full(len(frame), a), None
    for column, weight in weights.items():
        # Each tree fits what the trees before it left: its own term of the offset.
        offset = offset + b * weight * values[:, features.index(column)]
        tree = _EXACT_TREE | {
            "num_threads": lightgbm_threads(len(frame)),
            "interaction_constraints": [[features.index(column)]],  # this feature only, the others
            "max_bin_by_feature": [4095 if c == column else 2 for c in features],
        }  # not binned
        booster = lgb.train(
            tree,
            lgb.Dataset(values, label=offset, feature_name=features, params=tree),
            num_boost_round=1,
            init_model=booster,
        )
    return booster


def _binary_dataset(label: str, features: list[str]):
    return lambda rows, reference: lgb.Dataset(
        rows[features].astype(float), label=rows[label], reference=reference, free_raw_data=True
    )


def train_binary(frame: pd.DataFrame, label: str, params: LightGBMParams) -> lgb.Booster:
    """A next-action model that starts from its history rule (``HISTORY_RULES``, calibrated by ``rule_offset``) and
    boosts the residual, its rounds stopped on log loss: on a small validation day, with a few users who act, AUC
    jumps with each of them and stopped a tiny demo's purchase model below its rule, while log loss moves smoothly."""
    if frame[label].nunique() < 2:
        raise ValueError(f"training labels {label!r} hold a single class over {len(frame)} rows: cannot train")
    lgb_params = params.to_lightgbm("binary") | {"metric": "binary_logloss"}
    weights = dict(HISTORY_RULES[label].weights)
    return boost(
        lgb_params,
        _binary_dataset(label, USER_FEATURE_COLUMNS),
        frame,
        params,
        start=lambda rows: rule_offset(rows, USER_FEATURE_COLUMNS, weights, rows[label].to_numpy()),
    )


def feature_matrix(rows: pd.DataFrame, features: list[str], order: np.ndarray | None = None) -> np.ndarray:
    """The float matrix of ``features`` of ``rows`` (in ``order``, when given), gathered a column at a time into a
    column-major matrix, which LightGBM reads as it is: ``rows[features].to_numpy()`` on a frame just fetched first
    copies its columns into one block (ten times the time)."""
    values = np.empty((len(rows), len(features)), order="F")
    for j, column in enumerate(features):
        column_values = rows[column].to_numpy(dtype=float)
        if order is None:
            values[:, j] = column_values
        else:
            np.take(column_values, order, out=values[:, j])
    return values


def ranking_dataset(query: list[str], features: list[str]):
    """``dataset(rows, reference)`` for ``boost``: one LambdaRank query group per value of the ``query`` columns, its
    candidates in item order, so LightGBM sees the same rows in the same order on every run. Only the keys are
    sorted; each feature is gathered once, in that order, into the column-major matrix LightGBM reads."""

    def dataset(rows: pd.DataFrame, reference: lgb.Dataset | None) -> lgb.Dataset:
        keys = rows[[*query, "item_id"]].reset_index(drop=True).sort_values([*query, "item_id"], kind="stable")
        order = keys.index.to_numpy()
        groups = keys.groupby(query, sort=False).size().to_numpy()
        return lgb.Dataset(
            # a frame: the model file says so (pandas_categorical)
            pd.DataFrame(feature_matrix(rows, features, order), columns=features, copy=False),
            label=rows["relevance"].to_numpy()[order],
            group=groups,
            reference=reference,
        )

    return dataset


def train_lambdarank(frame: pd.DataFrame, params: LightGBMParams, features: list[str] = RANKER_FEATURES) -> lgb.Booster:
    """The ranker, started from repeat-recent (``RANKER_START``: the candidate's recency-weighted own history,
    calibrated to the log-odds of being touched the next day) and boosting the residual; ``features`` other than
    the ranker's are for experiments with more (bench/gru_next_day.py)."""
    if frame.empty:
        raise ValueError("the ranker training set is empty: no user had a next-day event among their candidates")
    lgb_params = params.to_lightgbm("lambdarank") | {
        "lambdarank_truncation_level": 20,
        "metric": "ndcg",
        "eval_at": [20],
    }
    dataset = ranking_dataset(["as_of_date", "user_id"], features)  # a group per (day, user)
    return boost(
        lgb_params,
        dataset,
        frame,
        params,
        start=lambda rows: rule_offset(rows, features, RANKER_START, rows["relevance"].to_numpy() > 0),
    )


def holdout_targets(conn: duckdb.DuckDBPyConnection, day: dt.date, tz: str) -> pd.DataFrame:
    """Distinct (user, item, event_type) of day D + 1 (days of the shop's time zone ``tz``) for users with history
    before it, with the segments:
    ``new_user`` (first event on D), ``cold_item`` (the item's first event is in the ``COLD_ITEM_DAYS`` before the
    cut-off: little history, but some, so a point-in-time source can propose it) and ``unseen_item`` (no event on
    the item before D + 1: no source can propose it, every method scores 0 on it)."""
    day_start, cutoff = day_bounds(day, tz)
    return conn.execute(
        f"""
        WITH bounds AS (SELECT $day_start AS day_start, $cutoff AS cutoff, $label_end AS label_end),
        history AS (
            SELECT user_id, min(event_time) AS first_seen FROM cleaned_events, bounds
            WHERE event_time < bounds.cutoff AND NOT is_bot GROUP BY user_id
        ),
        seen_items AS (
            SELECT item_id, min(event_time) AS first_seen FROM cleaned_events, bounds
            WHERE event_time < bounds.cutoff AND NOT is_bot AND item_id IS NOT NULL GROUP BY item_id
        )
        SELECT DISTINCT e.user_id, e.item_id, e.event_type,
               h.first_seen >= b.day_start AS new_user,
               coalesce(s.first_seen >= b.cutoff - INTERVAL {COLD_ITEM_DAYS} DAY, false) AS cold_item,
               s.item_id IS NULL AS unseen_item
        FROM cleaned_events e
        CROSS JOIN bounds b
        JOIN history h ON h.user_id = e.user_id
        LEFT JOIN seen_items s ON s.item_id = e.item_id
        WHERE e.event_time >= b.cutoff AND e.event_time < b.label_end
          AND NOT e.is_bot AND e.item_id IS NOT NULL
        ORDER BY user_id, item_id, event_type
        """,
        {"day_start": day_start, "cutoff": cutoff, "label_end": day_bounds(day + dt.timedelta(days=1), tz)[1]},
    ).df()


def markov_recommendations(conn: duckdb.DuckDBPyConnection, day: dt.date, users: list[str], k: int) -> pd.DataFrame:
    """First-order Markov baseline: the items that most often followed each user's last item
    (consecutive events of any user in the 28 days before the cut-off of ``day``)."""
    return conn.execute(
        f"""
        WITH bounds AS (SELECT any_value(cutoff) AS cutoff FROM ranking_candidates WHERE as_of_date = $day),
        h AS (
            SELECT user_id, item_id, event_time, event_id FROM cleaned_events, bounds
            WHERE event_time < bounds.cutoff AND event_time >= bounds.cutoff - INTERVAL {HISTORY_DAYS} DAY
              AND NOT is_bot AND item_id IS NOT NULL
        ),
        steps AS (
            SELECT item_id, lead(item_id) OVER (PARTITION BY user_id ORDER BY event_time, item_id) AS next_item FROM h
        ),
        transitions AS (
            SELECT item_id, next_item, count(*) AS n FROM steps
            WHERE next_item IS NOT NULL AND next_item <> item_id GROUP BY ALL
        ),
        last_item AS (
            SELECT user_id, arg_max(item_id, (event_time, event_id)) AS item_id FROM h
            WHERE list_contains($users, user_id) GROUP BY user_id
        )
        SELECT l.user_id, t.next_item AS item_id, t.n AS markov
        FROM last_item l JOIN transitions t USING (item_id)
        """,
        {"day": day, "users": users},
    ).df()


def popular_items(candidates: pd.DataFrame) -> list[str]:
    pop = candidates[candidates["in_popular"] == 1][["item_id", "popular_rank"]].drop_duplicates("item_id")
    return pop.sort_values(["popular_rank", "item_id"])["item_id"].tolist()


TARGET_FILTERS = {"any": None, "add_to_cart": "add_to_cart", "purchase": "purchase"}

# The rules the ranker must beat, as policies over its features: each ranks the candidates it proposes (NaN for the
# others, which follow in popularity order, as the business rules fill a list) and can serve in the ranker's place.
RANKER_RULES = {
    rule.name: rule
    for rule in (
        RulePolicy("popularity", tuple(RANKER_FEATURES), (("popular_rank", -1.0),), only_where="in_popular"),
        RulePolicy("repeat_recent", tuple(RANKER_FEATURES), (("recent_score", 1.0),), only_where="in_recent"),
        RulePolicy("covisitation", tuple(RANKER_FEATURES), (("covis_score", 1.0),), only_where="in_covis"),
        RulePolicy(
            "recent_covis_pop",
            tuple(RANKER_FEATURES),
            (("in_recent", 1e6), ("recent_score", 1e3), ("covis_score", 1.0)),
        ),
    )
}


def recommendation_lists(
    candidates: pd.DataFrame,
    scores: np.ndarray,
    users: pd.Series,
    k: int,
    markov: pd.DataFrame | None = None,
    rules: BusinessRules = BusinessRules(),
    policies: dict[str, RulePolicy] = RANKER_RULES,
) -> dict[str, pd.DataFrame]:
    """Top-k lists of the model and of each rule policy for the same users, from one candidate set (and of the
    Markov baseline, from its own transitions). Each method's raw ranked list is ``<method>_raw`` (its unscored
    candidates left out, popular items padding short lists); ``<method>`` is the list served under ``rules``,
    made by ``serving.ranked_table``, the function that writes the recommendations: a rule's scores take the
    ranker's place, exactly as when that rule serves."""
    popular = popular_items(candidates)
    method_scores = {
        "model": np.asarray(scores, dtype=float),
        **{name: policy.predict(candidates) for name, policy in policies.items()},
    }  # beside the candidates, not a copy of them with more columns
    lists = {}
    for method, values in method_scores.items():
        # narrow: top_k sorts what it gets
        proposed = candidates[["user_id", "item_id"]].assign(**{method: values}).dropna(subset=[method])
        lists[f"{method}_raw"] = top_k(proposed, method, k, popular, users)
    if markov is not None:
        lists["markov_raw"] = top_k(markov, "markov", k, popular, users)
    rows = candidates[RULE_COLUMNS]
    table = pa.Table.from_pandas(rows, preserve_index=False)  # the candidates' columns, converted once
    # from_pandas turns a missing score (NaN) into null, which the rules rank after every score
    served = {
        method: table.append_column("score", pa.array(values, from_pandas=True))
        for method, values in method_scores.items()
    }
    if markov is not None:
        # Markov proposes items outside the candidates too: they keep its score, without a category or a popular rank
        outer = (
            rows.merge(markov[["user_id", "item_id", "markov"]], on=["user_id", "item_id"], how="outer")
            .assign(source=lambda f: f["source"].fillna("markov"), popular_rank=lambda f: f["popular_rank"].fillna(999))
            .rename(columns={"markov": "score"})
        )
        served["markov"] = pa.Table.from_pandas(outer[[*RULE_COLUMNS, "score"]], preserve_index=False)
    for method, served_table in served.items():
        ranked = ranked_table(served_table, users, rules, k)
        lists[method] = ranked.select(["user_id", "item_id", "score", "rank"]).to_pandas()
    return lists


def _segments(targets: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The targets of each segment. Cold items are those first seen shortly before the cut-off (see
    ``holdout_targets``): items first seen on the target day are left out, no point-in-time source can reach them."""
    return {
        "all": targets,
        "new_users": targets[targets["new_user"]],
        "returning_users": targets[~targets["new_user"]],
        "cold_items": targets[targets["cold_item"]],
    }


def ranker_lists(
    candidates: pd.DataFrame,
    model,
    users: pd.Series,
    k: int,
    markov: pd.DataFrame | None = None,
    rules: BusinessRules = BusinessRules(),
    policies: dict[str, RulePolicy] = RANKER_RULES,
) -> dict[str, pd.DataFrame]:
    """The lists ``evaluate_ranker`` scores for ``users``: the model's (a booster or a rule policy) and the
    baselines', served and raw (see ``recommendation_lists``)."""
    pool = candidates[candidates["user_id"].isin(users)].reset_index(drop=True)
    return recommendation_lists(pool, ranker_scores(model, pool), users, k, markov, rules, policies)


def evaluate_ranker(
    candidates: pd.DataFrame,
    model,
    targets: pd.DataFrame,
    markov: pd.DataFrame | None = None,
    ks: tuple[int, ...] = (10, 20),
    rules: BusinessRules = BusinessRules(),
    policies: dict[str, RulePolicy] = RANKER_RULES,
) -> pd.DataFrame:
    """Model and baselines on the hold-out: one row per (segment, method, target, metric), with a 95% bootstrap
    interval over users. Method ``model`` (and each baseline's name) is the list served under ``rules``, the one
    promotion decides on; ``model_raw`` (``<baseline>_raw``) the raw ranked list. Segments other than ``all`` are
    reported for ``any``."""
    users = targets["user_id"].drop_duplicates()
    lists = RankedLists(ranker_lists(candidates, model, users, max(ks), markov, rules, policies), max(ks), targets)
    rows = []
    for segment, segment_targets in _segments(targets).items():
        for target, event_type in TARGET_FILTERS.items():
            if segment != "all" and target != "any":
                continue
            t = segment_targets if event_type is None else segment_targets[segment_targets["event_type"] == event_type]
            measured = [
                ({"segment": segment, "method": method, "target": target, "metric": f"{m}@{k}"}, per_user[m])
                for method, at in lists.per_user(t[["user_id", "item_id"]].drop_duplicates(), ks).items()
                for k, per_user in at.items()
                for m in RANKING_METRICS
            ]
            columns = np.column_stack([values.to_numpy() for _, values in measured])
            for (row, values), (low, high) in zip(measured, bootstrap_intervals(columns)):
                mean = float(values.mean()) if len(values) else float("nan")
                rows.append({**row, "value": mean, "ci_low": low, "ci_high": high, "users": len(values)})
    return pd.DataFrame(rows)


# The simple rule each next-action model must beat: the user's own history of the action first, activity as the
# tie-break. The models start from it (``rule_offset``); calibrated on the training split it is a policy that can
# serve in the model's place.
HISTORY_RULES = {
    label: RulePolicy(name, tuple(USER_FEATURE_COLUMNS), weights)
    for label, (name, weights) in {
        "label_purchase": ("buy_history_rule", (("purchases_28d", 1.0), ("events_28d", 0.01))),
        "label_add_to_cart": ("cart_history_rule", (("carts_28d", 1.0), ("events_28d", 0.01))),
        "label_return": ("activity_rule", (("active_days_7d", 1.0), ("events_7d", 0.01))),
    }.items()
}
# The ranker starts from repeat-recent: a candidate's recency-weighted own history (0 when not among the user's
# recent items). Starting from recent + co-visitation + popularity measured no better on the Taobao sample.
RANKER_START = {"recent_score": 1.0}


def evaluate_next_action(
    holdout: pd.DataFrame, model, label: str, train_rate: float, policies: dict[str, RulePolicy]
) -> pd.DataFrame:
    """The next-action model (a booster or a rule policy) beside the rule policies and the base rate on the
    hold-out cut-off, with 95% bootstrap intervals over users for AUC and Brier."""
    y = holdout[label].to_numpy()
    features = holdout[USER_FEATURE_COLUMNS].astype(float)
    candidates = {
        "model": model.predict(features),
        **{name: policy.predict(features) for name, policy in policies.items()},
        "base_rate": np.full(len(holdout), train_rate),
    }
    # every method's AUC and Brier score from the same draws, of the clipped probabilities ``binary_metrics`` measures
    clipped = np.clip(np.column_stack(list(candidates.values())), 1e-6, 1 - 1e-6)
    aucs = resampled_aucs(y, clipped).T
    briers = bootstrap_intervals((clipped - y[:, None]) ** 2)
    rows = []
    for (method, p), method_aucs, brier in zip(candidates.items(), aucs, briers):
        intervals = {"auc": percentile_interval(method_aucs), "brier": brier}
        for metric, value in binary_metrics(y, p).items():
            low, high = intervals.get(metric, (float("nan"), float("nan")))
            rows.append(
                {
                    "segment": "all",
                    "method": method,
                    "target": label,
                    "metric": metric,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "users": len(y),
                }
            )
    return pd.DataFrame(rows)


def metric_value(evaluation: pd.DataFrame, method: str, target: str, metric: str, segment: str = "all") -> float:
    hit = evaluation[
        (evaluation["segment"] == segment)
        & (evaluation["method"] == method)
        & (evaluation["target"] == target)
        & (evaluation["metric"] == metric)
    ]
    if hit.empty:
        raise KeyError(f"no {metric} for {method}/{target} in the evaluation")
    return float(hit["value"].iloc[0])
