"""A plain training loop with a progress bar, and held-out loss (notebook 01, used throughout).

Written out rather than hidden in `Trainer` so each step can be read: batch, forward, loss,
backward, optimizer step. Notebook 05 trains with transformers' Trainer instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from .data import collate
from .devices import Precision, choose_precision


def batches(rows, batch_size: int, pad_id: int, seed: int = 0) -> Iterator[dict]:
    """Endless shuffled batches: every row once per epoch, reshuffled each epoch."""
    if not 1 <= batch_size <= len(rows):
        raise ValueError(f"batch_size must be between 1 and the {len(rows)} rows, got {batch_size}")
    rng, order = random.Random(seed), list(range(len(rows)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([rows[i] for i in order[start : start + batch_size]], pad_id)


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
    stream = batches(rows, batch_size, pad_id, seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in next(stream).items()}
        with precision.autocast():
            loss = model(**batch).loss  # mean cross-entropy over answer tokens
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {len(losses)}; lower lr")
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


@torch.no_grad()
def evaluate_loss(model, rows, pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per answer token over `rows` (prompt tokens don't count)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # (B, T-1): token t is predicted from tokens < t
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="sum"
        )
        total += loss.item()
        tokens += (targets != -100).sum().item()
    return total / tokens


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
) -> dict:
    """One LoRA experiment on a fresh copy of `base_model`: inject, train, evaluate (notebook 04).

    The base model is never modified. Every run with the same seed sees the same batches and
    starts from the same A (B is zero), so runs differ only in the settings being compared.
    `precision` (default: choose_precision()) sets the copy's weight dtype and the autocast.
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
        precision=precision, desc=desc or f"r={r} alpha={alpha} lr={lr:g}",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "losses": losses,
        "eval_loss": evaluate_loss(model, eval_rows, pad_id),
        "seconds_per_step": seconds / steps,
    }
