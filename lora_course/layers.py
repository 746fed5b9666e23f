"""The from-scratch LoRA layer, derived step by step in notebook 02, and PEFT's counterpart.

Names and shapes follow Hugging Face PEFT (`peft/tuners/lora/layer.py`) so the two can be read
side by side: `lora_A` is (r, in_features), `lora_B` is (out_features, r) and
`scaling = alpha / r` (or `alpha / sqrt(r)` for rank-stabilized LoRA). `peft_lora_linear` builds
PEFT's own layer around the same base, so tests can put the two side by side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .quantization import NF4Linear

if TYPE_CHECKING:
    from peft.tuners.lora import Linear as PeftLinear


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: y = W x + b + scaling * B A x.

    The base may also be an `NF4Linear` (a 4-bit weight, QLoRA); such a layer cannot merge.
    """

    def __init__(
        self,
        base: nn.Linear | NF4Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ):
        super().__init__()
        _check_args(base, r, alpha, dropout)
        self.base = base
        self.base.requires_grad_(False)  # W and b stay frozen; only A and B train
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        # Adapter weights live in fp32 even under a bf16/fp16 base (as PEFT does by default):
        # tiny updates to A and B would round away in half precision.
        weight = base.weight
        dtype = weight.dtype if weight.dtype == torch.float64 else torch.float32
        kw = {"device": weight.device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))  # (out, r)
        # A: Kaiming-uniform, like nn.Linear's default init and PEFT's.
        # B: zeros, so B @ A = 0 and the adapted model starts exactly as the base model.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def get_delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to W: scaling * B @ A, shape (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, r) @ (r, in) -> (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)  # (..., out)
        if self.merged:
            return result  # W already holds W0 + delta; adding the branch would count it twice
        x_lora = self.dropout(x).to(self.lora_A.dtype)  # (..., in)
        update = F.linear(F.linear(x_lora, self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return result + (update * self.scaling).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: W <- W + scaling * B A (undo with `unmerge`)."""
        if self.merged:
            raise ValueError("already merged: merging again would add B A to W twice.")
        if isinstance(self.base, NF4Linear):
            raise TypeError(
                "a 4-bit base cannot absorb the update in place: merge into a full-precision copy "
                "of its weight (lesson 08: which copy, and what re-quantizing loses)."
            )
        delta = self.get_delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError("refusing to merge: the LoRA update contains NaN or inf values.")
        self.base.weight += delta.to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again, restoring the base weight (exactly up to rounding)."""
        if not self.merged:
            raise ValueError("not merged: there is nothing to unmerge.")
        self.base.weight -= self.get_delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, "
            f"rslora={self.use_rslora}, merged={self.merged}"
        )


def peft_lora_linear(
    base: nn.Linear, r: int = 8, alpha: float = 16, use_rslora: bool = False
) -> PeftLinear:
    """PEFT's LoRA layer around `base`, built standalone (used by the exercise checks and tests).

    The production counterpart of `LoRALinear`, with adapter name "default". The base is frozen
    here, as `get_peft_model` would do; a bare PEFT layer leaves it trainable. PEFT is imported
    here, not at the top: importing it costs seconds, and every notebook imports lora_course.
    """
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=use_rslora)
    layer = PeftLinear(base, "default", config=config, r=r, lora_alpha=alpha)
    layer.base_layer.requires_grad_(False)
    return layer


def _check_args(base: nn.Module, r: int, alpha: float, dropout: float) -> None:
    if isinstance(base, LoRALinear):
        raise TypeError("this layer already has LoRA: wrap the original nn.Linear instead.")
    if not isinstance(base, nn.Linear | NF4Linear):
        kind = type(base).__name__
        raise TypeError(f"LoRALinear wraps an nn.Linear (or an NF4Linear), got {kind}.")
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"rank r must be an int, got {type(r).__name__} {r!r}.")
    max_r = min(base.in_features, base.out_features)
    if not 1 <= r <= max_r:
        raise ValueError(
            f"rank r={r} is out of range for a {base.in_features}->{base.out_features} layer: "
            f"use 1 <= r <= {max_r} (at r = {max_r} the update is already full rank)."
        )
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
