import duckdb
import pytest

from assets.logic.lifecycle import record_alias_change, rollback_target


def test_rollback_returns_to_the_version_the_alias_replaced():
    with duckdb.connect() as conn:
        assert rollback_target(conn, "m", "champion", 1) is None  # no history at all
        record_alias_change(conn, "m", "champion", None, 1, "first to beat the baselines", "champion_promotion")
        assert rollback_target(conn, "m", "champion", 1) is None  # the first champion on record
        record_alias_change(conn, "m", "champion", 1, 3, "beats v1 by 4%", "champion_promotion")
        record_alias_change(conn, "other", "champion", 5, 3, "unrelated model", "shopseq promote")
        assert rollback_target(conn, "m", "champion", 3) == 1
        history = conn.execute(
            "SELECT from_version, to_version, changed_by FROM alias_history WHERE model_name = 'm' ORDER BY changed_at"
        ).fetchall()
        assert history == [(None, 1, "champion_promotion"), (1, 3, "champion_promotion")]


def _rollback(conn, current: int) -> int:
    target = rollback_target(conn, "m", "champion", current)
    record_alias_change(conn, "m", "champion", current, target, "rollback", "shopseq rollback")
    return target


def test_rollbacks_walk_back_the_champions_and_never_return_to_a_version_rolled_away_from():
    with duckdb.connect() as conn:
        record_alias_change(conn, "m", "champion", None, 1, "first to beat the baselines", "champion_promotion")
        record_alias_change(conn, "m", "champion", 1, 2, "beats v1", "champion_promotion")
        record_alias_change(conn, "m", "champion", 2, 3, "beats v2", "champion_promotion")
        assert _rollback(conn, 3) == 2
        assert _rollback(conn, 2) == 1  # not back to v3, which was rolled back away from
        with pytest.raises(
            ValueError, match=r"m: nothing to roll back to: every earlier champion \(v2, v3\) was rolled back away from"
        ):
            rollback_target(conn, "m", "champion", 1)
        # Promoted by name, v3 is a champion again: a rollback from it returns to v1, the champion it replaced
        # (v2 stays rolled away from).
        record_alias_change(conn, "m", "champion", 1, 3, "fixed upstream data", "shopseq promote")
        assert _rollback(conn, 3) == 1
        with pytest.raises(ValueError, match="nothing to roll back to"):
            rollback_target(conn, "m", "champion", 1)
        # A version moved to outside shopseq (MLflow UI, recorded by the sensor) re-instates it too.
        record_alias_change(conn, "m", "champion", 1, 2, "moved outside shopseq", "champion_alias_sensor")
        assert rollback_target(conn, "m", "champion", 2) == 1
