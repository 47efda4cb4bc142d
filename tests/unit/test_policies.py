"""Rule policies: baselines as models that score like a booster, explain themselves and can be registered."""

import numpy as np
import pandas as pd
import pytest

from assets.logic import explanations, serving, training
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.policies import RulePolicy


def _candidates(rng, n=60):
    frame = pd.DataFrame(rng.uniform(0, 5, (n, len(RANKER_FEATURES))), columns=RANKER_FEATURES)
    frame["in_recent"] = (np.arange(n) % 3 == 0).astype(float)
    return frame


def test_a_rule_scores_its_weighted_sum_only_where_it_proposes():
    frame = _candidates(np.random.default_rng(1))
    rule = training.RANKER_RULES["repeat_recent"]
    scores = rule.predict(frame)
    mine = frame["in_recent"] == 1
    assert np.array_equal(scores[mine.to_numpy()], frame.loc[mine, "recent_score"].to_numpy())
    assert np.isnan(scores[~mine.to_numpy()]).all()
    # the same from the row-major matrices serving reads
    matrix = np.ascontiguousarray(frame[RANKER_FEATURES], dtype=np.float64)
    assert np.array_equal(serving.ranker_scores(rule, [matrix]), scores, equal_nan=True)
    assert rule.feature_name() == RANKER_FEATURES


def test_a_one_term_rule_scores_exactly_its_sum_of_terms():
    rng = np.random.default_rng(4)
    frame = _candidates(rng)
    frame.loc[::7, "recent_score"] = np.nan  # a missing value is a term of 0
    frame.loc[::5, "recent_score"] = 0.0
    for weight, intercept, slope in ((1.0, 0.0, 1.0), (-2.5, 0.3, -0.7), (0.1, -1.0, 3.0)):
        rule = RulePolicy("r", tuple(RANKER_FEATURES), (("recent_score", weight),), None, intercept, slope)
        summed = intercept + slope * rule.terms(frame).sum(axis=1)  # every feature's term, added up
        assert np.array_equal(rule.predict(frame), summed), weight


def test_a_rule_refuses_columns_outside_its_features():
    with pytest.raises(ValueError, match="not among its features"):
        RulePolicy("bad", ("a",), (("b", 1.0),))


def test_a_served_rule_list_leaves_its_unscored_candidates_to_popularity_and_explains_from_its_terms():
    rng = np.random.default_rng(2)
    frame = _candidates(rng, 30).assign(
        user_id="u1",
        item_id=[f"i{i:02d}" for i in range(30)],
        category_id=None,
        source="recent",
        ui_purchases=0.0,
        popular_rank=np.arange(30.0),
        in_popular=1.0,
    )
    rule = training.RANKER_RULES["repeat_recent"]
    served = serving.recommend(rule, frame, pd.Series(["u1"]), k=20).to_pandas()
    recent = frame[frame["in_recent"] == 1].sort_values("recent_score", ascending=False)["item_id"].tolist()
    assert served["item_id"].tolist()[: len(recent)] == recent  # its own items first, by its score
    assert served["score"].iloc[len(recent) :].isna().all()  # then the rest, unscored, as the rules fill a list
    assert set(served["reason"].iloc[: len(recent)]) <= {r for r in served["reason"] if "you" in r or "recent" in r}
    family = explanations.top_family(rule, frame[RANKER_FEATURES])
    assert (family[frame["in_recent"].to_numpy() == 1] == "own_history").all()


def test_calibration_keeps_the_order_and_gives_probabilities():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.poisson(2, 500).astype(float), "b": rng.uniform(0, 1, 500)})
    y = (rng.random(500) < 0.1 + 0.1 * frame["a"]).astype(int).to_numpy()
    rule = RulePolicy("r", ("a", "b"), (("a", 1.0), ("b", 0.01)))
    calibrated = rule.calibrated(frame, y)
    p = calibrated.predict(frame)
    assert ((p > 0) & (p < 1)).all() and abs(p.mean() - y.mean()) < 0.01
    assert (np.argsort(p, kind="stable") == np.argsort(rule.predict(frame), kind="stable")).all()
    assert (
        calibrated.sha256() != rule.sha256()
        and rule.sha256() == RulePolicy("r", ("a", "b"), (("a", 1.0), ("b", 0.01))).sha256()
    )


def test_calibration_never_reverses_the_rule():
    """On training rows where the rule ranks backwards, the calibrated rule keeps its own order (base-rate
    probabilities), so its hold-out AUC is the rule's, not its mirror image."""
    from assets.logic.metrics import auc

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"a": rng.poisson(2, 400).astype(float)})
    backwards = (rng.random(400) < 0.4 - 0.1 * np.minimum(frame["a"], 3)).astype(int).to_numpy()
    calibrated = RulePolicy("r", ("a",), (("a", 1.0),)).calibrated(frame, backwards)
    p = calibrated.predict(frame)
    assert calibrated.slope > 0 and abs(p.mean() - backwards.mean()) < 1e-6
    assert auc(backwards, p) == pytest.approx(auc(backwards, frame["a"].to_numpy()))
