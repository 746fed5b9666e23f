"""The PEFT + Trainer recipe: per-device choices, answer-only batches, loss going down, caching."""

import copy
import dataclasses
import statistics
from pathlib import Path

import pytest
import torch

from lora_course import choose_precision, tiny_llama
from lora_course.finetune import (
    WORKLOADS,
    AnswerOnlyCollator,
    FinetuneConfig,
    Workload,
    cached_adapter,
    fine_tune,
    length_grouped_order,
    make_trainer,
    padding_share,
    training_settings,
)
from lora_course.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]

CPU = choose_precision(cuda_available=False, cpu_bf16="")
CPU_BF16 = choose_precision(cuda_available=False, cpu_bf16="avx512_bf16")
DEVICES = {
    "CPU": CPU,
    "CPU bf16": CPU_BF16,
    "T4": choose_precision(cuda_available=True, capability=(7, 5), device_name="Tesla T4"),
    "L4": choose_precision(cuda_available=True, capability=(8, 9), device_name="NVIDIA L4"),
    "A100": choose_precision(cuda_available=True, capability=(8, 0), device_name="A100"),
    "H100": choose_precision(cuda_available=True, capability=(9, 0), device_name="H100"),
}


def _sizes(config):
    return Workload(config.steps, config.batch_size, config.eval_examples)


@pytest.mark.parametrize(
    ("device", "fast", "runtime"),
    [("CPU", "0", "cpu"), ("CPU", "1", "fast"), ("CPU bf16", "0", "cpu"), ("T4", "0", "cuda"),
     ("L4", "0", "cuda"), ("A100", "0", "cuda"), ("H100", "0", "cuda"), ("H100", "1", "fast")],
)  # fmt: skip
def test_fast_mode_decides_the_sizes_first_then_gpu_or_cpu(device, fast, runtime, monkeypatch):
    monkeypatch.setenv("LORA_COURSE_FAST", fast)  # CI on a GPU machine must stay small
    for workload, sizes in WORKLOADS.items():
        config = FinetuneConfig.for_runtime("sql", DEVICES[device], workload=workload)
        assert (config.task, _sizes(config)) == ("sql", sizes[runtime]), workload
    config = FinetuneConfig.for_runtime(precision=DEVICES[device], r=4, alpha=8, steps=7)
    assert (config.r, config.alpha, config.steps) == (4, 8, 7), "explicit settings win"
    with pytest.raises(ValueError, match="unknown workload 'marathon'; choose from recipe"):
        FinetuneConfig.for_runtime("tickets", DEVICES[device], workload="marathon")


def test_workloads_shrink_from_gpu_to_cpu_to_ci_and_fit_the_test_split():
    smallest_test_split = min(task.splits["test"][0] for task in TASKS.values())
    examples = {  # training examples seen: steps x batch size
        name: {runtime: w.steps * w.batch_size for runtime, w in sizes.items()}
        for name, sizes in WORKLOADS.items()
    }
    for name, sizes in WORKLOADS.items():
        assert examples[name]["cuda"] > examples[name]["cpu"] > examples[name]["fast"], name
        # notebooks score test.select(range(eval_examples)): more would raise an IndexError
        assert all(w.eval_examples <= smallest_test_split for w in sizes.values()), name
    assert all(examples["comparison"][rt] < examples["recipe"][rt] for rt in examples["recipe"])


@pytest.mark.parametrize(
    ("device", "bf16", "fp16"),
    [("CPU", False, False), ("CPU bf16", True, False), ("T4", False, True), ("L4", True, False),
     ("A100", True, False), ("H100", True, False)],
)  # fmt: skip
def test_the_trainer_is_told_each_devices_precision(device, bf16, fp16):
    settings = training_settings(FinetuneConfig(), DEVICES[device], "out")
    assert (settings["bf16"], settings["fp16"]) == (bf16, fp16)
    on_cpu = device.startswith("CPU")
    assert settings["use_cpu"] == on_cpu and settings["dataloader_pin_memory"] == (not on_cpu)


def test_make_trainer_hands_the_recipe_to_a_real_trainer(tiny_with_tokenizer, smollm2_tokenizer,
                                                         tmp_path):  # fmt: skip
    config = FinetuneConfig(steps=7, batch_size=3, lr=1e-3, seed=5)
    args = make_trainer(tiny_with_tokenizer, smollm2_tokenizer, [], config, CPU, tmp_path).args
    assert (args.max_steps, args.per_device_train_batch_size) == (7, 3)
    assert (args.learning_rate, args.seed, args.data_seed) == (1e-3, 5, 5)
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert args.train_sampling_strategy == "sequential", "the rows come in length_grouped_order"


def test_the_trainer_shows_one_bar_and_no_log_line_per_step(
    tiny_with_tokenizer, smollm2_tokenizer, tmp_path, capsys
):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = make_trainer(tiny_with_tokenizer, smollm2_tokenizer, [], FinetuneConfig(), CPU,
                           tmp_path)  # fmt: skip
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    bars = [c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)]
    assert len(bars) == 1 and PrinterCallback not in kinds
    assert not any(k.__name__ == "NotebookProgressCallback" for k in kinds)
    bars[0].on_log(trainer.args, trainer.state, trainer.control, logs={"loss": 1.0})
    assert capsys.readouterr() == ("", ""), "a logged loss prints nothing (it stays in log_history)"
    quiet = make_trainer(tiny_with_tokenizer, smollm2_tokenizer, [], FinetuneConfig(), CPU,
                         tmp_path, progress=False)  # fmt: skip
    quiet_kinds = [type(c) for c in quiet.callback_handler.callbacks]
    assert not any(issubclass(k, (ProgressCallback, PrinterCallback)) for k in quiet_kinds)


def test_padding_share_counts_what_each_batch_pads_to_its_longest_row():
    assert padding_share([5, 5, 5, 5], 2, "random") == 0.0
    assert padding_share([1, 3], 2, "random") == pytest.approx(1 - 4 / 6)
    assert padding_share([1, 3], 1, "grouped") == 0.0
    lengths = torch.randint(60, 140, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    grouped, shuffled = (padding_share(lengths, 8, order) for order in ("grouped", "random"))
    assert grouped < 0.1 < 0.2 < shuffled, (grouped, shuffled)  # measured: 8.0% and 24.0%
    assert padding_share(lengths, 8, "random", seed=1) != shuffled, "the seed draws the order"
    with pytest.raises(ValueError, match="order must be 'random' or 'grouped', got 'sorted'"):
        padding_share(lengths, 8, "sorted")


def test_length_grouped_batches_come_in_random_order_and_cover_the_epochs():
    lengths = torch.randint(20, 200, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    order = length_grouped_order(lengths, 8, steps=300, seed=0)  # 2.4 epochs of 125 batches
    assert len(order) == 300 * 8
    assert sorted(order[: 125 * 8]) == list(range(1000)), "each epoch uses every row once"
    longest = [max(lengths[i] for i in order[s : s + 8]) for s in range(0, len(order), 8)]
    spans = [longest[i] - min(lengths[j] for j in order[8 * i : 8 * i + 8]) for i in range(300)]
    assert statistics.mean(spans) < 50, "rows of similar length share a batch (random: 137)"
    coarse = length_grouped_order(lengths, 8, steps=300, seed=0, group_batches=50)
    coarse_batches = [[lengths[i] for i in coarse[s : s + 8]] for s in range(0, len(coarse), 8)]
    coarse_spans = [max(batch) - min(batch) for batch in coarse_batches]
    assert statistics.mean(coarse_spans) < 10, "larger groups, more similar rows (measured: 3.7)"
    first, rest = statistics.mean(longest[:12]), statistics.mean(longest)
    assert abs(first - rest) < 25, "no longest-first start (transformers' sampler has one)"
    assert order == length_grouped_order(lengths, 8, steps=300, seed=0)
    assert order != length_grouped_order(lengths, 8, steps=300, seed=1)
    with pytest.raises(ValueError, match="batch_size must be between 1 and 1000 rows, got 0"):
        length_grouped_order(lengths, 0, steps=1, seed=0)


def test_the_trainer_trains_on_the_grouped_order(tiny_with_tokenizer, smollm2_tokenizer, tmp_path):
    rows = [{"input_ids": [1] * n, "labels": [1] * n} for n in range(5, 45)]
    config = FinetuneConfig(steps=6, batch_size=4, seed=3)
    trainer = make_trainer(tiny_with_tokenizer, smollm2_tokenizer, rows, config, CPU, tmp_path)
    batches = [b["input_ids"].shape for b in trainer.get_train_dataloader()]
    expected = [rows[i] for i in length_grouped_order([len(r["input_ids"]) for r in rows], 4, 6, 3)]
    sizes = [max(len(r["input_ids"]) for r in expected[s : s + 4]) for s in range(0, 24, 4)]
    assert [shape[1] for shape in batches] == sizes and all(s[0] == 4 for s in batches)


def test_the_plain_loop_gets_the_trainers_batches(tiny_with_tokenizer, smollm2_tokenizer, tmp_path):
    """Notebook 05 trains the same recipe both ways: the same rows in the same batches."""
    from lora_course.training import batches

    rows = [{"input_ids": list(range(1, n)), "labels": list(range(1, n))} for n in range(5, 45)]
    config = FinetuneConfig(steps=12, batch_size=4, seed=3)  # more than one epoch of 10 batches
    trainer = make_trainer(tiny_with_tokenizer, smollm2_tokenizer, rows, config, CPU, tmp_path)
    pad = smollm2_tokenizer.pad_token_id
    for ours, theirs in zip(
        batches(rows, 4, pad, config.steps, config.seed),
        trainer.get_train_dataloader(),
        strict=True,
    ):
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), (
            "same batch, same tensors"
        )


def test_the_cache_key_changes_with_every_training_setting():
    config = FinetuneConfig()
    assert FinetuneConfig().key() == config.key(), "equal recipes share an adapter"
    changes = {"task": "sql", "targets": ("q_proj",), "r": 4, "alpha": 8, "lr": 1e-3,
               "steps": 5, "batch_size": 2, "seed": 1}  # fmt: skip
    keys = {dataclasses.replace(config, **{name: value}).key() for name, value in changes.items()}
    assert len(keys) == len(changes) and config.key() not in keys


def test_collator_pads_and_masks_everything_but_the_answer():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "text": "dropped"},
            {"input_ids": [8], "labels": [8]}]  # fmt: skip
    batch = AnswerOnlyCollator(pad_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # the output layer runs only before answer tokens: 6 and 7 are predicted, the first 8 is not
    assert batch["logits_to_keep"].tolist() == [[True, True, False], [False, False, False]]
    assert batch["shift_labels"].tolist() == [6, 7]
    assert set(batch) == {"input_ids", "labels", "attention_mask", "logits_to_keep", "shift_labels"}


@pytest.fixture
def tiny_with_tokenizer(smollm2_tokenizer):
    """A tiny Llama that speaks SmolLM2's vocabulary (seconds to train on the real task)."""
    return tiny_llama(seed=0, vocab_size=len(smollm2_tokenizer), max_position_embeddings=256)


@pytest.mark.slow  # a real Trainer run
def test_trainer_recipe_lowers_the_loss_and_trains_only_lora(
    tiny_with_tokenizer, smollm2_tokenizer
):
    config = FinetuneConfig(steps=20, batch_size=4, lr=1e-2)  # all linear layers
    seen = []  # the attention kernel of every training forward pass
    tiny_with_tokenizer.set_attn_implementation("sdpa")
    tiny_with_tokenizer.model.layers[0].self_attn.register_forward_hook(
        lambda module, args, out: seen.append(module.config._attn_implementation)
    )
    # bf16 autocast, the course's CPU path where the CPU has bf16 instructions (emulated elsewhere)
    peft_model, losses, seconds = fine_tune(
        tiny_with_tokenizer, smollm2_tokenizer, config, CPU_BF16
    )
    assert set(seen) == {"eager"} and peft_model.config._attn_implementation == "sdpa"
    assert len(losses) == 20 and seconds > 0
    # a random tiny model starts at ~ln(49152) = 10.8; 20 LoRA steps move it clearly, not far
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in peft_model.parameters()), "autocast keeps fp32"


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


def test_the_trainer_logs_the_eval_loss_it_is_asked_for(tiny_with_tokenizer, smollm2_tokenizer,
                                                        tmp_path, capsys):  # fmt: skip
    """eval_loss every `eval_every` steps on the eval rows; loss and grad_norm every step."""
    from peft import get_peft_model

    from lora_course.finetune import logged
    from lora_course.training import evaluate_loss

    rows = [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, 4, 5, 6]}] * 8
    config = FinetuneConfig(steps=4, batch_size=2, targets=("q_proj", "v_proj"))
    model = get_peft_model(tiny_with_tokenizer, config.lora_config())
    trainer = make_trainer(model, smollm2_tokenizer, rows, config, CPU, tmp_path,
                           eval_rows=rows[:4], eval_every=2)  # fmt: skip
    capsys.readouterr()
    trainer.train()
    steps, eval_losses = logged(trainer, "eval_loss")
    assert steps == [2, 4] and eval_losses[-1] < eval_losses[0]
    assert eval_losses[-1] == pytest.approx(evaluate_loss(model, rows[:4], 0), rel=1e-4)
    assert logged(trainer, "grad_norm")[0] == [1, 2, 3, 4]
    bars = capsys.readouterr().err  # the step bar (4 steps); no bar of 1 batch per evaluation
    assert "4/4" in bars and "/1 [" not in bars, bars
    with pytest.raises(ValueError, match="together"):
        make_trainer(model, smollm2_tokenizer, rows, config, CPU, tmp_path, eval_rows=rows)
    with pytest.raises(ValueError, match="eval_every must be between 1 and 4"):
        make_trainer(model, smollm2_tokenizer, rows, config, CPU, tmp_path, rows, eval_every=5)
    assert "eval_strategy" not in training_settings(config, CPU, "out")


def test_warm_caches_trains_what_notebook_07_then_loads(monkeypatch):
    """`make warm` must ask for exactly the adapters notebook 07 asks for, or it warms nothing."""
    from lora_course import finetune, models

    asked = []
    monkeypatch.setattr(models, "load_smollm2", lambda dtype: ("model", "tokenizer"))
    monkeypatch.setattr(
        finetune, "cached_adapter", lambda model, tokenizer, config: asked.append(config)
    )
    finetune.warm_caches()
    precision = finetune.choose_precision()
    assert asked == [FinetuneConfig.for_runtime(task, precision) for task in ("tickets", "sql")]
    notebook = (ROOT / "notebooks" / "07_save_load_swap_merge.ipynb").read_text()
    calls = ("load_smollm2(dtype=torch.float32)", "FinetuneConfig.for_runtime(task, precision)")
    assert all(call in notebook for call in calls), calls


@pytest.mark.slow  # real Trainer runs
@pytest.mark.parametrize("name", ["LoRA", "rsLoRA", "LoRA+", "DoRA", "PiSSA"])
def test_each_variant_trains_through_the_recipe(name, tiny_with_tokenizer, smollm2_tokenizer):
    """fine_tune_run with a variant: PEFT gets the variant's switches, the loss falls, the held-out
    loss is logged, and only LoRA+ replaces the Trainer's optimizer (B at ratio x A's rate)."""
    from lora_course.data import tokenized_task
    from lora_course.finetune import fine_tune_run
    from lora_course.variants import VARIANTS

    config = FinetuneConfig(steps=8, batch_size=2, lr=2e-2, targets=("q_proj", "v_proj"), r=4)
    rows = tokenized_task("tickets", smollm2_tokenizer)["validation"].select(range(4))
    run = fine_tune_run(tiny_with_tokenizer, smollm2_tokenizer, config, CPU, VARIANTS[name],
                        eval_rows=rows, eval_every=4, progress=False)  # fmt: skip
    settings = run.model.peft_config["default"]
    variant = VARIANTS[name]
    assert (settings.use_dora, settings.use_rslora) == (variant.use_dora, variant.use_rslora)
    assert settings.init_lora_weights == variant.init_lora_weights
    assert run.eval_steps == [4, 8] and run.eval_losses[-1] < run.eval_losses[0], run.eval_losses
    assert len(run.losses) == 8 and run.seconds_per_step > 0 and run.peak_gpu_bytes is None
    trainable = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert any("magnitude" in n for n in trainable) == (name == "DoRA")


def test_loraplus_hands_its_optimizer_to_the_trainer(tiny_with_tokenizer, smollm2_tokenizer,
                                                     tmp_path):  # fmt: skip
    from peft import get_peft_model

    from lora_course.variants import VARIANTS

    config = FinetuneConfig(steps=2, batch_size=2, lr=1e-3, targets=("q_proj",), r=4)
    model = get_peft_model(tiny_with_tokenizer, VARIANTS["LoRA+"].lora_config(config))
    optimizer = VARIANTS["LoRA+"].optimizer(model, config.lr)
    assert VARIANTS["LoRA"].optimizer(model, config.lr) is None, "the Trainer's own AdamW"
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}] * 4
    trainer = make_trainer(model, smollm2_tokenizer, rows, config, CPU, tmp_path,
                           progress=False, optimizer=optimizer)  # fmt: skip
    assert trainer.optimizer is optimizer
    rates = {p.shape: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert sorted(rates.values()) == [1e-3, 16e-3] and all(
        g["weight_decay"] == 0.0 for g in optimizer.param_groups
    )


# ---- notebook 11: schedules, full fine-tuning, accumulation, the batch arithmetic


def test_the_default_recipe_keeps_the_key_its_cached_adapters_have():
    """Settings added by notebook 11 enter the key only when changed: no cached adapter is lost."""
    assert FinetuneConfig().key() == "40ed89d205"
    changes = {"method": "full", "schedule": "cosine", "warmup_steps": 2, "lora_dropout": 0.1,
               "grad_accum": 2}  # fmt: skip
    keys = {dataclasses.replace(FinetuneConfig(), **{k: v}).key() for k, v in changes.items()}
    assert len(keys) == len(changes) and FinetuneConfig().key() not in keys


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"method": "qlora"}, "method must be one of lora, full"),
        ({"schedule": "linear"}, "schedule must be one of constant, cosine"),
        ({"warmup_steps": 100, "steps": 100}, r"warmup_steps must be in \[0, 100\)"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
        ({"grad_accum": 0}, "grad_accum must be at least 1"),
    ],
)
def test_new_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**settings)


@pytest.mark.parametrize(
    "schedule, warmup, name",
    [
        ("constant", 0, "constant"),
        ("constant", 3, "constant_with_warmup"),
        ("cosine", 0, "cosine"),
        ("cosine", 3, "cosine"),
    ],  # fmt: skip
)
def test_schedules_reach_the_trainer(schedule, warmup, name):
    config = FinetuneConfig(schedule=schedule, warmup_steps=warmup, grad_accum=3)
    settings = training_settings(config, CPU, "out")
    assert settings["lr_scheduler_type"] == name and settings["warmup_steps"] == warmup
    assert settings["gradient_accumulation_steps"] == 3


def test_dropout_reaches_peft_and_a_full_fine_tune_has_no_lora_config():
    assert FinetuneConfig(lora_dropout=0.05).lora_config().lora_dropout == 0.05
    with pytest.raises(ValueError, match="'full' fine-tune has no LoraConfig"):
        FinetuneConfig(method="full").lora_config()


def test_effective_batch_and_steps_per_epoch():
    from lora_course.finetune import effective_batch_size, steps_per_epoch

    assert effective_batch_size(2, 4, 2) == 16 and effective_batch_size(8) == 8
    assert steps_per_epoch(2000, 2, 4, 2) == 125 and steps_per_epoch(2001, 8) == 250
    with pytest.raises(ValueError, match="cannot fill one step of 16 rows"):
        steps_per_epoch(15, 2, 4, 2)
    with pytest.raises(ValueError, match="processes must be a whole number"):
        effective_batch_size(2, 1, 0)


def test_accumulated_and_parallel_batches_take_consecutive_rows():
    """One process accumulating k batches consumes the rows that k processes would share."""
    from lora_course.finetune import grouped_by_length

    rows = [{"input_ids": [1] * n} for n in range(5, 45)]
    config = FinetuneConfig(steps=3, batch_size=2, grad_accum=2)
    accumulated = grouped_by_length(rows, config)
    parallel = grouped_by_length(rows, dataclasses.replace(config, grad_accum=1), processes=2)
    assert accumulated == parallel and len(accumulated) == 3 * 2 * 2


@pytest.mark.slow  # real Trainer runs
def test_full_fine_tuning_trains_every_weight_with_a_cosine_schedule(
    tiny_with_tokenizer, smollm2_tokenizer
):
    from lora_course.data import tokenized_task
    from lora_course.finetune import fine_tune_run

    config = FinetuneConfig(steps=8, batch_size=2, lr=3e-3, method="full", schedule="cosine",
                            warmup_steps=2)  # fmt: skip
    before = copy.deepcopy(tiny_with_tokenizer)
    rows = tokenized_task("tickets", smollm2_tokenizer)["train"].select(range(16))
    run = fine_tune_run(tiny_with_tokenizer, smollm2_tokenizer, config, CPU, progress=False,
                        train_rows=rows)  # fmt: skip
    assert not hasattr(run.model, "peft_config")
    changed = [not torch.equal(p, q) for p, q in
               zip(run.model.parameters(), before.parameters(), strict=True)]  # fmt: skip
    assert all(changed)
    assert statistics.mean(run.losses[-2:]) < run.losses[0]
    assert len(run.grad_norms) == len(run.learning_rates) == 8
    rates = run.learning_rates
    # the Trainer's linear warmup starts at 0: step 1 at rate 0, step 3 at the peak, then down
    assert rates[0] == 0 and rates[2] == pytest.approx(3e-3) and rates[-1] < rates[2] / 2, rates
    from lora_course.variants import VARIANTS

    with pytest.raises(ValueError, match="cannot apply to a full fine-tune"):
        fine_tune_run(before, smollm2_tokenizer, config, CPU, VARIANTS["DoRA"], progress=False)
