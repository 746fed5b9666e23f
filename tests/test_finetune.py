"""The PEFT + Trainer recipe: per-device choices, answer-only batches, loss going down, caching."""

import pytest
import torch

from lora_course import choose_precision, tiny_llama
from lora_course.finetune import (
    AnswerOnlyCollator,
    FinetuneConfig,
    cached_adapter,
    fine_tune,
    training_settings,
)

CPU = choose_precision(cuda_available=False)
T4 = choose_precision(cuda_available=True, capability=(7, 5), device_name="Tesla T4")
A100 = choose_precision(cuda_available=True, capability=(8, 0), device_name="A100")


@pytest.mark.parametrize("precision", [T4, A100])
def test_a_gpu_gets_the_workshop_recipe_in_its_own_precision(precision, monkeypatch):
    monkeypatch.setenv("LORA_COURSE_FAST", "1")  # fast mode is for the CPU only
    config = FinetuneConfig.for_runtime("sql", precision)
    assert (config.task, config.steps, config.batch_size, config.eval_examples) == (
        "sql",
        300,
        32,
        200,
    )
    settings = training_settings(config, precision, "out")
    assert settings["fp16"] == (precision is T4) and settings["bf16"] == (precision is A100)
    assert not settings["use_cpu"]


@pytest.mark.parametrize(("fast", "steps"), [("0", 100), ("1", 12)])
def test_the_cpu_recipe_depends_on_fast_mode(fast, steps, monkeypatch):
    monkeypatch.setenv("LORA_COURSE_FAST", fast)
    config = FinetuneConfig.for_runtime(precision=CPU, r=4)
    assert config.steps == steps and config.r == 4
    settings = training_settings(config, CPU, "out")
    assert settings["use_cpu"] and not settings["fp16"] and not settings["bf16"]
    assert config.key() != FinetuneConfig.for_runtime(precision=CPU, r=8).key()


def test_collator_pads_and_masks_everything_but_the_answer():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "text": "dropped"},
            {"input_ids": [8], "labels": [8]}]  # fmt: skip
    batch = AnswerOnlyCollator(pad_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.fixture
def tiny_with_tokenizer(smollm2_tokenizer):
    """A tiny Llama that speaks SmolLM2's vocabulary (seconds to train on the real task)."""
    return tiny_llama(seed=0, vocab_size=len(smollm2_tokenizer), max_position_embeddings=256)


def test_trainer_recipe_lowers_the_loss_and_trains_only_lora(
    tiny_with_tokenizer, smollm2_tokenizer
):
    config = FinetuneConfig(steps=20, batch_size=4, lr=1e-2)  # all linear layers
    peft_model, losses, seconds = fine_tune(tiny_with_tokenizer, smollm2_tokenizer, config, CPU)
    assert len(losses) == 20 and seconds > 0
    # a random tiny model starts at ~ln(49152) = 10.8; 20 LoRA steps move it clearly, not far
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_cached_adapter_trains_once_per_recipe_and_base(
    tiny_with_tokenizer, smollm2_tokenizer, tmp_path, monkeypatch
):
    config = FinetuneConfig(steps=2, batch_size=2, targets=("q_proj",))
    first = cached_adapter(tiny_with_tokenizer, smollm2_tokenizer, config, cache=tmp_path)
    assert (first / "adapter_config.json").is_file() and (first / "training.json").is_file()
    assert not any("lora_" in n for n, _ in tiny_with_tokenizer.named_parameters())

    def no_training(*args, **kwargs):
        raise AssertionError("the cached adapter should have been reused")

    monkeypatch.setattr("lora_course.finetune.fine_tune", no_training)
    assert cached_adapter(tiny_with_tokenizer, smollm2_tokenizer, config, cache=tmp_path) == first
    with torch.no_grad():
        tiny_with_tokenizer.lm_head.weight[0, 0] += 1.0  # another base: another adapter
    with pytest.raises(AssertionError, match="should have been reused"):
        cached_adapter(tiny_with_tokenizer, smollm2_tokenizer, config, cache=tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "poems"}, "unknown task"),
        ({"targets": ("q_proj", "qkv")}, "targets must be among"),
        ({"targets": ()}, "targets must be among"),
        ({"r": 0}, "r must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"lr": 0.0}, "lr must be positive"),
    ],
)
def test_bad_recipes_are_refused_with_a_reason(settings, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**settings)


def test_out_of_memory_says_which_setting_to_lower(
    tiny_with_tokenizer, smollm2_tokenizer, monkeypatch
):
    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("transformers.Trainer.train", no_memory)
    config = FinetuneConfig(steps=300, batch_size=32, targets=("q_proj",))
    with pytest.raises(torch.OutOfMemoryError, match="batch_size=16, steps=600"):
        fine_tune(tiny_with_tokenizer, smollm2_tokenizer, config, CPU)
