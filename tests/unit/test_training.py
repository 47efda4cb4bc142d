import dataclasses
import datetime as dt

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic import next_event, serving, training
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.features import USER_FEATURE_COLUMNS

# no refit: the path of the large training sets (see ``test_a_small_training_set_is_refitted_on_every_cutoff``)
PARAMS = training.LightGBMParams(
    num_boost_round=200, early_stopping_rounds=10, num_leaves=7, min_data_in_leaf=20, refit_max_rows=0
)
DAYS = [dt.date(2025, 3, 1) + dt.timedelta(days=i) for i in range(5)]


def _users(rng, days, users=300) -> pd.DataFrame:
    """User features over ``days`` whose next-day purchase follows the buy-history rule and one other feature."""
    n = len(days) * users
    frame = pd.DataFrame(rng.poisson(2, (n, len(USER_FEATURE_COLUMNS))).astype(float), columns=USER_FEATURE_COLUMNS)
    frame = frame.assign(
        as_of_date=np.repeat(days, users), user_id=[f"u{i % users:03d}" for i in range(n)], events_1d=1.0
    )
    logit = 0.8 * frame["purchases_28d"] - 0.5 * frame["views_7d"] - 1.0
    frame["label_purchase"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def test_the_validation_day_is_the_last_training_cutoff_before_the_holdout_and_is_not_fitted():
    train_days, holdout_day = training.split_cutoffs(DAYS)
    assert train_days == DAYS[:-1] and holdout_day == DAYS[-1]  # every labelled cut-off trains by default
    frame = _users(np.random.default_rng(0), train_days)
    fitted, validated = [], []

    def dataset(rows, reference):
        (fitted if reference is None else validated).append(set(rows["as_of_date"]))
        return lgb.Dataset(rows[USER_FEATURE_COLUMNS], label=rows["label_purchase"], reference=reference)

    training.boost(PARAMS.to_lightgbm("binary"), dataset, frame, PARAMS)
    # rounds are picked on the last training cut-off, fitted on the days before it only (no refit)
    assert validated == [{train_days[-1]}] and train_days[-1] < holdout_day
    assert fitted == [set(train_days[:-1])]
    fit, valid = training.validation_split(frame)
    assert set(valid["as_of_date"]) == {train_days[-1]} and set(fit["as_of_date"]) == set(train_days[:-1])


def test_the_validation_split_of_a_set_in_day_order_shares_its_memory_and_equals_the_split_of_any_order():
    frame = _users(np.random.default_rng(0), DAYS[:3])
    shuffled = frame.sample(frac=1.0, random_state=1)
    fit, valid = training.validation_split(frame)
    assert np.shares_memory(fit["views_7d"].to_numpy(), frame["views_7d"].to_numpy())  # slices, not copies
    for ours, theirs in zip((fit, valid), training.validation_split(shuffled), strict=True):
        pd.testing.assert_frame_equal(ours, theirs.sort_index())
    assert set(valid["as_of_date"]) == {DAYS[2]} and len(fit) + len(valid) == len(frame)
    undated = frame.assign(as_of_date=frame["as_of_date"].astype("datetime64[ns]"))
    undated.loc[0, "as_of_date"] = pd.NaT  # a row of no day is in neither part, as the days' masks leave it
    fit, valid = training.validation_split(undated)
    assert len(fit) + len(valid) == len(frame) - 1 and 0 not in fit.index and 0 not in valid.index


def test_a_ranking_dataset_holds_the_rows_sorted_by_group_and_item_whatever_their_order():
    rng = np.random.default_rng(3)
    users = _users(rng, DAYS[:2], users=40)
    frame = pd.concat([users] * 5, ignore_index=True).assign(  # five candidate items per (day, user)
        item_id=lambda f: [f"i{v:03d}" for v in rng.permutation(len(f))],
        relevance=lambda f: rng.integers(0, 3, len(f)),
        views_7d=lambda f: rng.integers(0, 9, len(f)),  # an integer feature is read as a double
        purchases_28d=lambda f: rng.random(len(f)),
    )
    shuffled = frame.sample(frac=1.0, random_state=2)
    shuffled.index = shuffled.index % 7  # index labels repeated: positions count, not labels
    features = ["views_7d", "purchases_28d", "events_1d"]
    made = training.ranking_dataset(["as_of_date", "user_id"], features)(shuffled, None)
    ordered = frame.sort_values(["as_of_date", "user_id", "item_id"], kind="stable")
    assert set(ordered.groupby(["as_of_date", "user_id"]).size()) == {5}
    # what LightGBM is given: the features as doubles, labels and groups in that order
    np.testing.assert_array_equal(made.data.to_numpy(), ordered[features].to_numpy(dtype=float))
    assert list(made.data.columns) == features
    np.testing.assert_array_equal(made.label, ordered["relevance"].to_numpy())
    np.testing.assert_array_equal(made.group, ordered.groupby(["as_of_date", "user_id"], sort=False).size().to_numpy())


def test_a_small_training_set_is_refitted_on_every_cutoff_with_the_rounds_found():
    frame = _users(np.random.default_rng(0), DAYS[:4])
    fitted, validated = [], []

    def dataset(rows, reference):
        (fitted if reference is None else validated).append(set(rows["as_of_date"]))
        return lgb.Dataset(rows[USER_FEATURE_COLUMNS], label=rows["label_purchase"], reference=reference)

    small = dataclasses.replace(PARAMS, refit_max_rows=len(frame))
    lgb_params = PARAMS.to_lightgbm("binary") | {"metric": "binary_logloss"}
    refitted = training.boost(lgb_params, dataset, frame, small)
    assert validated == [{DAYS[3]}] and fitted == [set(DAYS[:3]), set(DAYS[:4])]
    stopped = training.boost(lgb_params, dataset, frame, PARAMS)
    assert refitted.current_iteration() == stopped.current_iteration()  # the same rounds, on every cut-off
    assert not np.allclose(refitted.predict(frame[USER_FEATURE_COLUMNS]), stopped.predict(frame[USER_FEATURE_COLUMNS]))


def test_a_small_training_set_trains_on_one_thread_and_grows_the_trees_two_threads_grow(monkeypatch):
    frame = _users(np.random.default_rng(3), DAYS[:4])
    refitted = dataclasses.replace(PARAMS, refit_max_rows=len(frame))  # the refit's booster keeps its parameters
    one = training.train_binary(frame, "label_purchase", refitted)
    monkeypatch.setattr(training, "SINGLE_THREAD_MAX_ROWS", len(frame) - 1)
    two = training.train_binary(frame, "label_purchase", refitted)
    assert (one.params["num_threads"], two.params["num_threads"]) == (1, 2)
    trees = [booster.model_to_string().split("parameters:")[0] for booster in (one, two)]
    assert trees[0] == trees[1] and one.num_trees() > len(training.HISTORY_RULES["label_purchase"].weights)


def test_the_model_kept_is_the_fit_up_to_its_best_round_on_the_validation_day():
    frame = _users(np.random.default_rng(2), DAYS[:4])
    lgb_params = PARAMS.to_lightgbm("binary") | {"metric": "binary_logloss"}

    def dataset(rows, reference):
        return lgb.Dataset(rows[USER_FEATURE_COLUMNS], label=rows["label_purchase"], reference=reference)

    booster = training.boost(lgb_params, dataset, frame, PARAMS)
    fit, valid = training.validation_split(frame)
    rounds = booster.current_iteration()
    longer = lgb.train(lgb_params, dataset(fit, None), num_boost_round=rounds + PARAMS.early_stopping_rounds)
    y = valid["label_purchase"].to_numpy()
    losses = []
    for i in range(1, rounds + PARAMS.early_stopping_rounds + 1):
        p = np.clip(longer.predict(valid[USER_FEATURE_COLUMNS], num_iteration=i), 1e-15, 1 - 1e-15)
        losses.append(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    # the rounds after the best one on the validation day are left out of the model file, not just of predict
    assert int(np.argmin(losses)) + 1 == rounds < PARAMS.num_boost_round
    assert booster.num_trees() == rounds
    assert np.allclose(
        booster.predict(frame[USER_FEATURE_COLUMNS]),
        longer.predict(frame[USER_FEATURE_COLUMNS], num_iteration=rounds),
        rtol=0,
        atol=1e-12,
    )


def test_early_stopping_keeps_fewer_rounds_than_the_cap_on_noise():
    rng = np.random.default_rng(1)
    frame = _users(rng, DAYS[:4]).assign(label_purchase=lambda f: rng.integers(0, 2, len(f)))
    booster = training.train_binary(frame, "label_purchase", PARAMS)
    assert booster.current_iteration() < PARAMS.num_boost_round // 2  # the rule's rounds and the residual's together
    states = pd.DataFrame(
        rng.poisson(2, (2000, len(next_event.NEXT_EVENT_FEATURES))).astype(float),
        columns=next_event.NEXT_EVENT_FEATURES,
    )
    states = states.assign(
        as_of_date=np.repeat(DAYS[:4], 500), next_type=rng.choice(["view", "purchase", "favorite"], 2000)
    )
    assert next_event.train_next_event(states, PARAMS).current_iteration() < PARAMS.num_boost_round // 2
    no_stopping = dataclasses.replace(PARAMS, early_stopping_rounds=0, num_boost_round=40)
    assert next_event.train_next_event(states, no_stopping).current_iteration() == 40


def test_a_served_next_action_probability_is_the_rules_offset_plus_the_boosted_residual():
    frame = _users(np.random.default_rng(2), DAYS[:4])
    booster = training.train_binary(frame, "label_purchase", PARAMS)
    history_rule = training.HISTORY_RULES["label_purchase"]
    fit, _ = training.validation_split(frame)  # the rows the model is fitted on: the days before the validation day
    rule = training.rule_offset(
        fit, USER_FEATURE_COLUMNS, dict(history_rule.weights), fit["label_purchase"].to_numpy()
    )  # the trees the model starts from, on the same rows
    day = frame[frame["as_of_date"] == DAYS[2]]  # a fitted day: the offset's trees hold a leaf per value seen there
    features = day[USER_FEATURE_COLUMNS].astype(float)
    offset = rule.predict(features, raw_score=True)
    # the offset is the rule calibrated to log-odds: a + b * rule, from a logistic fit on the fitted rows
    calibrated = history_rule.calibrated(fit, fit["label_purchase"].to_numpy())
    score = history_rule.predict(frame)
    assert calibrated.slope > 0 and np.allclose(
        offset, calibrated.intercept + calibrated.slope * score[day.index], rtol=0, atol=1e-6
    )
    # the rule as a policy serves exactly its calibrated probability
    assert np.allclose(calibrated.predict(features), 1 / (1 + np.exp(-offset)), rtol=0, atol=1e-6)
    residual = booster.predict(features, raw_score=True, start_iteration=rule.current_iteration())
    assert offset.std() > 0 and residual.std() > 0 and booster.current_iteration() > rule.current_iteration()
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE user_features AS SELECT * FROM day")
        served = serving.predict_next_action_day(conn, booster, DAYS[2])
    assert served["user_id"].tolist() == day["user_id"].tolist()
    assert np.allclose(served["probability"], 1 / (1 + np.exp(-(offset + residual))), rtol=0, atol=1e-12)
    stored = lgb.Booster(model_str=booster.model_to_string())  # the file MLflow logs and predict loads
    assert np.allclose(stored.predict(features), served["probability"], rtol=0, atol=1e-12)


def test_a_served_ranker_score_is_the_rules_offset_plus_the_boosted_residual(monkeypatch):
    rng = np.random.default_rng(3)
    n = 4 * 100 * 10  # 4 days, 100 users, 10 candidates each
    frame = pd.DataFrame(rng.uniform(0, 1, (n, len(RANKER_FEATURES))), columns=RANKER_FEATURES).assign(
        as_of_date=np.repeat(DAYS[:4], n // 4),
        user_id=[f"u{i // 10 % 100:03d}" for i in range(n)],
        item_id=[f"i{i % 10}" for i in range(n)],
        in_recent=rng.integers(0, 2, n).astype(float),
    )
    frame["relevance"] = (
        rng.random(n) < 0.1 + 0.3 * frame["in_recent"] * frame["recent_score"] + 0.2 * frame["ui_views"]
    ).astype(int)
    booster = training.train_lambdarank(frame, PARAMS)
    fit, _ = training.validation_split(frame)
    rule = training.rule_offset(fit, RANKER_FEATURES, training.RANKER_START, fit["relevance"].to_numpy() > 0)
    offset = rule.predict(frame[RANKER_FEATURES], raw_score=True)
    residual = booster.predict(frame[RANKER_FEATURES], raw_score=True, start_iteration=rule.current_iteration())
    assert offset.std() > 0 and residual.std() > 0
    assert np.allclose(serving.ranker_scores(booster, frame), offset + residual, rtol=0, atol=1e-9)
    monkeypatch.setattr(serving, "COMPILED_SCORING_ROWS", 1)  # the compiled path of large batches reads the same file
    serving._compiled.cache_clear()
    assert np.allclose(serving.ranker_scores(booster, frame), offset + residual, rtol=0, atol=1e-9)


def test_a_training_set_stacks_the_days_asked_within_its_own_limit():
    from assets.logic.catalogue import TRAINING_SETS

    session, ranker = TRAINING_SETS["session_training_set"], TRAINING_SETS["ranker_training_set"]
    assert session.max_train_days and ranker.max_train_days == 0
    limit = session.max_train_days
    assert [session.train_days(asked) for asked in (0, limit - 1, limit + 3)] == [limit, limit - 1, limit]
    assert [ranker.train_days(asked) for asked in (0, 3)] == [0, 3]
    days = [dt.date(2025, 3, d) for d in range(1, 15)]
    train, holdout = training.split_cutoffs(days, session.train_days(0))
    assert train == days[-1 - limit : -1] and holdout == days[-1]


def test_next_action_intervals_measure_the_probabilities_the_values_do():
    """The metrics clip probabilities to [1e-6, 1 - 1e-6]; saturated scores become ties there, and the AUC's
    interval must be of the same clipped scores (it was (1.0, 1.0) around an AUC of 0.5)."""

    class Saturated:
        def predict(self, features):
            return np.where(np.arange(len(features)) < 20, 1 - 1e-7, 1 - 5e-7)

    holdout = pd.DataFrame(0.0, index=range(100), columns=USER_FEATURE_COLUMNS).assign(
        label_purchase=np.arange(100) < 20
    )
    evaluation = training.evaluate_next_action(holdout, Saturated(), "label_purchase", 0.2, {}).set_index(
        ["method", "metric"]
    )
    for method in ("model", "base_rate"):
        auc = evaluation.loc[(method, "auc")]
        assert auc["value"] == 0.5 and auc["ci_low"] == auc["ci_high"] == 0.5
        brier = evaluation.loc[(method, "brier")]
        assert brier["ci_low"] <= brier["value"] <= brier["ci_high"]
