"""Does the fast CPU setting learn as well as fp32? Notebook 05's recipe, trained both ways, scored.

For each seed and each training setting below, the recipe (PEFT, all linear layers, r = 8, the
Trainer, `FinetuneConfig.for_runtime`'s CPU workload) trains one adapter on the task; each adapter
is scored on the whole test split by greedy generation, in fp32 (as the course's evaluation runs)
and also under bf16 autocast (about 1.6x faster generation, not adopted; `--scoring fp32` skips it),
so that training and scoring are separated:

    fp32 random      what every CPU ran before: fp32, batches in random order
    bf16 random      bf16 autocast only (weights and adapters stay fp32)
    bf16 grouped 50  + rows sorted by length within groups of 50 batches (the first fast setting)
    bf16 grouped 4   + ... within groups of 4 batches: the course's setting (make_trainer)

The table gives the test accuracy (the task's main metric) of every run, the mean over seeds and
the spread (min-max). Slow on purpose: about 6 minutes per fp32 run and 4 per bf16 run on the
course's 2-core machine, plus about a minute per scoring.

    python benchmarks/compare_fast_accuracy.py [--task sql] [--seeds 0 1] [--settings ...]
                                               [--scoring fp32 bf16]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings

import torch

import lora_course
from lora_course.data import load_task, tokenized_task
from lora_course.devices import Precision
from lora_course.evaluation import evaluate_task
from lora_course.finetune import (
    GROUP_BATCHES,
    FinetuneConfig,
    length_grouped_order,
    make_trainer,
)

FP32 = Precision("cpu", torch.float32, torch.float32, False, "fp32")
BF16 = Precision("cpu", torch.float32, torch.bfloat16, False, "bf16 autocast")
SETTINGS = {  # name: (training precision, batches per length group; None: random order)
    "fp32 random": (FP32, None),
    "bf16 random": (BF16, None),
    "bf16 grouped 50": (BF16, 50),
    "bf16 grouped 4": (BF16, GROUP_BATCHES),
}


def train_adapter(model, tokenizer, config: FinetuneConfig, precision: Precision, groups):
    """Notebook 05's recipe in one setting; the PEFT model, ready to score."""
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    peft_model = get_peft_model(copy.deepcopy(model), config.lora_config())
    rows = tokenized_task(config.task, tokenizer)["train"]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = make_trainer(peft_model, tokenizer, rows, config, precision, output_dir)
        if groups is None:  # the Trainer's default: every row in random order
            trainer.train_dataset, trainer.args.train_sampling_strategy = rows, "random"
        else:
            lengths = [len(row["input_ids"]) for row in rows]
            order = length_grouped_order(
                lengths, config.batch_size, config.steps, config.seed, groups
            )
            trainer.train_dataset = rows.select(order)
        trainer.train()
    return peft_model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sql", choices=("tickets", "sql"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--scoring", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")

    model, tokenizer = lora_course.load_smollm2(dtype=torch.float32, verbose=False)
    test = load_task(args.task)["test"]
    scoring = {label: {"fp32": FP32, "bf16": BF16}[label] for label in args.scoring}
    accuracy = {}  # (setting, scoring, seed) -> test accuracy
    for seed in args.seeds:
        for name in args.settings:
            precision, groups = SETTINGS[name]
            config = FinetuneConfig.for_runtime(args.task, precision, seed=seed)
            start = time.perf_counter()
            peft_model = train_adapter(model, tokenizer, config, precision, groups)
            trained = time.perf_counter() - start
            for label, scorer in scoring.items():
                with scorer.autocast():
                    score = evaluate_task(peft_model, tokenizer, test, args.task, progress=False)
                accuracy[(name, label, seed)] = score.accuracy
                print(f"seed {seed}  {name:<16} scored in {label}: {score}  "
                      f"(trained in {trained / 60:.1f} min)", flush=True)  # fmt: skip

    print(f"\n{args.task}: test accuracy on {len(test)} examples, {config.steps} steps at batch "
          f"{config.batch_size}, seeds {args.seeds}")  # fmt: skip
    print(f"{'training':<17}{'scored in':<11}" + "".join(f"{f'seed {s}':>9}" for s in args.seeds)
          + f"{'mean':>8}{'min-max':>14}")  # fmt: skip
    for name in args.settings:
        for label in scoring:
            values = [accuracy[(name, label, s)] for s in args.seeds]
            cells = "".join(f"{v:>9.1%}" for v in values)
            spread = f"{min(values):.1%}-{max(values):.1%}"
            print(f"{name:<17}{label:<11}{cells}{sum(values) / len(values):>8.1%}{spread:>14}")


if __name__ == "__main__":
    main()
