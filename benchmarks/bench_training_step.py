"""Notebook 05's LoRA training step on this CPU: fp32 against bf16 autocast, measured side by side.

One run measures, in this order: the machine's matmul peak in fp32 and bf16 (a 2048 x 2048 product
and a SmolLM2-shaped one); then notebook 05's recipe (PEFT, all linear layers, the Trainer,
batch 8 of the ticket task) for a few steps in fp32 and in bf16 autocast (weights and adapters stay
fp32, as on a GPU), alternating the two so that drift on a busy machine hits both. For each: seconds
per step (median after a warm-up step), real tokens per second (padding excluded), the share of
padded tokens, achieved GFLOP/s by the 4-FLOPs-per-weight-per-token estimate (forward, and backward
through frozen weights; LoRA's own work is under 1% of it) and its share of the measured peak. The
last line is the ratio. Notebook 05's r and learning rate are FinetuneConfig's defaults.

    python benchmarks/bench_training_step.py [--steps 6] [--rounds 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

import lora_course
from lora_course.data import tokenized_task
from lora_course.devices import Precision
from lora_course.finetune import AnswerOnlyCollator, FinetuneConfig, make_trainer

FP32 = Precision("cpu", torch.float32, torch.float32, False, "fp32")
BF16 = Precision("cpu", torch.float32, torch.bfloat16, False, "bf16 autocast")


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
    """The recipe's collator, counting real and padded tokens of every batch it builds."""

    def __init__(self, pad_id: int):
        super().__init__(pad_id)
        self.real = self.total = 0

    def __call__(self, rows):
        batch = super().__call__(rows)
        self.real += int(batch["attention_mask"].sum())
        self.total += batch["attention_mask"].numel()
        return batch


def matmul_weights(model) -> int:
    """Weights that take part in a matmul for every token: the linear layers and the LM head."""
    linear = (torch.nn.Linear,)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, linear))


def train_steps(model, tokenizer, config: FinetuneConfig, precision: Precision) -> dict:
    """Run the recipe for config.steps steps; seconds per step and tokens, measured."""
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    peft_model = get_peft_model(copy.deepcopy(model), config.lora_config())
    rows = tokenized_task(config.task, tokenizer)["train"]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = make_trainer(peft_model, tokenizer, rows, config, precision, output_dir)
        trainer.data_collator = collator = CountingCollator(tokenizer.pad_token_id)
        timer = StepTimer()
        trainer.add_callback(timer)
        for quiet in (ProgressCallback, PrinterCallback):  # no bar, no log line per step
            trainer.remove_callback(quiet)
        trainer.train()
    steady = timer.times[1:]  # the first step pays for lazy initialisation
    per_step = statistics.median(steady)
    real, total = collator.real / config.steps, collator.total / config.steps
    return {"s_per_step": per_step, "real_per_step": real, "total_per_step": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="fp32/bf16 measurements each")
    parser.add_argument("--batch", type=int, default=8, help="batch size (notebook 05: 8)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        square = matmul_gflops(dtype, 2048, 2048, 2048)
        shaped = matmul_gflops(dtype, 800, 576, 1536)  # 800 tokens through an MLP projection
        peaks[name] = max(square, shaped)
        print(f"matmul peak {name}: 2048^3 {square:4.0f} GFLOP/s, 800x576x1536 {shaped:4.0f}")

    model, tokenizer = lora_course.load_smollm2(dtype=torch.float32)
    config = FinetuneConfig(task="tickets", steps=args.steps, batch_size=args.batch)
    weights = matmul_weights(model)
    runs = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):  # alternate, so that drift hits both
        runs["fp32"].append(train_steps(model, tokenizer, config, FP32))
        runs["bf16"].append(train_steps(model, tokenizer, config, BF16))

    print(f"\nnotebook 05's recipe: all linear layers, r = {config.r}, batch {config.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds (median step after the first)")  # fmt: skip
    header = ("", "s/step", "real tok/s", "padding", "GFLOP/s", "of peak")
    print("{:<6}{:>9}{:>12}{:>9}{:>10}{:>9}".format(*header))
    real_rate = {}
    for name, measured in runs.items():
        per_step = statistics.median(r["s_per_step"] for r in measured)
        real = statistics.mean(r["real_per_step"] for r in measured)
        total = statistics.mean(r["total_per_step"] for r in measured)
        gflops = 4 * weights * total / per_step / 1e9
        real_rate[name] = real / per_step
        print(f"{name:<6}{per_step:>9.2f}{real_rate[name]:>12.0f}{1 - real / total:>9.0%}"
              f"{gflops:>10.0f}{gflops / peaks[name]:>9.0%}")  # fmt: skip
    speedup = real_rate["bf16"] / real_rate["fp32"]
    print(f"training step speedup vs fp32: {speedup:.2f}x "
          f"(real tokens/s {real_rate['fp32']:.0f} -> {real_rate['bf16']:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
