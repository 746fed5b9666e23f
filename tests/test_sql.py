"""The question -> SQL task: shipped files, held-out phrasings, scoring by executing the queries."""

import random
import re

import pytest

from lora_course.data import load_task
from lora_course.tasks import sql


def test_no_test_question_is_a_training_question_with_another_prefix():
    data = load_task("sql")
    bodies = {split: {_body(q) for q in data[split]["question"]} for split in data}
    for split, found in bodies.items():
        assert all(sql.held_out(body) == (split != "train") for body in found), split
    assert not {b.lower() for b in bodies["train"]} & {b.lower() for b in bodies["test"]}
    assert {s: len(data[s]) for s in data} == {s: n for s, (n, _) in sql.TASK.splits.items()}


def _body(question: str) -> str:
    """The question without its prefix ("Ticket #123: ", ...): the part that decides the split."""
    patterns = [re.escape(p).replace(r"\{other_year\}", r"\d+").replace(r"\{ext\}", r"\d+")
                for p in sql.PREFIXES if p]  # fmt: skip
    match = re.match("|".join(patterns), question)
    return question[match.end() :] if match else question


def test_every_gold_query_runs_and_returns_something():
    for row in load_task("sql")["test"]:
        rows = sql.run_query(row["answer"])
        assert rows and any(v not in (None, 0) for r in rows for v in r), row


def test_scoring_compares_results_not_text():
    gold = "SELECT name FROM customers WHERE city = 'Oslo'"
    assert sql.score("SELECT c.name FROM customers AS c WHERE c.city = 'Oslo';", gold)["correct"]
    assert sql.score("SELECT name FROM customers WHERE city='Oslo' ORDER BY name", gold)["correct"]
    wrong = sql.score("SELECT name FROM customers WHERE city = 'Lyon'", gold)
    assert wrong == {"executes": True, "correct": False}
    assert sql.score("SELECT * FROM customers WHERE city = 'Oslo'", gold) == wrong


def test_order_matters_only_when_the_gold_query_orders():
    gold = "SELECT name FROM products WHERE category = 'audio' ORDER BY price DESC"
    assert sql.score(gold, gold)["correct"]
    assert not sql.score(gold.replace("DESC", "ASC"), gold)["correct"]


@pytest.mark.parametrize(
    "prediction",
    [
        "SELECT nme FROM customers",  # unknown column
        "SELEC name FROM customers",  # syntax error
        "DROP TABLE customers",  # the database is read-only
        "SELECT 1; SELECT 2",  # two statements
        "SELECT COUNT(*) FROM orders a, orders b, orders c, orders d",  # runs away: stopped
        "",
    ],
)
def test_bad_predictions_fail_without_harming_the_database(prediction):
    assert sql.score(prediction, "SELECT COUNT(*) FROM customers") == {
        "executes": False,
        "correct": False,
    }
    assert sql.run_query("SELECT COUNT(*) FROM customers") == [(len(sql.NAMES),)]


def test_a_rejected_draw_uses_the_same_random_numbers_as_an_accepted_one():
    # the held-out and informative-rows filters must not consume randomness: the files depend on it
    accepted = set()
    for seed in range(20):
        train_rng, test_rng = random.Random(seed), random.Random(seed)
        for_train, for_test = sql.draw(train_rng, "train"), sql.draw(test_rng, "test")
        assert train_rng.getstate() == test_rng.getstate()
        assert for_train is None or for_test is None  # a body is held out or it is not
        accepted |= {split for split, x in (("train", for_train), ("test", for_test)) if x}
    assert accepted == {"train", "test"}
