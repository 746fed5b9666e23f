"""Scoring by generation: batched left-padded greedy decoding equals one prompt at a time."""

import pytest

from lora_course import generate_reply, tiny_llama
from lora_course.evaluation import evaluate_task, generate_batch
from lora_course.tasks import sql


@pytest.fixture
def tiny(smollm2_tokenizer):
    return tiny_llama(seed=0, vocab_size=len(smollm2_tokenizer), max_position_embeddings=256)


def test_batched_generation_matches_one_prompt_at_a_time(tiny, smollm2_tokenizer):
    prompts = ["Hi", "A much longer prompt, which makes the others padded on the left."]
    batched = generate_batch(tiny, smollm2_tokenizer, prompts, "Be brief.", max_new_tokens=8,
                             progress=False)  # fmt: skip
    single = [generate_reply(tiny, smollm2_tokenizer, p, max_new_tokens=8, system="Be brief.")
              for p in prompts]  # fmt: skip
    assert batched == single


def test_evaluate_task_scores_every_row_with_the_tasks_scorer(tiny, smollm2_tokenizer, monkeypatch):
    system = sql.TASK.system_prompt
    count, city = "SELECT COUNT(*) FROM customers", "SELECT city FROM customers WHERE id = 1"
    cases = [  # question, gold query, what the model "writes" for it under the task's prompt
        ("How many customers?", count, count),
        ("Count the customers.", count, "SELECT COUNT(id) FROM customers"),
        ("Customer 1's city?", city, "SELECT nme FROM customers"),
    ]
    rows = [{"question": question, "answer": gold} for question, gold, _ in cases]
    replies = {(question, system): reply for question, _, reply in cases}
    monkeypatch.setattr(
        "lora_course.evaluation.generate_batch",
        lambda model, tok, prompts, system, **kw: [replies[(p, system)] for p in prompts],
    )
    score = evaluate_task(tiny, smollm2_tokenizer, rows, "sql", progress=False)
    assert score.predictions == [reply for _, _, reply in cases]
    assert score.accuracy == pytest.approx(2 / 3)  # COUNT(id) is right: rows count, not text
    assert score.rates == {"executes": pytest.approx(2 / 3), "correct": pytest.approx(2 / 3)}
    assert "sql: 66.7% on 3 examples" in str(score)
