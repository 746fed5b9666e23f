"""A plain training loop with a progress bar, and held-out loss (notebook 01, used throughout).

Written out rather than hidden in `Trainer` so each step can be read: batch, forward, loss,
backward, optimizer step. Notebook 05 trains with transformers' Trainer instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from .data import collate
from .devices import Precision, choose_precision
from .finetune import length_grouped_order


def batches(rows, batch_size: int, pad_id: int, steps: int, seed: int = 0) -> Iterator[dict]:
    """`steps` batches of rows of similar length in random order: make_trainer's (notebook 05).

    The order is finetune.length_grouped_order: every row once per epoch, sorted by length within
    small groups so that little padding is computed. Each batch also carries the answer positions
    (data.answer_positions): the model computes its output layer only where the loss looks.
    """
    if not 1 <= batch_size <= len(rows):
        raise ValueError(f"batch_size must be between 1 and the {len(rows)} rows, got {batch_size}")
    lengths = [len(row["input_ids"]) for row in rows]
    order = length_grouped_order(lengths, batch_size, steps, seed)
    for start in range(0, len(order), batch_size):
        rows_in_batch = [rows[i] for i in order[start : start + batch_size]]
        yield collate(rows_in_batch, pad_id, answer_logits_only=True)


@contextmanager
def training_attention(model, precision: Precision):
    """Train with `precision.training_attention` (eager on a CPU), then restore the model's own."""
    before, during = model.config._attn_implementation, precision.training_attention
    if during is None or during == before:
        yield
        return
    model.set_attn_implementation(during)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def train(
    model,
    rows,
    *,
    steps: int,
    lr: float,
    pad_id: int,
    batch_size: int = 8,
    seed: int = 0,
    precision: Precision | None = None,
    desc: str = "training",
    progress: bool = True,
    max_grad_norm: float | None = None,
) -> list[float]:
    """Train the parameters that require grad with AdamW; return the loss of every step.

    `max_grad_norm` clips the gradient's total norm, as the Trainer does (notebook 05).
    """
    precision = precision or choose_precision()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires grad: nothing to train (did you freeze them all?)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scaler = precision.grad_scaler()  # active only for fp16, where gradients would underflow
    device = next(model.parameters()).device
    stream = batches(rows, batch_size, pad_id, steps, seed)
    losses = []
    model.train()
    with training_attention(model, precision):  # eager attention on a CPU: faster to train
        for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in next(stream).items()}
            with precision.autocast():
                loss = model(**batch).loss  # mean cross-entropy over answer tokens
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {len(losses)}; lower lr"
                )
            scaler.scale(loss).backward()
            if max_grad_norm is not None:
                scaler.unscale_(optimizer)  # clip the true gradient, not the loss-scaled one
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    model.eval()
    return losses


def evaluate_loss(model, rows, pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per answer token over `rows` (prompt tokens don't count)."""
    from .evaluation import answer_scores  # one teacher-forced pass gives the loss (notebook 06)

    return answer_scores(model, rows, pad_id, batch_size).loss


def run_lora(
    base_model,
    train_rows,
    eval_rows,
    *,
    targets,
    r: int,
    alpha: float,
    lr: float,
    steps: int,
    pad_id: int,
    use_rslora: bool = False,
    batch_size: int = 8,
    seed: int = 0,
    desc: str | None = None,
    precision: Precision | None = None,
    progress: bool = True,
    keep_model: bool = False,
    max_grad_norm: float | None = None,
) -> dict:
    """One LoRA experiment on a fresh copy of `base_model`: inject, train, evaluate (notebook 04).

    The base model is never modified. Every run with the same seed sees the same batches and
    starts from the same A (B is zero), so runs differ only in the settings being compared.
    `precision` (default: choose_precision()) sets the copy's weight dtype and the autocast.
    `progress=False` hides the step bar, for a sweep that shows one bar over its runs instead.
    `base_model` may hold 4-bit layers (quantize_linears): QLoRA (notebook 08). The result has the
    held-out loss and exact share of `eval_rows` (evaluation.answer_scores), and with
    `keep_model=True` the trained model too. `max_grad_norm` clips as train() does (default: no
    clipping; finetune.MAX_GRAD_NORM is the Trainer's).
    """
    import copy
    import time

    from .inject import inject_lora

    precision = precision or choose_precision()
    model = copy.deepcopy(base_model).to(precision.weight_dtype)
    torch.manual_seed(seed)  # same A initialization for every run
    inject_lora(model, targets, r=r, alpha=alpha, use_rslora=use_rslora)
    start = time.perf_counter()
    losses = train(
        model, train_rows, steps=steps, lr=lr, pad_id=pad_id, batch_size=batch_size, seed=seed,
        precision=precision, progress=progress, max_grad_norm=max_grad_norm,
        desc=desc or f"r={r} alpha={alpha:g} lr={lr:g}{' rsLoRA' if use_rslora else ''}",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    from .evaluation import answer_scores

    scores = answer_scores(model, eval_rows, pad_id)
    result = {"losses": losses, "eval_loss": scores.loss, "exact": scores.accuracy}
    result["seconds_per_step"] = seconds / steps
    return {**result, "model": model} if keep_model else result
