"""Course data: files equal the generator, splits are disjoint, tokenization is right."""

import json
import random
from pathlib import Path

import pytest
import torch

from lora_course.data import (
    REPO_DATA,
    answer_positions,
    collate,
    load_task,
    task_files,
    tokenize,
    write_task,
)
from lora_course.tasks import TASKS, Task, get_task, make_splits, sql, tickets


@pytest.mark.parametrize("task", list(TASKS))
def test_shipped_files_equal_what_the_generator_writes(task, tmp_path):
    write_task(task, tmp_path)
    for split in TASKS[task].splits:
        shipped = (REPO_DATA / task / f"{split}.jsonl").read_text()
        assert shipped == (tmp_path / task / f"{split}.jsonl").read_text(), (
            f"data/{task}/{split}.jsonl is stale: run `python -m lora_course.data`"
        )


def test_splits_have_their_sizes_and_share_no_message():
    data = load_task("tickets")
    assert {s: len(data[s]) for s in data} == {s: n for s, (n, _) in tickets.TASK.splits.items()}
    train, test = set(data["train"]["ticket"]), set(data["test"]["ticket"])
    assert not train & test and not train & set(data["validation"]["ticket"])


def test_every_answer_follows_the_schema():
    for row in load_task("tickets")["test"]:
        answer = json.loads(row["answer"])
        assert list(answer) == list(tickets.FIELDS)
        assert answer["product"] in tickets.PRODUCTS and answer["issue"] in tickets.ISSUES
        assert answer["order_id"] in row["ticket"]


def test_installed_without_the_repo_the_data_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setattr("lora_course.data.REPO_DATA", tmp_path / "absent")
    monkeypatch.setenv("LORA_COURSE_CACHE", str(tmp_path / "cache"))
    files = task_files("tickets")
    assert files["test"].startswith(str(tmp_path / "cache"))
    for split, path in files.items():  # the same examples as the repo's files, not just a path
        assert Path(path).read_text() == (REPO_DATA / "tickets" / f"{split}.jsonl").read_text()
    with pytest.raises(ValueError, match="unknown task"):
        task_files("poems")


def test_tasks_are_registered_by_name_and_an_unknown_name_lists_them():
    assert get_task("tickets") is tickets.TASK and get_task("sql") is sql.TASK
    with pytest.raises(ValueError, match=r"unknown task 'poems'; known tasks: tickets, sql"):
        get_task("poems")


def _toy_task(splits, draw):
    return Task("toy", "text", "Echo.", splits, draw, lambda p, a: {"same": p == a}, "same")


def test_make_splits_has_the_sizes_and_never_repeats_an_input_across_splits():
    # 30 possible texts for 10 + 5 + 5 examples: repeats are certain, and each must be skipped
    def draw(rng, split):
        return {"text": f"t{rng.randrange(30)}", "answer": split}

    splits = make_splits(_toy_task({"train": (10, 1), "validation": (5, 2), "test": (5, 3)}, draw))
    assert {s: len(rows) for s, rows in splits.items()} == {"train": 10, "validation": 5, "test": 5}
    texts = [row["text"] for rows in splits.values() for row in rows]
    assert len(texts) == len(set(texts)) == 20
    assert all(row["answer"] == split for split, rows in splits.items() for row in rows)


def test_make_splits_skips_rejected_draws_and_stays_seeded():
    # train takes only even numbers, test only odd ones: rejections decide the split
    def draw(rng, split):
        n = rng.randrange(1000)
        return None if (n % 2 == 1) == (split == "train") else {"text": str(n), "answer": ""}

    task = _toy_task({"train": (8, 0), "test": (8, 0)}, draw)  # the same seed for both
    splits = make_splits(task)
    assert all(int(r["text"]) % 2 == 0 for r in splits["train"])
    assert all(int(r["text"]) % 2 == 1 for r in splits["test"])
    assert make_splits(task) == splits  # the same seeds, the same examples
    rng = random.Random(0)
    evens = [n for n in (rng.randrange(1000) for _ in range(100)) if n % 2 == 0]
    assert [int(r["text"]) for r in splits["train"]] == list(dict.fromkeys(evens))[:8]


def test_make_splits_refuses_a_draw_that_rejects_everything():
    task = _toy_task({"train": (3, 0)}, lambda rng, split: None)
    with pytest.raises(RuntimeError, match="toy/train: 0 of 3 examples"):
        make_splits(task)


def test_scoring_counts_fields_and_rejects_invalid_json():
    gold = '{"product": "laptop", "issue": "damaged", "urgency": "high", "order_id": "123456"}'
    assert tickets.score(gold, gold)[tickets.TASK.main_metric]
    partly = tickets.score(gold.replace("high", "low"), gold)
    assert partly["product"] and not partly["urgency"] and not partly["exact"]
    assert tickets.score("{not json", gold) == dict.fromkeys(partly, False)
    assert not tickets.score("[1, 2]", gold)["valid_json"]


def test_labels_cover_exactly_the_answer(smollm2_tokenizer):
    row = tokenize(smollm2_tokenizer, "My laptop broke. Order 123456.", '{"a": 1}', "Be brief.")
    labelled = [
        t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
    ]
    assert smollm2_tokenizer.decode(labelled) == '{"a": 1}<|im_end|>'
    # the prompt + answer split must tokenize like the whole conversation does
    whole = smollm2_tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My laptop broke. Order 123456."},
            {"role": "assistant", "content": '{"a": 1}'},
        ],
        return_dict=True,
    )["input_ids"]
    assert whole[: len(row["input_ids"])] == row["input_ids"]


def test_collate_pads_and_masks():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_answer_positions_are_the_positions_before_each_answer_token():
    labels = torch.tensor([[-100, -100, 11, 12, -100], [-100, 21, 22, 23, 24]])
    keep, targets = answer_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    assert targets.tolist() == [11, 12, 21, 22, 23, 24]  # row by row, as hidden_states[keep]
    assert len(targets) == (labels[:, 1:] != -100).sum()  # the tokens the loss counts


def test_collate_adds_the_answer_positions_only_when_asked():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}]
    assert set(collate(rows, pad_id=0)) == {"input_ids", "attention_mask", "labels"}
    batch = collate(rows, pad_id=0, answer_logits_only=True)
    assert batch["logits_to_keep"].tolist() == [[True, True, False]]
    assert batch["shift_labels"].tolist() == [6, 7]


def test_a_task_is_tokenized_once_per_tokenizer(smollm2_tokenizer, monkeypatch):
    """fine_tune calls tokenized_task on every run; notebook 06 runs it eight times."""
    import lora_course.data as data

    calls = []
    real = data.tokenize_task
    monkeypatch.setattr(data, "tokenize_task", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    first = data.tokenized_task("sql", smollm2_tokenizer)
    assert data.tokenized_task("sql", smollm2_tokenizer) is first and calls == ["sql"]
    row = first["train"][0]
    assert row["labels"][-1] == row["input_ids"][-1] == smollm2_tokenizer.eos_token_id
