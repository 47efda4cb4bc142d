import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic import serving
from assets.logic.candidates import RANKER_FEATURES
from assets.logic.serving import BusinessRules, apply_rules


def _scored():
    rows = [  # user, item, category, source, purchases, popular rank, score
        ("u1", "a", "c1", "recent", 1, 999, 0.9),
        ("u1", "b", "c1", "recent", 0, 999, 0.8),
        ("u1", "c", "c1", "covis", 0, 999, 0.7),
        ("u1", "d", "c2", "covis", 0, 999, 0.6),
        ("u1", "p1", "c3", "popular", 0, 1, 0.1),
        ("u1", "p2", "c3", "popular", 0, 2, 0.05),
        ("u2", "p1", "c3", "popular", 0, 1, 0.2),
        ("u2", "p2", "c3", "popular", 0, 2, 0.3),
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "source", "ui_purchases", "popular_rank", "score"])


def test_rules_exclude_purchases_cap_categories_deny_items_and_record_themselves():
    users = pd.Series(["u1", "u2", "u3"])
    rules = BusinessRules(exclude_purchased=True, max_per_category=1, deny_items=("d",), min_items=3)
    recs = apply_rules(_scored(), users, rules, k=3)
    u1 = recs[recs["user_id"] == "u1"]
    # a was bought, c is a second c1 item, d is denied: b, then p1 (c3), then a fallback fills slot 3.
    assert u1["item_id"].tolist() == ["b", "p1", "p2"] and u1["rank"].tolist() == [1, 2, 3]
    assert u1["source"].tolist() == ["recent", "popular", "fallback"]
    assert (recs["rules"] == "exclude_purchased;max_per_category=1;deny_items=1;min_items=3").all()
    assert recs[recs["user_id"] == "u2"]["item_id"].tolist() == ["p2", "p1"]  # the cap limits the ranked items; fills keep the cap off
    assert "u3" not in set(recs["user_id"])  # no candidates and no popular items known for u3


def test_without_rules_the_ranking_is_the_models():
    recs = apply_rules(_scored(), pd.Series(["u1"]), BusinessRules(exclude_purchased=False, max_per_category=0, min_items=0), k=4)
    assert recs["item_id"].tolist() == ["a", "b", "c", "d"] and recs["source"].ne("fallback").all()


def test_large_batches_are_scored_by_the_compiled_ranker_with_lightgbms_scores(monkeypatch):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.uniform(0, 1, (3000, len(RANKER_FEATURES))), columns=RANKER_FEATURES)
    frame.loc[rng.random(len(frame)) < 0.2, "ui_hours_since_touch"] = np.nan  # missing values take the default branch
    label = ((frame["recent_score"] + frame["ui_views"] > 1) & frame["ui_hours_since_touch"].notna()).astype(int)
    params = {"objective": "lambdarank", "num_leaves": 7, "verbosity": -1, "seed": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(frame, label, group=[30] * 100), 50)
    expected = booster.predict(frame[RANKER_FEATURES])
    monkeypatch.setattr(serving, "COMPILED_SCORING_ROWS", 1000)
    serving._compiled.cache_clear()
    compiled = serving.ranker_scores(booster, frame)
    assert serving._compiled.cache_info().currsize == 1
    assert np.allclose(compiled, expected, rtol=0, atol=1e-9) and compiled.std() > 0
