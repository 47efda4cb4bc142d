import duckdb

from assets.logic.lifecycle import record_alias_change, rollback_target


def test_rollback_returns_to_the_version_the_alias_replaced():
    with duckdb.connect() as conn:
        assert rollback_target(conn, "m", "champion", 1) is None  # no history at all
        record_alias_change(conn, "m", "champion", None, 1, "first to beat the baselines", "champion_promotion")
        record_alias_change(conn, "m", "champion", 1, 3, "beats v1 by 4%", "champion_promotion")
        record_alias_change(conn, "other", "champion", 5, 3, "unrelated model", "shopseq promote")
        assert rollback_target(conn, "m", "champion", 3) == 1
        assert rollback_target(conn, "m", "champion", 1) is None  # the first champion on record
        record_alias_change(conn, "m", "champion", 3, 1, "rollback", "shopseq rollback")
        assert rollback_target(conn, "m", "champion", 1) == 3  # rolling back a rollback returns to 3
        history = conn.execute("SELECT from_version, to_version, changed_by FROM alias_history WHERE model_name = 'm' ORDER BY changed_at").fetchall()
        assert history == [(None, 1, "champion_promotion"), (1, 3, "champion_promotion"), (3, 1, "shopseq rollback")]
