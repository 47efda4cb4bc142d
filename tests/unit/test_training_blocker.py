"""Which models this home's data can train: labels of one class (in either split) or no rows say why not."""

import duckdb
import pytest

from assets.logic.catalogue import NEXT_EVENT_MODEL, RANKER_MODEL, training_blocker


@pytest.fixture
def conn():
    with duckdb.connect() as c:
        yield c


def _next_action(conn, train_labels, holdout_labels):
    rows = [("train", v) for v in train_labels] + [("holdout", v) for v in holdout_labels]
    conn.execute("CREATE OR REPLACE TABLE next_action_training_set (split VARCHAR, label_purchase INTEGER)")
    conn.executemany("INSERT INTO next_action_training_set VALUES (?, ?)", rows)


def test_a_next_action_model_trains_on_enough_of_both_classes_in_both_splits(conn):
    _next_action(conn, [0, 1] * 10, [1, 0] * 10)
    assert training_blocker(conn, "shopseq_next_purchase", "UTC") is None


def test_a_handful_of_positives_is_too_few_to_learn_or_measure(conn):
    _next_action(conn, [0, 1] * 10, [1] * 3 + [0] * 17_000)
    assert "only 3 of the 17,003 rows of the holdout split have label_purchase = 1" in training_blocker(
        conn, "shopseq_next_purchase", "UTC"
    )


@pytest.mark.parametrize(
    "train, holdout, says",
    [
        ([0, 0, 0], [0, 1], "label_purchase is 0 in all 3 rows of the train split: no user purchased"),
        ([0, 1, 0], [1, 1], "label_purchase is 1 in all 2 rows of the holdout split: every user purchased"),
        ([0, 1] * 10, [], "has no holdout rows"),
    ],
)
def test_a_next_action_model_with_one_class_says_why(conn, train, holdout, says):
    _next_action(conn, train, holdout)
    assert says in training_blocker(conn, "shopseq_next_purchase", "UTC")


def test_the_next_event_model_needs_two_event_types(conn):
    conn.execute(
        "CREATE TABLE next_event_training_set AS SELECT * FROM (VALUES ('train', 'view'), ('train', 'view'), "
        "('holdout', 'view'), ('holdout', 'purchase')) t(split, next_type)"
    )
    assert "is a view" in training_blocker(conn, NEXT_EVENT_MODEL, "UTC")


def test_the_ranker_needs_users_who_come_back(conn):
    conn.execute("CREATE TABLE ranker_training_set (split VARCHAR, as_of_date DATE)")
    conn.execute("ALTER TABLE ranker_training_set ADD COLUMN user_id VARCHAR")
    conn.execute("INSERT INTO ranker_training_set VALUES ('holdout', '2025-03-01', 'u1')")
    assert "come back the next day" in training_blocker(conn, RANKER_MODEL, "UTC")
