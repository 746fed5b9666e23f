"""TRL's SFTTrainer on the course's task (notebook 11): the marked template, the loss masks of the
three dataset layouts, and the same rows, order and loss as the course's own Trainer recipe."""

import copy

import pytest
import torch

from lora_course import choose_precision, tiny_llama
from lora_course.data import IGNORE_INDEX, tokenize, tokenized_task
from lora_course.finetune import FinetuneConfig, make_trainer
from lora_course.sft import (
    SMOLLM2_TRAINING_TEMPLATE,
    STYLES,
    answer_token_counts,
    assistant_mask,
    chat_rows,
    loss_mask_problems,
    loss_token_counts,
    sft_trainer,
    training_chat_template,
    training_order,
)

CPU = choose_precision(cuda_available=False, cpu_bf16="")
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "You file tickets."},
        {"role": "user", "content": "My order is late."},
        {"role": "assistant", "content": '{"product": "order"}'},
        {"role": "user", "content": "And the refund?"},
        {"role": "assistant", "content": "Two lines\nof reply."},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_marked_template_renders_smollm2s_text(smollm2_tokenizer, messages):
    template = training_chat_template(smollm2_tokenizer)
    for generation in (False, True):
        prompt = messages[:-1] if generation else messages
        ours = smollm2_tokenizer.apply_chat_template(
            prompt, chat_template=template, tokenize=False, add_generation_prompt=generation
        )
        theirs = smollm2_tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=generation
        )
        assert ours == theirs


def test_another_template_is_refused(smollm2_tokenizer):
    other = copy.deepcopy(smollm2_tokenizer)
    other.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="not SmolLM2's"):
        training_chat_template(other)
    assert "{% generation %}" in SMOLLM2_TRAINING_TEMPLATE


def test_the_mask_is_the_assistants_words_and_end_of_turn(smollm2_tokenizer):
    messages = CONVERSATIONS[1]
    ids = smollm2_tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
    mask = assistant_mask(smollm2_tokenizer, messages)
    assert len(mask) == len(ids)
    marked = smollm2_tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert marked == '{"product": "order"}<|im_end|>Two lines\nof reply.<|im_end|>'


def test_one_turn_masks_what_notebook_05_trains(smollm2_tokenizer):
    """The mask of a system + user + assistant conversation = data.tokenize's answer labels."""
    system, prompt, answer = "You file tickets.", "My order is late.", '{"product": "order"}'
    row = tokenize(smollm2_tokenizer, prompt, answer, system)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer}]  # fmt: skip
    mask = assistant_mask(smollm2_tokenizer, messages)
    trained = [label != IGNORE_INDEX for label in row["labels"]]
    assert mask[: len(trained)] == [int(t) for t in trained] and sum(mask) == sum(trained)


def test_loss_mask_problems_names_the_mistake():
    assert loss_mask_problems([3, 5], [3, 5]) == []
    problems = loss_mask_problems([0, 9, 2], [3, 5, 4])
    assert "all-zero" in problems[0] and "prompt" in problems[1] and "not trained" in problems[2]
    with pytest.raises(ValueError, match="2 counts for 3"):
        loss_mask_problems([1, 2], [1, 2, 3])


def test_chat_rows_refuses_an_unknown_style():
    with pytest.raises(ValueError, match="style must be one of"):
        chat_rows("tickets", "train", "chat")
    assert set(chat_rows("tickets", "validation", "prompt-completion").column_names) == {
        "prompt",
        "completion",
    }


@pytest.fixture
def tiny_with_tokenizer(smollm2_tokenizer):
    return tiny_llama(seed=0, vocab_size=len(smollm2_tokenizer), max_position_embeddings=256)


PEEK = FinetuneConfig(steps=2, batch_size=4, r=4, targets=("q_proj", "v_proj"), lr=1e-3)


@pytest.mark.slow  # builds three SFTTrainers (tokenizing 8 rows each)
def test_each_layout_gives_its_mask(tiny_with_tokenizer, smollm2_tokenizer, tmp_path):
    answers = answer_token_counts(smollm2_tokenizer, "tickets", "train")
    expected = [answers[i] for i in training_order(smollm2_tokenizer, PEEK)]
    counts = {}
    for style in STYLES:
        tiny = copy.deepcopy(tiny_with_tokenizer)
        trainer = sft_trainer(tiny, smollm2_tokenizer, PEEK, tmp_path / style, style=style,
                              precision=CPU, progress=False)  # fmt: skip
        counts[style] = loss_token_counts(trainer)
    assert counts["assistant-only"] == expected
    assert counts["prompt-completion"] == [n + 1 for n in expected], "the newline after <|im_end|>"
    assert all(got > 2 * want for got, want in zip(counts["messages"], expected, strict=True))


@pytest.mark.slow
def test_sft_trains_the_rows_and_loss_of_the_course_trainer(
    tiny_with_tokenizer, smollm2_tokenizer, tmp_path
):
    """Same rows, same order, same first loss: the SFTTrainer is the course's recipe with TRL's
    data handling (fp32 on a CPU: equal up to the summation order of the output layer)."""
    from peft import get_peft_model

    rows = tokenized_task("tickets", smollm2_tokenizer)["train"]
    torch.manual_seed(PEEK.seed)
    peft_model = get_peft_model(copy.deepcopy(tiny_with_tokenizer), PEEK.lora_config())
    ours = make_trainer(peft_model, smollm2_tokenizer, rows, PEEK, CPU, tmp_path / "ours",
                        progress=False)  # fmt: skip
    theirs = sft_trainer(copy.deepcopy(tiny_with_tokenizer), smollm2_tokenizer, PEEK,
                         tmp_path / "sft", precision=CPU, progress=False)  # fmt: skip
    for a, b in zip(ours.get_train_dataloader(), theirs.get_train_dataloader(), strict=True):
        for row_a, row_b, mask_a, mask_b in zip(
            a["input_ids"], b["input_ids"], a["attention_mask"], b["attention_mask"], strict=True
        ):
            newline = smollm2_tokenizer("\n", add_special_tokens=False)["input_ids"]
            # TRL keeps the template's newline after <|im_end|>, outside the loss
            assert row_a[mask_a.bool()].tolist() + newline == row_b[mask_b.bool()].tolist()
    batch = next(iter(theirs.get_train_dataloader()))
    mine = next(iter(ours.get_train_dataloader()))
    with torch.no_grad():
        theirs_loss = theirs.model(**batch).loss
        ours_loss = ours.model(**mine).loss
    assert torch.allclose(theirs_loss, ours_loss, atol=1e-5), (theirs_loss, ours_loss)
