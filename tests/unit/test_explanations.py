import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic.candidates import RANKER_FEATURES
from assets.logic.explanations import (
    ALL_FAMILIES,
    _path_table,
    family_contributions,
    feature_family,
    leaf_indices,
    reasons,
    top_family,
    top_family_of_leaves,
    word,
)


def _booster_driven_by_views():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(0, 1, (4000, len(RANKER_FEATURES))), columns=RANKER_FEATURES)
    frame["ui_views"] = rng.integers(0, 6, len(frame))
    label = (frame["ui_views"] >= 3).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbosity": -1, "seed": 1, "deterministic": True}
    return lgb.train(params, lgb.Dataset(frame, label), 30), frame


def test_families_add_up_to_the_score_and_the_reason_names_the_driver():
    booster, frame = _booster_driven_by_views()
    rows = frame.head(50).assign(ui_carts=1, ui_favs=0, ui_purchases=0, ui_hours_since_touch=5.0, category_id="c1")
    families = family_contributions(booster, rows)
    raw = booster.predict(rows[RANKER_FEATURES], raw_score=True)
    bias = booster.predict(rows[RANKER_FEATURES], pred_contrib=True)[:, -1]
    assert np.allclose(families.sum(axis=1).to_numpy() + bias, raw)
    viewed = rows[rows["ui_views"] >= 4].iloc[:1]
    text = reasons(booster, viewed).iloc[0]
    assert text == f"you viewed it {int(viewed['ui_views'].iloc[0])} times and carted it 1 time, last 5 hours ago"
    assert reasons(booster, rows.iloc[0:0]).empty


def test_on_stumps_path_credits_are_the_shap_values():
    # A tree of one split gives all of a row's deviation from the tree's expected value to that split's feature,
    # for path attribution and SHAP alike: the two must agree to rounding, family by family.
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.uniform(0, 1, (3000, len(RANKER_FEATURES))), columns=RANKER_FEATURES)
    label = ((frame["ui_views"] + frame["covis_score"] + frame["category_affinity"]) > 1.5).astype(int)
    params = {"objective": "binary", "num_leaves": 2, "verbosity": -1, "seed": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(frame, label), 40)
    rows = frame.head(200)
    families = family_contributions(booster, rows)
    shap = pd.DataFrame(booster.predict(rows[RANKER_FEATURES], pred_contrib=True)[:, :-1], columns=RANKER_FEATURES)
    for family in families.columns:
        members = [f for f in RANKER_FEATURES if feature_family(f) == family]
        assert np.allclose(families[family].to_numpy(), shap[members].sum(axis=1).to_numpy()), family
    assert (families[["own_history", "co_visitation", "category"]].abs().sum() > 0).all()


def test_reasons_read_only_the_first_rounds():
    booster, frame = _booster_driven_by_views()
    rows = frame.head(100)
    first = family_contributions(booster, rows, rounds=5)
    assert not np.allclose(first.to_numpy(), family_contributions(booster, rows).to_numpy())
    raw_5 = booster.predict(rows[RANKER_FEATURES], raw_score=True, num_iteration=5)
    bias_5 = booster.predict(rows[RANKER_FEATURES], pred_contrib=True, num_iteration=5)[:, -1]
    assert np.allclose(first.sum(axis=1).to_numpy() + bias_5, raw_5)


def test_contributions_from_leaves_are_the_per_tree_sums_bit_for_bit():
    """The one sparse product adds each row's trees in tree order: the sums a loop over the trees makes, exactly; and
    the reasons from the leaves of stacked matrices are the reasons from the features."""
    booster, frame = _booster_driven_by_views()
    matrix = frame[RANKER_FEATURES].to_numpy(np.float64)
    families = ALL_FAMILIES
    table = _path_table(booster, 20, families)
    leaves = leaf_indices(booster, [matrix[:1500], matrix[1500:]], 20)
    loop = np.zeros((len(matrix), len(families)))
    for t in range(leaves.shape[1]):
        loop += table[t, leaves[:, t]]
    assert np.array_equal(family_contributions(booster, matrix, rounds=20).to_numpy(), loop)
    assert (top_family_of_leaves(booster, leaves[::7]) == top_family(booster, matrix[::7])).all()
    assert len(top_family_of_leaves(booster, leaves[:0])) == 0


def test_a_tree_of_one_leaf_credits_nothing():
    """A model that found no split (a constant label) is one tree of one leaf, written without a split or a leaf
    index: it credits no family, and the reason falls back to popularity."""
    frame = pd.DataFrame(np.random.default_rng(3).uniform(0, 1, (200, len(RANKER_FEATURES))), columns=RANKER_FEATURES)
    booster = lgb.train({"objective": "regression", "verbosity": -1}, lgb.Dataset(frame, np.ones(len(frame))), 5)
    assert [tree["num_leaves"] for tree in booster.dump_model()["tree_info"]] == [1]
    assert (family_contributions(booster, frame.head(20)).to_numpy() == 0).all()
    assert (top_family(booster, frame.head(20)) == "item_popularity").all()


def test_wording_uses_the_rows_numbers():
    rows = pd.DataFrame(
        {
            "ui_views": [2.0, 0, 1, 0, 0],
            "ui_carts": [0.0, 0, 1, 0, 0],
            "ui_favs": [1.0, 0, 0, 0, 0],
            "ui_purchases": [0.0, 0, 0, 0, 0],
            "ui_hours_since_touch": [2.5, None, None, None, None],
            "category_affinity": [0.0, 0.0, 0.0, 0.126, 0.004],
            "category_id": ["c1", "c1", "c1", "c7", "c8"],
        }
    )
    family = pd.Series(["own_history", "own_history", "own_history", "category", "category"])
    assert word(rows, family).to_pylist() == [
        "you viewed it 2 times and saved it 1 time, last 2 hours ago",  # 2.5 rounds half to even
        "in your recent history",
        "you viewed it 1 time and carted it 1 time",
        "popular in category c7, which you browse (13% of your activity)",
        "popular in category c8, which you browse",
    ]
    assert word(
        rows, pd.Series(["co_visitation", "user_activity", "price", "item_popularity", "item_popularity"])
    ).to_pylist() == [
        "often viewed together with items you looked at",
        "matches how actively you are shopping",
        "in the price range you shop in",
        "popular with shoppers right now",
        "popular with shoppers right now",
    ]
    assert word(
        rows, pd.Series(["new_arrival", "trending", "item_popularity", "item_popularity", "item_popularity"])
    ).to_pylist()[:2] == [
        "new in category c1, which you browse, and catching on fast",
        "trending: more shoppers than usual looked at it in the last day",
    ]
