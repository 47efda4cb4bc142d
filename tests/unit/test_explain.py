import datetime as dt

import duckdb
import pytest

from resources import Warehouse
from workflows.explain import explain


def test_a_home_that_served_only_item_lists_is_told_why_a_user_has_nothing_to_explain(tmp_path):
    """A home of anonymous sessions publishes item_next_items only: explain says it holds no per-user rows, and
    what it does hold, instead of that nothing was served."""
    warehouse = Warehouse(home=str(tmp_path))
    with duckdb.connect(warehouse.path) as conn:
        conn.execute("CREATE TABLE item_next_items AS SELECT DATE '2014-04-06' AS as_of_date, 'a' AS item_id")
    with pytest.raises(ValueError, match=r"holds no recommendations or next-action predictions: .*item_next_items"):
        explain(warehouse, None, None, "s1", dt.date(2014, 4, 6))
