import math

import numpy as np
import pandas as pd
import pytest

from assets.logic.metrics import binary_metrics, per_user_ranking, per_user_rankings, top_k


def _recs(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


def test_ranking_metrics_by_hand():
    recs = _recs([("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "p", 1), ("b", "q", 2)])
    targets = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["y", "w", "r", "x"]})
    per_user = per_user_ranking(recs, targets, k=2)
    # a: 1 hit of min(2, 2) targets; b: 0; c: no recommendations -> miss
    assert sorted(per_user.index) == ["a", "b", "c"]
    m = per_user.mean()
    assert m["recall"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["hr"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 / 2) / 3)
    idcg_a = 1 + 1 / math.log2(3)
    assert m["ndcg"] == pytest.approx(((1 / math.log2(3)) / idcg_a) / 3)


def test_rankings_at_several_k_match_each_lists_own_cut():
    recs = _recs([("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "p", 1), ("b", "q", 2), ("b", "r", 3)])
    targets = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["y", "z", "r", "x"]})
    at = per_user_rankings(recs, targets, (1, 2, 3))
    # a hits y at 2 and z at 3, b hits r at 3: the cut at each K decides the hits, the ideal and the first hit
    assert at[1]["hr"].tolist() == [0.0, 0.0, 0.0]
    assert at[2].loc["a", "recall"] == 0.5 and at[2].loc["b", "hr"] == 0.0 and at[2].loc["a", "mrr"] == 0.5
    assert at[3].loc["a", "recall"] == 1.0 and at[3].loc["b", "mrr"] == pytest.approx(1 / 3)
    idcg_a = 1 + 1 / math.log2(3)
    assert at[3].loc["a", "ndcg"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / idcg_a)
    for k in (1, 2, 3):
        pd.testing.assert_frame_equal(at[k], per_user_ranking(recs[recs["rank"] <= k], targets, k))


def test_recall_is_capped_by_k():
    recs = _recs([("a", "x", 1)])
    targets = pd.DataFrame({"user_id": ["a"] * 5, "item_id": list("xvwyz")})
    assert per_user_ranking(recs, targets, k=1).loc["a", "recall"] == 1.0


def test_top_k_pads_with_fallback_and_covers_users_without_candidates():
    scored = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "s": [0.1, 0.9]})
    out = top_k(scored, "s", 3, fallback_items=["y", "p", "q"], users=pd.Series(["a", "b"]))
    a = out[out["user_id"] == "a"]
    assert a["item_id"].tolist() == ["y", "x", "p"]
    assert a["rank"].tolist() == [1, 2, 3]
    b = out[out["user_id"] == "b"]
    assert b["item_id"].tolist() == ["y", "p", "q"] and b["score"].isna().all()


def test_binary_metrics():
    y = np.array([0, 0, 1, 1])
    m = binary_metrics(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((np.array([0.1, 0.4, 0.35, 0.8]) - y) ** 2))
    assert math.isnan(binary_metrics(np.array([0, 0]), np.array([0.2, 0.3]))["auc"])


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_users():
    from assets.logic.metrics import bootstrap_interval

    rng = np.random.default_rng(0)
    small, large = rng.binomial(1, 0.3, 100).astype(float), rng.binomial(1, 0.3, 5000).astype(float)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([1.0])))


def test_reliability_table_compares_predicted_and_observed_rates():
    from assets.logic.metrics import reliability_table

    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 20_000)
    calibrated = reliability_table(rng.binomial(1, p), p)
    assert len(calibrated) == 10 and calibrated["rows"].sum() == 20_000
    assert (calibrated["mean_predicted"] - calibrated["observed_rate"]).abs().max() < 0.03
    overconfident = reliability_table(rng.binomial(1, p), np.clip(p * 1.5, 0, 1))
    assert (overconfident["mean_predicted"] - overconfident["observed_rate"]).max() > 0.2


def test_rank_sum_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from assets.logic.metrics import auc

    rng = np.random.default_rng(2)
    y = rng.binomial(1, 0.3, 500)
    p = np.round(rng.uniform(0, 1, 500) + 0.3 * y, 1)  # rounded: many ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert math.isnan(auc(np.zeros(5), np.arange(5)))


def test_ranked_lists_measure_each_method_as_its_own_list():
    from assets.logic.metrics import RankedLists

    lists = {
        "first": _recs([("a", "x", 1), ("a", "y", 2), ("b", "p", 1), ("b", "q", 2)]),
        "second": _recs([("a", "y", 1), ("a", "w", 2), ("c", "x", 1), ("d", "z", 1)]),
        "empty": _recs([]),
    }
    # c's target x is listed for a only; d is listed but no target user; e has targets no list holds
    targets = pd.DataFrame({"user_id": ["a", "a", "b", "c", "e"], "item_id": ["y", "w", "q", "x", "v"]})
    measured = RankedLists(lists, 2, targets).per_user(targets, (1, 2))
    for method, recs in lists.items():
        for k in (1, 2):
            pd.testing.assert_frame_equal(measured[method][k], per_user_ranking(recs[recs["rank"] <= k], targets, k))
    assert measured["second"][2].loc["a", "recall"] == 1.0 and measured["first"][2].loc["a", "mrr"] == 0.5
    assert measured["empty"][2]["hr"].sum() == 0.0 and list(measured["empty"][2].index) == ["a", "b", "c", "e"]


def test_bootstrap_intervals_draw_once_for_the_same_intervals_as_one_column_at_a_time():
    from assets.logic.metrics import bootstrap_interval, bootstrap_intervals

    columns = np.random.default_rng(3).random((300, 4))
    assert bootstrap_intervals(columns) == [bootstrap_interval(column) for column in columns.T]


def auc_interval(y, p):
    from assets.logic.metrics import percentile_interval, resampled_aucs

    return percentile_interval(resampled_aucs(y, p))


def test_resampled_aucs_are_the_auc_of_each_resample_to_the_bit():
    """Against the definition: every resample's rows ranked anew (ties included: scores of few values)."""
    from assets.logic.metrics import BOOTSTRAP_SAMPLES, auc, resampled_aucs

    rng = np.random.default_rng(5)
    y = rng.random(3000) < 0.2  # resampled 83 at a time: three blocks of draws
    columns = (rng.random(3000), rng.integers(0, 5, 3000).astype(float), np.where(y, 0.9, 0.1))
    draws = np.random.default_rng(7).integers(0, len(y), size=(BOOTSTRAP_SAMPLES, len(y)))
    for p in columns:
        stats = np.array([auc(y[d], p[d]) for d in draws])
        assert np.array_equal(resampled_aucs(y, p), stats, equal_nan=True)
        assert auc_interval(y, p) == (np.nanpercentile(stats, 2.5), np.nanpercentile(stats, 97.5))
    # several columns at once: the same resamples, against one label column or a label column each
    together = resampled_aucs(y, np.column_stack(columns))
    assert np.array_equal(together, np.column_stack([resampled_aucs(y, p) for p in columns]), equal_nan=True)
    labels = np.column_stack([y, ~y, y])
    each = resampled_aucs(labels, np.column_stack(columns))
    assert np.array_equal(each[:, 1], resampled_aucs(~y, columns[1]), equal_nan=True)
    # resamples of one class have no AUC: left out, as nanpercentile leaves them
    assert all(math.isnan(v) for v in auc_interval(np.array([True]), np.array([0.5])))
    low, high = auc_interval(np.r_[np.ones(3, bool), np.zeros(200, bool)], rng.random(203))
    assert 0.0 <= low <= high <= 1.0


def test_ranked_lists_match_no_pair_through_a_null_id_and_refuse_a_larger_k():
    """A null id has no code: it must not stand for another user's pair (codes are user x items + item)."""
    from assets.logic.metrics import RankedLists

    lists = {"m": _recs([("a", "x", 1), ("b", None, 1), ("b", "y", 2)])}
    targets = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["y", "z"]})
    measured = RankedLists(lists, 2, targets).per_user(targets, (2,))["m"][2]
    assert measured["hr"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="cut at K = 2"):
        RankedLists(lists, 2, targets).per_user(targets, (3,))


def test_auc_interval_leaves_out_resamples_with_a_missing_score_as_auc_does():
    from assets.logic.metrics import BOOTSTRAP_SAMPLES, auc

    rng = np.random.default_rng(2)
    y, p = rng.random(300) < 0.3, rng.random(300)
    p[[5, 77]] = np.nan
    draws = np.random.default_rng(7).integers(0, len(y), size=(BOOTSTRAP_SAMPLES, len(y)))
    stats = np.array([auc(y[d], p[d]) for d in draws])
    expected = (np.nanpercentile(stats, 2.5), np.nanpercentile(stats, 97.5))
    got = auc_interval(y, p)
    assert got == expected or (np.isnan(expected).all() and np.isnan(got).all())


def test_ranked_lists_refuse_targets_they_were_not_matched_with():
    from assets.logic.metrics import RankedLists

    lists = {"m": _recs([("a", "x", 1)])}
    matched_with = pd.DataFrame({"user_id": ["a"], "item_id": ["y"]})
    with pytest.raises(ValueError, match="targets outside"):
        RankedLists(lists, 1, matched_with).per_user(pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}), (1,))
