"""`python -m lora_course.finetune`: one fine-tune into a folder, in one process or several.

The command line of finetune.py's recipe (notebook 11 runs it under `accelerate launch`): every
argument is checked before the model loads, and under a launcher only the main process writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from .devices import choose_precision
from .finetune import (
    METHODS,
    SCHEDULES,
    FinetuneConfig,
    effective_batch_size,
    fine_tune_run,
    warm_caches,
)
from .settings import display_path
from .targets import PROJECTIONS
from .tasks import get_task

CLI_EPILOG = """\
the effective batch: every optimizer step averages the gradient over
  batch_size x grad_accum x processes rows
(--batch-size is per process and per micro-batch; --grad-accum micro-batches are
accumulated per step; processes is what the launcher starts, 1 under plain python).
One process with --batch-size 2 --grad-accum 2 and two processes with --batch-size 2
--grad-accum 1 train on the same 4 rows per step, in the same order.

defaults: FinetuneConfig.for_runtime(task), notebook 05's recipe for this machine
(here: {defaults}).

examples:
  python -m lora_course.finetune --task tickets --out runs/tickets
  python -m lora_course.finetune --task sql --out runs/sql-qv --targets q_proj,v_proj --r 4
  accelerate launch --multi_gpu --num_processes 2 -m lora_course.finetune \\
      --task tickets --out runs/tickets-2p --batch-size 4
  python -m lora_course.finetune --warm    # what `make warm` runs before a class

Several processes: accelerate's --multi_gpu is its switch for "start several processes"
(through torchrun); without a GPU they train on the CPU and talk over gloo, one thread
each unless OMP_NUM_THREADS says otherwise. `accelerate launch --num_processes 2` without
it, or with --cpu, starts ONE process. `torchrun --nproc_per_node 2 -m lora_course.finetune`
works too. accelerate lists the launch settings it filled in with defaults: harmless. Its
--mixed_precision is ignored: the precision is lora_course.devices.choose_precision()'s, as
in the notebooks.
"""

#: What the main process writes into --out beside the adapter (or the full model)
TRAINING_RECORD = "training.json"


def _at_least(low: int):
    """An argparse type: a whole number >= low."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float | None, closed_low: bool):
    """An argparse type: a float in [low, high) (or (low, high) when not closed_low)."""
    import argparse
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value >= low if closed_low else value > low
        if not (above and (high is None or value < high) and math.isfinite(value)):
            left, right = "[" if closed_low else "(", f"{high})" if high is not None else "inf)"
            raise argparse.ArgumentTypeError(f"must be in {left}{low}, {right}, got {value}")
        return value

    return parse


def _targets(text: str) -> tuple[str, ...]:
    """An argparse type: "all" or comma-separated projection names, e.g. q_proj,v_proj."""
    import argparse

    if text.strip() == "all":
        return PROJECTIONS
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PROJECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown projection(s) {', '.join(unknown) or repr(text)}; "
            f"choose 'all' or among {','.join(PROJECTIONS)}"
        )
    return tuple(name for name in PROJECTIONS if name in names)  # the model's order, no repeats


def _cli_parser():
    import argparse

    from .tasks import TASKS

    recipe = FinetuneConfig.for_runtime("tickets")
    defaults = (
        f"{recipe.steps} steps, batch size {recipe.batch_size}, r={recipe.r}, "
        f"alpha={recipe.alpha:g}, lr={recipe.lr:g}, all 7 projections"
    )

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, not argparse's 13 lines of usage above it
            self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    parser = Parser(
        prog="python -m lora_course.finetune",
        description="Fine-tune SmolLM2-135M-Instruct on a course task: one LoRA adapter (or a\n"
        "full fine-tune) into --out, with training.json (settings, losses, timings) beside it.",
        epilog=CLI_EPILOG.format(defaults=defaults),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--task", choices=list(TASKS), help="the course task to learn")
    add("--out", type=Path, help="folder to write into: empty or new (or --overwrite)")
    add("--steps", type=_at_least(1), help="optimizer steps")
    add("--batch-size", type=_at_least(1), help="rows per micro-batch, per process")
    add("--grad-accum", type=_at_least(1), help="micro-batches accumulated per optimizer step")
    add("--lr", type=_float_in(0, None, closed_low=False), help="peak learning rate")
    add("--r", type=int, help="LoRA rank (1 to the narrowest targeted projection's side)")
    add("--alpha", type=_float_in(0, None, closed_low=False), help="LoRA alpha (scale alpha/r)")
    add("--targets", type=_targets, help="'all' or projections, e.g. q_proj,v_proj")
    add("--method", choices=METHODS, help="lora (default): an adapter; full: every weight")
    add("--schedule", choices=SCHEDULES, help="learning-rate schedule (default constant)")
    add("--warmup-steps", type=_at_least(0), help="linear warmup steps (default 0)")
    add("--lora-dropout", type=_float_in(0, 1, closed_low=True), help="default 0")
    add("--seed", type=int, help="seed of the LoRA initialization and the row order")
    add("--overwrite", action="store_true", help="write into a non-empty --out (files replaced)")
    add("--no-progress", action="store_true", help="no step bar")
    add("--warm", action="store_true", help="instead: train and cache notebook 07's adapters")
    return parser


LORA_ONLY = ("r", "alpha", "targets", "lora_dropout")


def _config_from_args(parser, args) -> FinetuneConfig:
    """The recipe the arguments ask for, or a parser error (exit code 2) saying what is wrong."""
    from .architectures import build_config

    if args.task is None or args.out is None:
        parser.error("give --task and --out (or --warm)")
    method = args.method or "lora"
    given = {
        name: getattr(args, name)
        for name in ("steps", "batch_size", "grad_accum", "lr", "r", "alpha", "targets",
                     "method", "schedule", "warmup_steps", "lora_dropout", "seed")
        if getattr(args, name) is not None
    }  # fmt: skip
    if method != "lora" and set(given) & set(LORA_ONLY):
        options = ", ".join(f"--{name.replace('_', '-')}" for name in LORA_ONLY if name in given)
        parser.error(f"{options} only apply to --method lora, not --method {method}")
    if method == "lora":  # the rank first: FinetuneConfig would only say "at least 1"
        r, targets = given.get("r", FinetuneConfig.r), given.get("targets", FinetuneConfig.targets)
        problem = rank_problem(build_config("SmolLM2-135M"), targets, r)
        if problem:
            parser.error(problem)
    try:
        config = FinetuneConfig.for_runtime(args.task, **given)
    except ValueError as error:  # e.g. "warmup_steps must be in [0, 100)": name the option
        name, _, rest = str(error).partition(" ")
        option = f"--{name.replace('_', '-')}" if name in given else name
        parser.error(f"{option} {rest}")
    train_rows = get_task(config.task).splits["train"][0]
    if config.batch_size > train_rows:
        parser.error(f"--batch-size {config.batch_size} is more than the {train_rows} rows")
    return config


def rank_problem(model_config, targets, r: int) -> str | None:
    """Why rank `r` does not fit `targets` of a Llama-style model, or None if it does.

    A rank above the narrower side of a (in, out) projection adds parameters but no expressive
    power: B A cannot have a rank above min(in, out). Sizes come from counting.projection_shapes.
    """
    from .counting import projection_shapes

    shapes = projection_shapes(model_config)
    narrowest = min(targets, key=lambda name: min(shapes[name]))
    top = min(shapes[narrowest])
    if 1 <= r <= top:
        return None
    (fan_in, fan_out) = shapes[narrowest]
    return (
        f"--r {r} is out of range: the rank must be between 1 and {top}, the narrowest side of the "
        f"targeted projections ({narrowest}: {fan_in} -> {fan_out})"
    )


def _output_problem(out: Path, overwrite: bool) -> str | None:
    """Why `out` cannot receive the results, or None if it can."""
    import os

    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder"
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            return f"--out {out} is not writable"
        if any(out.iterdir()) and not overwrite:
            return f"--out {out} is not empty: choose a new folder, or pass --overwrite"
        return None
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"--out {out} cannot be created: {parent} is not a writable folder"
    return None


def _trainer_view():
    """A TrainerCallback that keeps the Trainer's own world size and is-main-process flag."""
    from transformers import TrainerCallback

    class TrainerView(TrainerCallback):
        world_size, is_main = 1, True

        def on_train_begin(self, args, state, control, **kwargs):
            self.world_size, self.is_main = args.world_size, state.is_world_process_zero

    return TrainerView()


def train_to_folder(config: FinetuneConfig, out: str | Path, progress: bool = True) -> dict | None:
    """Train `config` on SmolLM2 and write the adapter (or model) and training.json into `out`.

    Under `accelerate launch` every process trains; only the main process writes and prints.
    Returns the training record on the main process, None on the others.
    """
    import os

    from accelerate import PartialState

    from .adapters import save_peft_adapter
    from .models import load_smollm2

    out = Path(out)
    precision = choose_precision()
    launcher_precision = os.environ.pop("ACCELERATE_MIXED_PRECISION", "no")  # ours decides
    state = PartialState(cpu=precision.device == "cpu")  # the process group, under a launcher
    if state.is_main_process:
        print(f"precision: {precision}")
        if launcher_precision != "no":
            print(f"(the launcher's --mixed_precision {launcher_precision} is not used)")
    with state.main_process_first():  # the first run converts the weights once, not per process
        model, tokenizer = load_smollm2(dtype=torch.float32, verbose=state.is_main_process)
    view = _trainer_view()
    start = time.perf_counter()
    run = fine_tune_run(model, tokenizer, config, precision, progress=progress, callbacks=[view])
    seconds = time.perf_counter() - start
    record = None
    if view.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if config.method == "lora":
            save_peft_adapter(run.model, out)
        else:
            run.model.save_pretrained(out)
            tokenizer.save_pretrained(out)
        record = {
            "config": dataclasses.asdict(config),
            "processes": view.world_size,
            "effective_batch_size": effective_batch_size(
                config.batch_size, config.grad_accum, view.world_size
            ),
            "threads_per_process": torch.get_num_threads(),
            "precision": str(precision),
            "losses": run.losses,
            "grad_norms": run.grad_norms,
            "learning_rates": run.learning_rates,
            "seconds_per_step": run.seconds_per_step,
            "seconds": seconds,  # the whole fine-tune: tokenizing, the Trainer, every step
        }
        (out / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        what = "adapter" if config.method == "lora" else "model"
        processes = f"{view.world_size} process{'es' if view.world_size > 1 else ''}"
        print(
            f"final loss {run.losses[-1]:.4f} after {config.steps} steps of "
            f"{record['effective_batch_size']} rows ({processes}), {seconds:.1f} s; "
            f"{what} and {TRAINING_RECORD} in {display_path(out)}"
        )
    state.wait_for_everyone()
    if state.use_distributed:
        state.destroy_process_group()
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m lora_course.finetune`: one fine-tune into a folder; `--help` says more.

    Every argument is checked before the model loads; a bad one exits with code 2 and one line.
    """
    import warnings

    parser = _cli_parser()
    args = parser.parse_args(argv)
    if args.warm:
        if any(value not in (None, False) for name, value in vars(args).items() if name != "warm"):
            parser.error("--warm takes no other options")
        warm_caches()
        return 0
    config = _config_from_args(parser, args)
    problem = _output_problem(args.out, args.overwrite)
    if problem:
        parser.error(problem)
    # transformers' own deprecation notice, printed once per process: not the learner's to fix
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    train_to_folder(config, args.out, progress=not args.no_progress)
    return 0
