"""Readable reasons for recommendations, from the ranker's own per-row feature contributions.

LightGBM's ``pred_contrib`` splits each score into one contribution per feature
(SHAP values for trees). Contributions are summed into families a shopper would
recognise; the family that pushed the item up most gives the reason, worded with
the row's own numbers ("you viewed it 3 times and carted it, last 5 hours ago").
"""

import lightgbm as lgb
import pandas as pd

from assets.logic.candidates import RANKER_FEATURES

FAMILIES = {
    "own_history": (
        "recent_score", "recent_rank", "in_recent", "ui_views", "ui_carts", "ui_purchases", "ui_favs",
        "ui_hours_since_touch", "ui_touched_last_day", "ui_hours_since_first_touch", "ui_sessions", "ui_days",
        "ui_events_1d", "ui_in_last_session", "ui_last_session_position",
    ),
    "co_visitation": ("covis_score", "covis_rank", "in_covis"),
    "category": ("category_rank", "in_category", "category_affinity", "in_last_category"),
    "user_activity": ("user_events_7d", "user_hours_since_last_event"),
}


def _family(feature: str) -> str:
    for family, members in FAMILIES.items():
        if feature in members:
            return family
    return "item_popularity"  # popularity rank and the item's own statistics


def family_contributions(booster: lgb.Booster, features: pd.DataFrame) -> pd.DataFrame:
    """Per row, the summed contribution of each family of features to the ranker's score."""
    if features.empty:
        return pd.DataFrame(columns=[*FAMILIES, "item_popularity"])
    contrib = booster.predict(features[RANKER_FEATURES].astype(float), pred_contrib=True)[:, :-1]  # last: bias
    frame = pd.DataFrame(contrib, columns=RANKER_FEATURES, index=features.index)
    return frame.T.groupby([_family(f) for f in RANKER_FEATURES]).sum().T


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
    return "popular with shoppers right now"


def reasons(booster: lgb.Booster, rows: pd.DataFrame) -> pd.Series:
    """One short reason per candidate row: the family with the largest positive contribution."""
    if rows.empty:
        return pd.Series([], dtype=object, index=rows.index)
    families = family_contributions(booster, rows)
    top = families.idxmax(axis=1).where(families.max(axis=1) > 0, "item_popularity")
    return pd.Series([_phrase(f, r) for f, r in zip(top, rows.itertuples())], index=rows.index, dtype=object)

