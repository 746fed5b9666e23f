"""Scoring: batched greedy decoding equals one prompt at a time; teacher forcing agrees with it."""

import pytest
import torch

from lora_course import generate_reply, tiny_llama
from lora_course.data import collate
from lora_course.devices import Precision
from lora_course.evaluation import answer_scores, evaluate_task, generate_batch
from lora_course.tasks import sql
from lora_course.training import evaluate_loss


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


def _greedy_rows(model, prompts, new_tokens):
    """Rows whose answers are the model's own greedy continuation of each prompt."""
    rows = []
    for prompt in prompts:
        ids = torch.tensor([prompt])  # (1, T)
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
        answer = out[0, len(prompt) :].tolist()
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return rows


def test_answer_scores_say_exact_where_greedy_decoding_writes_the_answer():
    model = tiny_llama(seed=0)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 128, (n,), generator=g).tolist() for n in (3, 7, 5, 9)]
    rows = _greedy_rows(model, prompts, new_tokens=6)
    assert answer_scores(model, rows, pad_id=0).exact == [True] * 4
    wrong = [dict(row) for row in rows]
    for i, position in ((1, -1), (3, -6)):  # the last answer token; the first one
        token = wrong[i]["labels"][position]
        wrong[i] = {
            "input_ids": wrong[i]["input_ids"][:position] + [token % 127 + 1]
            + wrong[i]["input_ids"][len(wrong[i]["input_ids"]) + position + 1 :],
            "labels": wrong[i]["labels"][:position] + [token % 127 + 1]
            + wrong[i]["labels"][len(wrong[i]["labels"]) + position + 1 :],
        }  # fmt: skip
    scores = answer_scores(model, wrong, pad_id=0, batch_size=3)  # a batch boundary inside
    assert scores.exact == [True, False, True, False] and scores.accuracy == 0.5
    one_at_a_time = [answer_scores(model, [row], pad_id=0) for row in wrong]
    assert scores.exact == [s.exact[0] for s in one_at_a_time]
    assert scores.loss == pytest.approx(evaluate_loss(model, wrong, pad_id=0), rel=1e-6)
    with pytest.raises(ValueError, match="no rows"):
        answer_scores(model, [], pad_id=0)


def test_answer_scores_loss_is_the_models_own_loss_under_autocast():
    model = tiny_llama(seed=0)
    rows = _greedy_rows(model, [[5, 6, 7, 8]], new_tokens=4)
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert answer_scores(model, rows, pad_id=0).loss == pytest.approx(expected, rel=1e-5)
    bf16 = Precision("cpu", torch.float32, torch.bfloat16, False, "test")
    assert answer_scores(model, rows, 0, precision=bf16).loss == pytest.approx(expected, rel=0.05)


def test_answer_scores_keep_the_logits_of_every_answer_token_when_asked():
    model = tiny_llama(seed=0)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 128, (n,), generator=g).tolist() for n in (4, 6, 3)]
    rows = _greedy_rows(model, prompts, new_tokens=5)
    assert answer_scores(model, rows, pad_id=0).logits is None  # not kept by default
    scores = answer_scores(model, rows, pad_id=0, batch_size=2, keep_logits=True)
    targets = torch.tensor([t for row in rows for t in row["labels"] if t != -100])
    assert scores.logits.shape == (len(targets), 128)  # (answer tokens, vocab), row by row
    loss = torch.nn.functional.cross_entropy(scores.logits, targets).item()
    assert loss == pytest.approx(scores.loss, rel=1e-5)
    assert torch.equal(scores.logits.argmax(-1), targets)  # greedy rows: every answer token top


def test_kl_from_base_is_zero_for_the_same_model_and_grows_with_a_change():
    from lora_course.evaluation import kl_from_base

    base = tiny_llama(seed=0)
    rows = _greedy_rows(base, [[3, 4, 5], [9, 8, 7, 6, 5]], new_tokens=4)
    assert kl_from_base(base, base, rows, pad_id=0) == pytest.approx(0.0, abs=1e-6)
    nudged, moved = tiny_llama(seed=0), tiny_llama(seed=0)
    with torch.no_grad():
        nudged.lm_head.weight.mul_(1.1)
        moved.lm_head.weight.mul_(2.0)
    small, large = kl_from_base(base, nudged, rows, 0), kl_from_base(base, moved, rows, 0)
    assert 0 < small < large
    batch = collate(rows[:1], pad_id=0)  # by hand, on the first row: its 4 answer positions
    with torch.no_grad():
        p = torch.log_softmax(base(**batch).logits[0, 2:6], -1)
        q = torch.log_softmax(nudged(**batch).logits[0, 2:6], -1)
    by_hand = (p.exp() * (p - q)).sum(-1).mean().item()
    assert kl_from_base(base, nudged, rows[:1], 0) == pytest.approx(by_hand, rel=1e-3)
