"""Course data: files equal the generator, splits are disjoint, tokenization is right."""

import json

import pytest
import torch

from lora_course import tickets
from lora_course.data import (
    REPO_DATA,
    TASKS,
    collate,
    load_task,
    task_files,
    tokenize,
    write_task,
)


@pytest.mark.parametrize("task", list(TASKS))
def test_shipped_files_equal_what_the_generator_writes(task, tmp_path):
    write_task(task, tmp_path)
    for split in TASKS[task].SPLITS:
        shipped = (REPO_DATA / task / f"{split}.jsonl").read_text()
        assert shipped == (tmp_path / task / f"{split}.jsonl").read_text(), (
            f"data/{task}/{split}.jsonl is stale: run `python -m lora_course.data`"
        )


def test_splits_have_their_sizes_and_share_no_message():
    data = load_task("tickets")
    assert {s: len(data[s]) for s in data} == {s: n for s, (n, _) in tickets.SPLITS.items()}
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
    with pytest.raises(ValueError, match="unknown task"):
        task_files("poems")


def test_scoring_counts_fields_and_rejects_invalid_json():
    gold = '{"product": "laptop", "issue": "damaged", "urgency": "high", "order_id": "123456"}'
    assert tickets.score(gold, gold)["exact"]
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
