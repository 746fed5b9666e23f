"""Notebook 05's LoRA training step on this CPU: fp32 against the course's setting, side by side.

One run measures, in this order: the machine's matmul peak in fp32 and bf16 (a 2048 x 2048 product
and a SmolLM2-shaped one); the share of padded tokens over one epoch of batches in random order and
grouped by length (finetune.padding_share); then notebook 05's recipe (PEFT, all linear layers, the
Trainer, batch 8 of the ticket task) for a few steps in each configuration below, round by round,
so that drift on a busy machine hits all of them:

    fp32             what every CPU ran before: fp32, batches in random order, logits everywhere
    bf16             bf16 autocast (weights and adapters stay fp32, as on a GPU)
    bf16 grouped     + batches of rows of similar length (make_trainer's length_grouped_order)
    + answer logits  + the output layer only where the loss looks (data.answer_positions)
    + eager          + eager attention instead of SDPA while training
                     (Precision.training_attention): the course's setting
    + compiled       + torch.compile of the model (with --compile: minutes of compilation first)

Then greedy generation (the evaluation's) with SDPA and with eager attention. For each training
setting: seconds per step and real tokens per second (padding excluded; the steps after a warm-up
step), the padding share of the steps measured, achieved GFLOP/s by the 4-FLOPs-per-weight-per-token
estimate (forward, and backward through frozen weights; LoRA's own work is under 1% of it; the
output layer's weights count only at the positions where it runs) and its share of the measured
peak. The last line is the course's setting against fp32.

    python benchmarks/bench_training_step.py [--steps 6] [--rounds 2] [--batch 8] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
import warnings

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

import lora_course
from lora_course.data import tokenized_task
from lora_course.devices import Precision
from lora_course.finetune import AnswerOnlyCollator, FinetuneConfig, make_trainer, padding_share

FP32 = Precision("cpu", torch.float32, torch.float32, False, "fp32")
BF16 = Precision("cpu", torch.float32, torch.bfloat16, False, "bf16 autocast")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One way to run the recipe's step."""

    precision: Precision
    grouped: bool = True  # batches of similar lengths (make_trainer), else the Trainer's shuffle
    answer_logits: bool = True  # logits only before answer tokens (AnswerOnlyCollator), else all
    attention: str = "eager"  # while training (make_trainer switches to it), else SDPA
    compiled: bool = False


SETTINGS = {
    "fp32": Setting(FP32, grouped=False, answer_logits=False, attention="sdpa"),
    "bf16": Setting(BF16, grouped=False, answer_logits=False, attention="sdpa"),
    "bf16 grouped": Setting(BF16, answer_logits=False, attention="sdpa"),
    "+ answer logits": Setting(BF16, attention="sdpa"),
    "+ eager": Setting(BF16),  # the course's setting on a CPU with bf16 instructions
}
COURSE = "+ eager"


def matmul_gflops(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """Best-of GFLOP/s of an (m, k) @ (k, n) product in `dtype` on this CPU."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step."""

    def __init__(self):
        self.times, self._start = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


class CountingCollator(AnswerOnlyCollator):
    """The recipe's collator, recording (real, total, logit) positions of every batch it builds."""

    def __init__(self, pad_id: int, answer_logits: bool):
        super().__init__(pad_id)
        self.answer_logits, self.tokens = answer_logits, []

    def __call__(self, rows):
        batch = super().__call__(rows)
        if not self.answer_logits:  # the model computes logits at every position
            del batch["logits_to_keep"], batch["shift_labels"]
        mask = batch["attention_mask"]  # (B, T)
        logits = int(batch["logits_to_keep"].sum()) if self.answer_logits else mask.numel()
        self.tokens.append((int(mask.sum()), mask.numel(), logits))
        return batch


def matmul_weights(model) -> tuple[int, int]:
    """Weights in a matmul for every token (the blocks' linear layers), and the output layer's."""
    head = model.lm_head.weight.numel()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return linear - head, head


def recipe_trainer(model, tokenizer, config, setting: Setting, output_dir):
    """make_trainer (notebook 05's) in `setting`'s batch order, counting tokens, no display."""
    rows = tokenized_task(config.task, tokenizer)["train"]
    trainer = make_trainer(model, tokenizer, rows, config, setting.precision, output_dir)
    if not setting.grouped:  # what the Trainer does by default: every row in random order
        trainer.train_dataset, trainer.args.train_sampling_strategy = rows, "random"
    trainer.data_collator = CountingCollator(tokenizer.pad_token_id, setting.answer_logits)
    for quiet in (ProgressCallback, PrinterCallback):  # the course's bar is a ProgressCallback
        trainer.remove_callback(quiet)
    if setting.attention != "eager":  # keep the model's SDPA while training
        switch = [
            c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TrainingAttention"
        ]
        trainer.remove_callback(switch[0])
    return trainer


def train_steps(model, tokenizer, config: FinetuneConfig, setting: Setting) -> dict:
    """Run the recipe for config.steps steps; seconds and tokens of the steps after the first."""
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    base = copy.deepcopy(model)
    base.set_attn_implementation("sdpa")  # as load_smollm2 loads it
    peft_model = get_peft_model(base, config.lora_config())
    if setting.compiled:
        peft_model.base_model.model.compile()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = recipe_trainer(peft_model, tokenizer, config, setting, output_dir)
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    tokens = trainer.data_collator.tokens[1 : config.steps]  # the dataloader may build one ahead
    real, total, logits = map(sum, zip(*tokens, strict=True))
    seconds = sum(timer.times[1:])  # the first step pays for lazy initialisation
    steps = len(timer.times) - 1
    return {"seconds": seconds, "steps": steps, "real": real, "total": total, "logits": logits}


def generation_seconds(model, tokenizer, rounds: int) -> dict[str, float]:
    """Best-of seconds to generate for 64 test tickets (one evaluation batch) with each kernel."""
    from lora_course.data import load_task
    from lora_course.evaluation import generate_batch
    from lora_course.tasks import get_task

    prompts = load_task("tickets")["test"].select(range(64))["ticket"]
    system = get_task("tickets").system_prompt
    best = {"sdpa": float("inf"), "eager": float("inf")}
    for _ in range(rounds):
        for attention in best:
            model.set_attn_implementation(attention)
            start = time.perf_counter()
            generate_batch(model, tokenizer, prompts, system, max_new_tokens=32, progress=False)
            best[attention] = min(best[attention], time.perf_counter() - start)
    model.set_attn_implementation("sdpa")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each setting")
    parser.add_argument("--batch", type=int, default=8, help="batch size (notebook 05: 8)")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    settings = dict(SETTINGS)
    if args.compile:
        settings["+ compiled"] = Setting(BF16, compiled=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        square = matmul_gflops(dtype, 2048, 2048, 2048)
        shaped = matmul_gflops(dtype, 800, 576, 1536)  # 800 tokens through an MLP projection
        peaks[dtype] = max(square, shaped)
        print(f"matmul peak {name}: 2048^3 {square:4.0f} GFLOP/s, 800x576x1536 {shaped:4.0f}")

    model, tokenizer = lora_course.load_smollm2(dtype=torch.float32, verbose=False)
    config = FinetuneConfig(task="tickets", steps=args.steps, batch_size=args.batch)
    lengths = [len(row["input_ids"]) for row in tokenized_task(config.task, tokenizer)["train"]]
    for order in ("random", "grouped"):
        share = padding_share(lengths, config.batch_size, order)
        print(f"padded tokens over one epoch, batches in {order} order: {share:.1%}")

    block_weights, head_weights = matmul_weights(model)
    runs = {name: [] for name in settings}
    for _ in range(args.rounds):  # round by round, so that drift hits every setting
        for name, setting in settings.items():
            runs[name].append(train_steps(model, tokenizer, config, setting))

    print(f"\nnotebook 05's recipe: all linear layers, r = {config.r}, batch {config.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds (all but each run's first step)")  # fmt: skip
    header = ("", "s/step", "real tok/s", "padding", "GFLOP/s", "of peak")
    print("{:<17}{:>8}{:>12}{:>9}{:>10}{:>9}".format(*header))
    real_rate = {}
    for name, measured in runs.items():
        seconds, steps = (sum(r[key] for r in measured) for key in ("seconds", "steps"))
        real, total, logits = (sum(r[key] for r in measured) for key in ("real", "total", "logits"))
        gflops = 4 * (block_weights * total + head_weights * logits) / seconds / 1e9
        real_rate[name] = real / seconds
        peak = peaks[settings[name].precision.compute_dtype]
        print(f"{name:<17}{seconds / steps:>8.2f}{real_rate[name]:>12.0f}{1 - real / total:>9.0%}"
              f"{gflops:>10.0f}{gflops / peak:>9.0%}")  # fmt: skip
    generation = generation_seconds(model, tokenizer, args.rounds)
    print(f"\ngreedy generation, 64 test tickets x 32 new tokens (fp32, best of {args.rounds}): "
          f"SDPA {generation['sdpa']:.1f} s, eager {generation['eager']:.1f} s")  # fmt: skip
    speedup = real_rate[COURSE] / real_rate["fp32"]
    print(f"training step speedup vs fp32: {speedup:.2f}x "
          f"(real tokens/s {real_rate['fp32']:.0f} -> {real_rate[COURSE]:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
