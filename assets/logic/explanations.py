"""Readable reasons for recommendations, from the ranker's own per-row feature contributions.

LightGBM's ``pred_contrib`` splits each score into one contribution per feature
(SHAP values for trees; see ``EXPLAINED_ROUNDS`` for the rounds read). Contributions
are summed into families a shopper would recognise; the family that pushed the item up
most gives the reason, worded with the row's own numbers ("you viewed it 3 times and
carted it, last 5 hours ago").
"""

import lightgbm as lgb
import numpy as np
import pandas as pd

from assets.logic.candidates import RANKER_FEATURES

# SHAP costs ~0.2 ms per row for 300 rounds of 7 leaves (12 s for 60k recommendations): reasons read the
# first 20 rounds, which carry the largest effects. On the Taobao sample's 16,020 recommendations their top
# family is the one all 300 rounds give for 93.1% of rows (50 rounds: 93.6%, 150: 95.3%), at a fifteenth of the cost.
EXPLAINED_ROUNDS = 20

FAMILIES = {
    "own_history": (
        "recent_score", "recent_rank", "in_recent", "ui_views", "ui_carts", "ui_purchases", "ui_favs",
        "ui_hours_since_touch", "ui_touched_last_day", "ui_hours_since_first_touch", "ui_sessions", "ui_days",
        "ui_events_1d", "ui_in_last_session", "ui_last_session_position",
    ),
    "co_visitation": ("covis_score", "covis_rank", "in_covis"),
    "category": ("category_rank", "in_category", "category_affinity", "in_last_category"),
    "user_activity": ("user_events_7d", "user_hours_since_last_event"),
    "price": ("price_vs_user_mean", "item_price"),
}


def _family(feature: str) -> str:
    for family, members in FAMILIES.items():
        if feature in members:
            return family
    return "item_popularity"  # popularity rank and the item's own statistics


def family_contributions(booster: lgb.Booster, features: pd.DataFrame, rounds: int | None = None) -> pd.DataFrame:
    """Per row, the summed contribution (SHAP, the last column of ``pred_contrib`` left out: the bias) of each
    family of features to the ranker's score, over its first ``rounds`` boosting rounds (None: all)."""
    if features.empty:
        return pd.DataFrame(columns=[*FAMILIES, "item_popularity"])
    contrib = booster.predict(features[RANKER_FEATURES].astype(float), pred_contrib=True, num_iteration=rounds)[:, :-1]
    families = [*FAMILIES, "item_popularity"]
    membership = np.array([[_family(f) == family for family in families] for f in RANKER_FEATURES], dtype=float)
    return pd.DataFrame(contrib @ membership, columns=families, index=features.index)


def _times(n: float, what: str) -> str:
    n = int(n)
    return f"{what} it {n} time{'s' if n != 1 else ''}" if n else ""


def _own_history(row) -> str:
    acts = [a for a in (_times(row.ui_views, "viewed"), _times(row.ui_carts, "carted"), _times(row.ui_favs, "saved"),
                        _times(row.ui_purchases, "bought")) if a]
    when = f", last {row.ui_hours_since_touch:.0f} hours ago" if pd.notna(row.ui_hours_since_touch) else ""
    return ("you " + " and ".join(acts) + when) if acts else "in your recent history"


def _phrase(family: str, row) -> str:
    if family == "own_history":
        return _own_history(row)
    if family == "co_visitation":
        return "often viewed together with items you looked at"
    if family == "category":
        share = f" ({row.category_affinity:.0%} of your activity)" if row.category_affinity > 0 else ""
        return f"popular in category {row.category_id}, which you browse{share}"
    if family == "user_activity":
        return "matches how actively you are shopping"
    if family == "price":
        return "in the price range you shop in"
    return "popular with shoppers right now"


def reasons(booster: lgb.Booster, rows: pd.DataFrame, rounds: int | None = EXPLAINED_ROUNDS) -> pd.Series:
    """One short reason per candidate row: the family with the largest positive contribution."""
    if rows.empty:
        return pd.Series([], dtype=object, index=rows.index)
    families = family_contributions(booster, rows, rounds)
    top = families.idxmax(axis=1).where(families.max(axis=1) > 0, "item_popularity")
    # Word each distinct (family, numbers shown) once: many rows share them (popular items, cold users).
    worded = rows[["ui_views", "ui_carts", "ui_favs", "ui_purchases", "category_id"]].assign(
        ui_hours_since_touch=rows["ui_hours_since_touch"].round(), category_affinity=rows["category_affinity"].round(2),
        family=top.to_numpy(),
    )
    distinct = worded.drop_duplicates()
    distinct = distinct.assign(reason=[_phrase(f, r) for f, r in zip(distinct["family"], distinct.itertuples())])
    reason = worded.merge(distinct, on=list(worded.columns), how="left")["reason"]
    return pd.Series(reason.to_numpy(), index=rows.index, dtype=object)

