"""Scoring by generation: batched left-padded greedy decoding equals one prompt at a time."""

import pytest

from lora_course import generate_reply, tiny_llama
from lora_course.evaluation import evaluate_task, generate_batch


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
    rows = [{"question": "How many customers?", "answer": "SELECT COUNT(*) FROM customers"}] * 3
    answers = iter(["SELECT COUNT(*) FROM customers", "SELECT COUNT(id) FROM customers", "nope"])
    monkeypatch.setattr(
        "lora_course.evaluation.generate_batch",
        lambda model, tok, prompts, system, **kw: [next(answers) for _ in prompts],
    )
    score = evaluate_task(tiny, smollm2_tokenizer, rows, "sql", progress=False)
    assert score.accuracy == pytest.approx(2 / 3)
    assert score.rates == {"executes": pytest.approx(2 / 3), "correct": pytest.approx(2 / 3)}
    assert "sql: 66.7% on 3 examples" in str(score)
