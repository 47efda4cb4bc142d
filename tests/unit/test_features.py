"""Features and candidates do not depend on the order DuckDB reads the events in."""

import datetime as dt

import duckdb
import pandas as pd
import pytest

from assets.logic.candidates import build_candidates_day
from assets.logic.features import build_item_features_day, build_user_features_day
from assets.logic.schema import CANONICAL_COLUMNS
from assets.logic.warehouse_sql import ensure_table

DAY = dt.date(2025, 3, 3)
PRICES = [0.1, 0.7, 0.2, 19.99, 0.3, 1e-3, 3.3, 7.77, 0.45, 1234.5, 0.06, 2.2]


def _events() -> pd.DataFrame:
    """Two users' events of two days, prices whose double sum depends on the order they are added in, and each
    user's last two events at the same instant (the event id decides which one is the last)."""
    rows = []
    for u, user in enumerate(("u1", "u2")):
        start = dt.datetime(2025, 3, 2, 9) + dt.timedelta(minutes=u)
        for i, price in enumerate(PRICES):
            rows.append(
                (
                    start + dt.timedelta(hours=2 * i),
                    user,
                    f"s{u}{i // 6}",
                    "view",
                    f"i{(i + u) % 5}",
                    f"c{i % 3}",
                    price,
                    None,
                    f"e{u}{i:02d}",
                )
            )
        last = start + dt.timedelta(hours=2 * len(PRICES))
        rows.append((last, user, f"s{u}9", "add_to_cart", "i1", "c1", 5.5, None, f"e{u}98"))
        rows.append((last, user, f"s{u}9", "view", "i2", "c2", 6.5, None, f"e{u}99"))
    frame = pd.DataFrame(rows, columns=list(CANONICAL_COLUMNS))
    return frame.assign(is_bot=False)


def _build(events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Features and candidates as of the end of DAY, on one thread: DuckDB adds the rows in the order they were
    inserted, so two orders of the same events show what depends on it."""
    with duckdb.connect(config={"threads": 1}) as conn:
        ensure_table(conn, "cleaned_events")
        conn.execute("INSERT INTO cleaned_events BY NAME SELECT * FROM events")
        for build in (build_user_features_day, build_item_features_day, build_candidates_day):
            assert build(conn, DAY) > 0
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY ALL").df()
            for table in ("user_features", "item_features", "ranking_candidates")
        }


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_features_and_candidates_are_the_same_for_any_order_of_the_events(order):
    events = _events()
    other = events.iloc[::-1] if order == "reversed" else events.sample(frac=1.0, random_state=3)
    first, second = _build(events), _build(other.reset_index(drop=True))
    for table in first:
        pd.testing.assert_frame_equal(first[table], second[table], check_exact=True, obj=table)
    users = first["user_features"].set_index("user_id")
    assert (users["last_event_is_cart"] == 0).all()  # e.g. e098 (cart) and e099 (view) at once: the view is last
    assert users.loc["u1", "mean_price_7d"] == pytest.approx((sum(PRICES) + 5.5 + 6.5) / 14, rel=1e-12)
