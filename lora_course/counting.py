"""Counting parameters, trainable and total (introduced in notebook 00, used throughout)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParamCount:
    """Trainable and total parameter counts; prints like PEFT's print_trainable_parameters()."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.total:,d} "
            f"|| trainable%: {self.percent:.4f}"
        )


def count_parameters(model: nn.Module) -> ParamCount:
    """Count each parameter tensor once (tied embeddings are one tensor, counted once)."""
    params = list(model.parameters())  # .parameters() already skips repeats of a shared tensor
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return ParamCount(trainable, sum(p.numel() for p in params))
