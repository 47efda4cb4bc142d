import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic.candidates import RANKER_FEATURES
from assets.logic.explanations import family_contributions, reasons


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
