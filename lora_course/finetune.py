"""Fine-tuning SmolLM2 with PEFT and transformers' Trainer (notebook 05; reused by 06 and 07).

`FinetuneConfig.for_runtime` picks steps, batch size and evaluation size from `WORKLOADS`: per
workload (notebook 05's recipe, notebook 06's shorter comparison runs) and per runtime (GPU
workshop, CPU full run, fast mode for CI); `make_trainer` builds the Trainer; `fine_tune`
is the whole recipe; `cached_adapter` trains an adapter once per (task, recipe, base model) and
keeps it in the course cache, so notebook 07 never depends on notebook 05 having run. Notebook 11
adds full fine-tuning, schedules, dropout and gradient accumulation to the recipe; its command
line, `python -m lora_course.finetune`, is in finetune_cli.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import collate
from .devices import Precision, choose_precision
from .settings import cache_dir, display_path, fast_mode
from .targets import PROJECTIONS
from .tasks import get_task


@dataclass(frozen=True)
class Workload:
    """How long one fine-tune trains and how many test examples it is scored on."""

    steps: int
    batch_size: int
    eval_examples: int


# name: sizes per runtime. "fast" (LORA_COURSE_FAST=1, CI) wins over the device, so a CI run on
# a GPU machine stays small; "cuda" is the workshop GPU; "cpu" is a full run on a laptop.
WORKLOADS = {
    "recipe": {  # notebook 05's fine-tune, reused by notebook 07: the task learned well
        "cuda": Workload(steps=300, batch_size=32, eval_examples=200),
        "cpu": Workload(steps=100, batch_size=8, eval_examples=200),
        "fast": Workload(steps=12, batch_size=4, eval_examples=16),
    },
    "comparison": {  # notebook 06's runs, placements x seeds: short, so scores stay off the top
        "cuda": Workload(steps=150, batch_size=16, eval_examples=200),  # the whole test split
        "cpu": Workload(steps=60, batch_size=4, eval_examples=200),  # teacher-forced: one pass
        "fast": Workload(steps=3, batch_size=2, eval_examples=8),
    },
    "variants": {  # notebook 09's runs, variants x learning rates x seeds: shorter still
        "cuda": Workload(steps=150, batch_size=16, eval_examples=200),
        "cpu": Workload(steps=40, batch_size=4, eval_examples=200),
        "fast": Workload(steps=3, batch_size=2, eval_examples=8),
    },
    "grid": {  # notebook 11's learning-rate grids, LoRA and full fine-tuning x seeds: the shortest
        "cuda": Workload(steps=100, batch_size=16, eval_examples=200),
        "cpu": Workload(steps=16, batch_size=4, eval_examples=64),  # eval: validation tickets
        "fast": Workload(steps=4, batch_size=2, eval_examples=8),  # 4: diagnose_run's least
    },
}


def workload_sizes(workload: str, precision: Precision) -> Workload:
    """The sizes of `workload` on this runtime: fast mode first, then the device."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    runtime = "fast" if fast_mode() else "cuda" if precision.device == "cuda" else "cpu"
    return WORKLOADS[workload][runtime]


#: Changes when make_trainer trains differently, so that cached adapters of the old way are not
#: reused: 2 = bf16 autocast on CPUs with bf16 instructions, batches in length_grouped_order;
#: 3 = length groups of 4 batches instead of 50.
PROCEDURE = 3


METHODS = ("lora", "full")
SCHEDULES = ("constant", "cosine")
#: FinetuneConfig's settings added by notebook 11, at their defaults (left out of its key)
LATER_DEFAULTS = {
    "method": "lora",
    "schedule": "constant",
    "warmup_steps": 0,
    "lora_dropout": 0.0,
    "grad_accum": 1,
}


@dataclass(frozen=True)
class FinetuneConfig:
    """One LoRA fine-tuning recipe: what to adapt, how large, how long (notebook 05)."""

    task: str = "tickets"
    targets: tuple[str, ...] = PROJECTIONS  # all linear layers
    r: int = 8
    alpha: float = 16
    lr: float = 2e-3
    steps: int = 100
    batch_size: int = 8
    eval_examples: int = 200  # test-split examples scored by generation after training
    seed: int = 0
    # added by notebook 11; at these defaults a recipe is the one notebooks 05-10 trained
    method: str = "lora"  # or "full": every weight of the model trained, no adapter
    schedule: str = "constant"  # or "cosine": decays to 0 at the last step
    warmup_steps: int = 0  # linear warmup from 0 before the schedule
    lora_dropout: float = 0.0
    grad_accum: int = 1  # batches of batch_size per optimizer step (batch_size is per process)

    def __post_init__(self):
        get_task(self.task)  # a ValueError naming the known tasks
        unknown = sorted(set(self.targets) - set(PROJECTIONS))
        if not self.targets or unknown:
            raise ValueError(f"targets must be among {', '.join(PROJECTIONS)}; got {unknown}")
        for name in ("r", "steps", "batch_size", "eval_examples", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.schedule not in SCHEDULES:
            choices = ", ".join(SCHEDULES)
            raise ValueError(f"schedule must be one of {choices}, got {self.schedule!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, {self.steps}), got {self.warmup_steps}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @classmethod
    def for_runtime(
        cls,
        task: str = "tickets",
        precision: Precision | None = None,
        workload: str = "recipe",
        **overrides,
    ):
        """`workload`'s recipe for this machine: fast mode (CI), GPU workshop or CPU full run."""
        sizes = workload_sizes(workload, precision or choose_precision())
        return cls(task=task, **{**dataclasses.asdict(sizes), **overrides})

    def lora_config(self):
        """The PEFT LoraConfig of this recipe."""
        from peft import LoraConfig

        if self.method != "lora":
            raise ValueError(f"a {self.method!r} fine-tune has no LoraConfig")
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.targets),
            task_type="CAUSAL_LM",
        )

    def key(self) -> str:
        """A short hash of every setting: two recipes share a cached adapter only if all match.

        Settings added after PROCEDURE 3 count only when they differ from their defaults, so the
        adapters already cached keep their names.
        """
        settings = {
            name: value
            for name, value in dataclasses.asdict(self).items()
            if name not in LATER_DEFAULTS or value != LATER_DEFAULTS[name]
        }
        text = json.dumps({**settings, "procedure": PROCEDURE}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


class AnswerOnlyCollator:
    """Trainer's data collator: right-pads rows; labels are -100 on prompt and padding.

    It also marks the positions that predict an answer token (data.answer_positions), so that the
    model runs its output layer only there: the same loss, a step about 1.1x faster on a CPU.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in rows]
        # input_ids, attention_mask, labels, logits_to_keep: (B, T); shift_labels: (answer tokens,)
        return collate(rows, self.pad_id, answer_logits_only=True)


# Rows are sorted by length within groups of this many batches. Small on purpose: in the SQL task
# length follows difficulty (correlation 0.95), and groups of 50 batches made every batch all-easy
# or all-hard: 79.5% test accuracy against 94.5% in random order, same seed and bf16 both
# (benchmarks/compare_fast_accuracy.py). Groups of 4 still keep padding under 10% on both tasks.
GROUP_BATCHES = 4
MAX_GRAD_NORM = 1.0  # the Trainer clips the gradient's total norm to this (notebook 05)


def length_grouped_order(
    lengths: list[int], batch_size: int, steps: int, seed: int, group_batches: int = GROUP_BATCHES
) -> list[int]:
    """Row indices for `steps` batches of rows of similar length, the batches in random order.

    Each epoch: shuffle the rows, sort them by length within groups of `group_batches` batches, cut
    the groups into batches, shuffle the batches (make_trainer; lesson 05 explains why). Written
    here rather than taken from the Trainer: transformers' length-grouped sampler serves each group
    from its longest batch to its shortest, so a short run trains mostly on long rows and a longer
    run's loss curve follows the lengths. Every epoch's share is a whole number of batches.
    """
    if not 1 <= batch_size <= len(lengths):
        raise ValueError(f"batch_size must be between 1 and {len(lengths)} rows, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    order = []
    while len(order) < steps * batch_size:
        rows = torch.randperm(len(lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(rows), group_batches * batch_size):
            group = sorted(
                rows[start : start + group_batches * batch_size], key=lengths.__getitem__
            )
            batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
        batches = [b for b in batches if len(b) == batch_size]  # an epoch's remainder is dropped
        for i in torch.randperm(len(batches), generator=generator).tolist():
            order += batches[i]
    return order[: steps * batch_size]


def padding_share(lengths: list[int], batch_size: int, order: str, seed: int = 0) -> float:
    """Padded share of the tokens of one epoch of batches, in 'random' or 'grouped' order.

    Each batch is padded to its longest row, as AnswerOnlyCollator does (notebook 05).
    """
    steps = len(lengths) // batch_size
    if order == "random":
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(lengths), generator=generator).tolist()[: steps * batch_size]
    elif order == "grouped":
        indices = length_grouped_order(lengths, batch_size, steps, seed)
    else:
        raise ValueError(f"order must be 'random' or 'grouped', got {order!r}")
    real = total = 0
    for start in range(0, len(indices), batch_size):
        batch = [lengths[i] for i in indices[start : start + batch_size]]
        real, total = real + sum(batch), total + max(batch) * len(batch)
    return 1 - real / total


def effective_batch_size(batch_size: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Rows behind one optimizer step: per process, per accumulated batch, summed (notebook 11)."""
    for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum),
                        ("processes", processes)):  # fmt: skip
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return batch_size * grad_accum * processes


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Whole optimizer steps in one pass over `rows` training rows (notebook 11).

    Rounded down: the rows left over (fewer than one step's) are seen at the start of the next
    pass, as in length_grouped_order. Raises if `rows` cannot fill a single step.
    """
    step = effective_batch_size(batch_size, grad_accum, processes)
    if rows < step:
        raise ValueError(f"{rows} rows cannot fill one step of {step} rows")
    return rows // step


def grouped_by_length(rows, config: FinetuneConfig, processes: int = 1):
    """`rows` (a datasets.Dataset or a list of dicts) in length_grouped_order, for make_trainer.

    One optimizer step takes `config.grad_accum` x `processes` consecutive batches of
    `config.batch_size` rows: one process accumulating 2 batches sees the same rows per step as
    2 processes taking one each (the command line's two launches agree on it).
    """
    if len(rows) == 0:
        return rows
    lengths = [len(row["input_ids"]) for row in rows]
    batches = config.steps * config.grad_accum * processes
    order = length_grouped_order(lengths, config.batch_size, batches, config.seed)
    return rows.select(order) if hasattr(rows, "select") else [rows[i] for i in order]


# (schedule, has warmup) -> transformers' lr_scheduler_type
SCHEDULER_NAMES = {
    ("constant", False): "constant",
    ("constant", True): "constant_with_warmup",
    ("cosine", False): "cosine",
    ("cosine", True): "cosine",  # linear warmup, then cosine decay to 0
}


def training_settings(
    config: FinetuneConfig, precision: Precision, output_dir, eval_every: int | None = None
) -> dict:
    """TrainingArguments keywords: the recipe's schedule, no checkpoints, a loss every step.

    `eval_every` > 0 also computes the loss on the Trainer's eval rows every that many steps.
    A NaN or infinite loss is logged as it is (health.StopOnNonFiniteLoss needs to see it).
    """
    evaluation = {
        "eval_strategy": "steps",
        "eval_steps": eval_every,
        "per_device_eval_batch_size": 16,
        "prediction_loss_only": True,  # the loss, not 49,152 logits per answer token
    }
    return {
        "output_dir": str(output_dir),
        "max_steps": config.steps,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.lr,
        # constant: the schedule of the hand-written loop in training.py (notebook 11 compares)
        "lr_scheduler_type": SCHEDULER_NAMES[(config.schedule, config.warmup_steps > 0)],
        "warmup_steps": config.warmup_steps,
        "weight_decay": 0.0,
        "optim": "adamw_torch",
        "max_grad_norm": MAX_GRAD_NORM,
        "logging_steps": 1,
        # by default the Trainer logs a NaN or inf loss as the mean since the last log: 0.0 here
        "logging_nan_inf_filter": False,
        "save_strategy": "no",
        "report_to": "none",
        "seed": config.seed,
        "data_seed": config.seed,
        "dataloader_pin_memory": precision.device == "cuda",
        "remove_unused_columns": False,  # the collator needs input_ids and labels as they are
        "use_cpu": precision.device == "cpu",
        # the rows arrive already in length_grouped_order: the Trainer must keep that order
        "train_sampling_strategy": "sequential",
        **precision.trainer_kwargs,  # bf16 on Ampere+ and bf16 CPUs, fp16 (loss scaling) on a T4
        **(evaluation if eval_every else {}),
    }


def make_trainer(
    model,
    tokenizer,
    train_rows,
    config: FinetuneConfig,
    precision: Precision,
    output_dir,
    eval_rows=None,
    eval_every: int | None = None,
    progress: bool = True,
    optimizer=None,
    callbacks=(),
):
    """A transformers Trainer for a PEFT model on tokenized rows (columns input_ids, labels).

    With `eval_rows` and `eval_every`, it also logs their loss ("eval_loss") every so many steps.
    `progress=False`: no step bar (a sweep shows one bar over its runs instead).
    `optimizer`: one built outside (LoRA+'s, from variants.Variant) instead of the Trainer's AdamW.
    `callbacks`: more TrainerCallbacks, e.g. health.StopOnNonFiniteLoss() (notebook 11).
    Under `accelerate launch` each process takes its own batches of the same ordered rows.
    """
    from transformers import Trainer, TrainingArguments

    if (eval_rows is None) != (eval_every is None):
        raise ValueError("give eval_rows and eval_every together, or neither")
    if eval_every is not None and not 1 <= eval_every <= config.steps:
        raise ValueError(f"eval_every must be between 1 and {config.steps} steps, got {eval_every}")
    args = TrainingArguments(**training_settings(config, precision, output_dir, eval_every))
    trainer = Trainer(
        model=model,
        args=args,
        # little padding, random batch order; the same rows per step however many processes
        train_dataset=grouped_by_length(train_rows, config, args.world_size),
        eval_dataset=eval_rows,
        data_collator=AnswerOnlyCollator(tokenizer.pad_token_id),
        optimizers=(optimizer, None),  # None: the Trainer builds AdamW and the recipe's schedule
        callbacks=list(callbacks),
    )
    _bar_without_log_lines(trainer, progress)  # the losses stay in trainer.state.log_history
    _train_with_training_attention(trainer, precision)  # eager attention on a CPU
    return trainer


def _train_with_training_attention(trainer, precision: Precision) -> None:
    """The Trainer's counterpart of training.training_attention: switch, train, switch back."""
    from transformers import TrainerCallback

    class TrainingAttention(TrainerCallback):
        before = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.before = model.config._attn_implementation
            model.set_attn_implementation(precision.training_attention)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.set_attn_implementation(self.before)

    if precision.training_attention is not None:  # a GPU keeps the model's own kernel
        trainer.add_callback(TrainingAttention())


def _bar_without_log_lines(trainer, progress: bool = True) -> None:
    """Replace the Trainer's progress display (a bar plus a printed dict per logged step)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    class StepBar(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass  # the stock callback writes every log dict under the bar: 100 lines a run

        def on_prediction_step(self, args, state, control, **kwargs):
            pass  # no second bar for each evaluation during training: the eval_loss is logged

    for noisy in (NotebookProgressCallback, ProgressCallback, PrinterCallback):
        trainer.remove_callback(noisy)
    if progress:
        trainer.add_callback(StepBar())


def out_of_memory_advice(config: FinetuneConfig) -> str:
    """What to lower when a fine-tune does not fit in GPU memory (the error `fine_tune` raises)."""
    smaller = max(1, config.batch_size // 2)
    return (
        f"the GPU ran out of memory at batch_size={config.batch_size}. Lower it, e.g. "
        f"FinetuneConfig.for_runtime({config.task!r}, batch_size={smaller}, "
        f"steps={config.steps * config.batch_size // smaller}) keeps the number of examples seen; "
        "restart the runtime first to free the memory already taken."
    )


def logged(trainer, key: str) -> tuple[list[int], list[float]]:
    """Steps and values of what the Trainer logged under `key`, e.g. "grad_norm" (notebook 05)."""
    entries = [entry for entry in trainer.state.log_history if key in entry]
    return [entry["step"] for entry in entries], [float(entry[key]) for entry in entries]


def loss_history(trainer) -> list[float]:
    """The training loss of every logged step, from the Trainer's log history."""
    return logged(trainer, "loss")[1]


@dataclass
class TrainingRun:
    """What one fine-tune gives back: the model, its losses, its speed and its peak memory."""

    model: object  # the trained PeftModel, in eval mode
    losses: list[float]  # training loss of every step
    seconds_per_step: float  # mean time of a training step, evaluations excluded
    eval_steps: list[int]  # steps at which the held-out loss was computed (none without eval_rows)
    eval_losses: list[float]  # the held-out loss at those steps
    peak_gpu_bytes: int | None  # torch.cuda.max_memory_allocated while training; None on a CPU
    grad_norms: list[float] = dataclasses.field(default_factory=list)  # before clipping, per step
    learning_rates: list[float] = dataclasses.field(default_factory=list)  # of every step


def _add_step_timer(trainer):
    """A callback on `trainer` that sums the time spent inside training steps: `.seconds`, `.steps`.

    The Trainer evaluates after a step has ended, so evaluations are not counted.
    """
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        seconds, steps, _start = 0.0, 0, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._start
            self.steps += 1

    timer = StepTimer()
    trainer.add_callback(timer)
    return timer


def fine_tune_run(
    model,
    tokenizer,
    config: FinetuneConfig,
    precision: Precision | None = None,
    variant=None,
    eval_rows=None,
    eval_every: int | None = None,
    progress: bool = True,
    callbacks=(),
    train_rows=None,
) -> TrainingRun:
    """get_peft_model + Trainer on the task's training split, as a `TrainingRun` (notebook 09).

    With `config.method == "full"` it trains every weight of `model` instead (notebook 11).
    `variant` (a variants.Variant) switches PEFT's LoRA to DoRA, rsLoRA, PiSSA or LoRA+; `eval_rows`
    and `eval_every` log a held-out loss during training (make_trainer); `callbacks` go to the
    Trainer; `train_rows` (tokenized) replace the task's training split, e.g. a small subset.
    `model` is wrapped in place (PEFT injects into it): pass a copy to keep the base clean.
    `fine_tune` gives part of it.
    """
    import tempfile

    from peft import get_peft_model

    from .data import tokenized_task

    precision = precision or choose_precision()
    torch.manual_seed(config.seed)  # the same A initialization for the same recipe
    if config.method == "full":
        if variant is not None:
            raise ValueError("a variant changes LoRA: it cannot apply to a full fine-tune")
        peft_model = model.requires_grad_(True)  # every weight trains; the name stays for brevity
    else:
        lora_config = variant.lora_config(config) if variant else config.lora_config()
        peft_model = get_peft_model(model, lora_config)
    optimizer = variant.optimizer(peft_model, config.lr) if variant else None
    if train_rows is None:
        train_rows = tokenized_task(config.task, tokenizer)["train"]  # tokenized once per tokenizer
    on_gpu = precision.device == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = make_trainer(
            peft_model, tokenizer, train_rows, config, precision, output_dir,
            eval_rows=eval_rows, eval_every=eval_every, progress=progress, optimizer=optimizer,
            callbacks=callbacks,
        )  # fmt: skip
        timer = _add_step_timer(trainer)
        try:
            trainer.train()
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(out_of_memory_advice(config)) from error
    peft_model.eval()
    eval_steps, eval_losses = logged(trainer, "eval_loss")
    return TrainingRun(
        model=peft_model,
        losses=loss_history(trainer),
        seconds_per_step=timer.seconds / timer.steps,
        eval_steps=eval_steps,
        eval_losses=eval_losses,
        peak_gpu_bytes=torch.cuda.max_memory_allocated() if on_gpu else None,
        grad_norms=logged(trainer, "grad_norm")[1],
        learning_rates=logged(trainer, "learning_rate")[1],
    )


def fine_tune(
    model, tokenizer, config: FinetuneConfig, precision: Precision | None = None, progress=True
):
    """get_peft_model + Trainer on the task's training split; returns (peft_model, losses, s/step).

    `model` is wrapped in place (PEFT injects into it): pass a copy to keep the base clean.
    `progress=False` hides the step bar (make_trainer). `fine_tune_run` gives more.
    """
    run = fine_tune_run(model, tokenizer, config, precision, progress=progress)
    return run.model, run.losses, run.seconds_per_step


def adapter_folder(model, config: FinetuneConfig, cache: str | Path | None = None) -> Path:
    """Where the adapter for (`config`, this base model) lives in the course cache.

    The name holds the recipe's key and the base model's fingerprint, so an adapter is only
    ever reused on the base it was trained on.
    """
    from .adapters import base_fingerprint

    fingerprint = base_fingerprint(model).removeprefix("sha256:")
    return Path(cache or cache_dir() / "adapters") / f"{config.task}-{config.key()}-{fingerprint}"


def cached_adapter(model, tokenizer, config: FinetuneConfig, cache: str | Path | None = None):
    """Folder of a PEFT adapter for `config` trained on this base model, training it if needed.

    `model` itself is not modified. Notebook 05 saves its adapter to the same place.
    """
    import copy

    from .adapters import save_peft_adapter

    folder = adapter_folder(model, config, cache)
    if (folder / "adapter_config.json").is_file():
        print(f"cached adapter: {display_path(folder)}")
        return folder
    print(
        f"training the {config.task} adapter ({config.steps} steps); "
        f"it is cached in {display_path(folder)}"
    )
    peft_model, losses, seconds_per_step = fine_tune(copy.deepcopy(model), tokenizer, config)
    save_peft_adapter(peft_model, folder, base=model)
    summary = {
        "config": dataclasses.asdict(config),
        "losses": losses,
        "s_per_step": seconds_per_step,
    }
    (folder / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    return folder


def warm_caches(tasks: tuple[str, ...] = ("tickets", "sql")) -> list[Path]:
    """Before a class: convert the weights, train the cached adapters once (`make warm`).

    The same calls as the lesson that loads both adapters makes, so there `cached_adapter` finds
    them instead of training (docs/workshop.md, the instructor's guide).
    """
    from .models import load_smollm2

    precision = choose_precision()
    print(f"precision: {precision}")
    model, tokenizer = load_smollm2(dtype=torch.float32)
    configs = [FinetuneConfig.for_runtime(task, precision) for task in tasks]
    return [cached_adapter(model, tokenizer, config) for config in configs]


if __name__ == "__main__":  # the command line lives in finetune_cli.py
    from .finetune_cli import main

    raise SystemExit(main())
