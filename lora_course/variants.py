"""LoRA variants (notebook 09): DoRA, PiSSA and LoRA+ from scratch, and each as PEFT runs it.

`DoRALinear`, `pissa_init` and `loraplus_param_groups` are the course's hand-written versions,
which tests compare with PEFT's; `Variant` and `VARIANTS` are the switches that make PEFT's LoRA
into each variant, for the notebook's comparison (finetune.fine_tune_run).

DoRA (Liu et al., 2024) splits each output row of the adapted weight into a direction and a
learned length: W' = m * (W0 + s B A) / ||W0 + s B A||, the norm taken over each row of the
(out, in) weight, one magnitude per output feature. `DoRALinear` follows PEFT's `use_dora=True`
layer (`peft/tuners/lora/dora.py`) so the two can be read side by side and compared in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LoRALinear


class DoRALinear(LoRALinear):
    """LoRA plus a trainable magnitude per output row: y = m / ||W0 + s B A|| * (W0 + s B A) x + b.

    The row norms are treated as a constant during backpropagation (detached), as the DoRA paper
    suggests (section 4.3) and PEFT does: gradients reach m, A and B but not the norm. No
    dropout: with dropout, PEFT's layer differs (it also applies W0 to the dropped-out input).
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ):
        if not isinstance(base, nn.Linear):
            raise TypeError(f"DoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        if dropout:  # PEFT's DoRA also feeds the dropped-out x through W0: a different layer
            raise ValueError(
                f"DoRALinear has no dropout (the course trains without), got {dropout}"
            )
        super().__init__(base, r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora)
        # B = 0 at the start, so m = ||W0|| per row and the layer starts as the base layer
        self.magnitude = nn.Parameter(self.weight_norm().detach())  # (out,)
        self._merge_scale: torch.Tensor | None = None  # m / norm used by merge, for unmerge

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s B A|| over each output row of the (out, in) weight, shape (out,)."""
        weight = self.base.weight.to(self.lora_A.dtype) + self.get_delta_weight()  # (out, in)
        return torch.linalg.norm(weight, dim=1)  # (out,): one norm per output feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)  # W already holds m * direction
        scale = self.magnitude / self.weight_norm().detach()  # (out,)
        base_out = F.linear(x, self.base.weight)  # (..., out), W0 x without the bias
        x_lora = self.dropout(x).to(self.lora_A.dtype)  # (..., in)
        update = F.linear(F.linear(x_lora, self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        result = scale * (base_out + self.scaling * update.to(base_out.dtype))  # (..., out)
        if self.base.bias is not None:
            result = result + self.base.bias
        return result.to(base_out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- m / ||W0 + s B A|| * (W0 + s B A), row by row (undo with `unmerge`)."""
        if self.merged:
            raise ValueError("already merged: merging again would apply the magnitudes twice.")
        delta = self.get_delta_weight()
        if not torch.isfinite(delta).all() or not torch.isfinite(self.magnitude).all():
            raise ValueError("refusing to merge: the DoRA update contains NaN or inf values.")
        scale = (self.magnitude / self.weight_norm()).unsqueeze(1)  # (out, 1)
        weight = self.base.weight
        weight.copy_((scale * (weight.to(delta.dtype) + delta)).to(weight.dtype))
        self._merge_scale = scale
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W0 = W / (m / norm) - s B A, with the norm stored at merge time."""
        if not self.merged:
            raise ValueError("not merged: there is nothing to unmerge.")
        weight = self.base.weight
        restored = weight.to(self._merge_scale.dtype) / self._merge_scale - self.get_delta_weight()
        weight.copy_(restored.to(weight.dtype))
        self._merge_scale = None
        self.merged = False

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"


def peft_dora_linear(base: nn.Linear, r: int = 8, alpha: float = 16, use_rslora: bool = False):
    """PEFT's DoRA layer (`use_dora=True`) around `base`, built standalone, for the tests."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=use_rslora, use_dora=True)
    layer = PeftLinear(base, "default", config=config, r=r, lora_alpha=alpha)
    layer.base_layer.requires_grad_(False)
    return layer


@torch.no_grad()
def pissa_init(layer: LoRALinear) -> LoRALinear:
    """PiSSA: start A and B at W's top r singular directions and keep only the rest in the base.

    With W = U S Vh, B A takes the top r singular values (split as sqrt(S) on each side and
    divided by the scaling, as PEFT's `init_lora_weights="pissa"` does) and the base becomes
    the residual W - s B A, so base + s B A reproduces W at step 0.
    """
    if layer.merged:
        raise ValueError("initialize PiSSA on an unmerged layer.")
    weight = layer.base.weight  # (out, in)
    U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)  # (out, k), (k,), (k, in)
    S_r = S[: layer.r] / layer.scaling  # (r,)
    layer.lora_A.copy_(torch.diag(S_r.sqrt()) @ Vh[: layer.r])  # (r, in)
    layer.lora_B.copy_(U[:, : layer.r] @ torch.diag(S_r.sqrt()))  # (out, r)
    weight.copy_((weight.float() - layer.get_delta_weight()).to(weight.dtype))  # the residual
    return layer


def loraplus_param_groups(model: nn.Module, lr: float, ratio: float) -> list[dict]:
    """Optimizer groups for LoRA+: every B at `ratio` times A's learning rate `lr`.

    The course's version of PEFT's `create_loraplus_optimizer`, which also puts any other
    one-dimensional trainable tensor (DoRA's magnitudes, biases) in B's group; here anything that
    is neither A nor B keeps `lr`, and the groups say so by name.
    """
    if not (lr > 0 and ratio > 0):
        raise ValueError(f"lr and ratio must be positive, got lr={lr!r}, ratio={ratio!r}")
    groups = {"lora_A": [], "lora_B": [], "other": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            kind = next((k for k in ("lora_A", "lora_B") if k in name), "other")
            groups[kind].append(param)
    if not groups["lora_A"] or not groups["lora_B"]:
        raise ValueError("the model has no trainable lora_A and lora_B: add LoRA before LoRA+.")
    rates = {"lora_A": lr, "lora_B": lr * ratio, "other": lr}
    return [
        {"name": kind, "params": params, "lr": rates[kind]}
        for kind, params in groups.items()
        if params
    ]


@dataclass(frozen=True)
class Variant:
    """A LoRA variant as PEFT runs it: LoraConfig's switches, and LoRA+'s ratio (`VARIANTS`)."""

    use_dora: bool = False  # DoRA: a trainable magnitude per output row
    use_rslora: bool = False  # rsLoRA: scaling alpha / sqrt(r) instead of alpha / r
    init_lora_weights: bool | str = True  # True: A random, B = 0; "pissa": W's top singular vectors
    loraplus_ratio: float | None = None  # LoRA+: B's learning rate over A's; None: one rate

    def lora_config(self, config):
        """`config`'s LoraConfig (a finetune.FinetuneConfig) with this variant's switches."""
        import dataclasses

        return dataclasses.replace(
            config.lora_config(),
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
            init_lora_weights=self.init_lora_weights,
        )

    def optimizer(self, model, lr: float):
        """LoRA+'s AdamW from PEFT's `create_loraplus_optimizer`; None: the Trainer's own AdamW."""
        if self.loraplus_ratio is None:
            return None
        from peft.optimizers import create_loraplus_optimizer

        # weight decay 0 in every group, as the Trainer's recipe (finetune.training_settings)
        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=self.loraplus_ratio
        )


#: The variants notebook 09 compares, each a switch away from PEFT's plain LoRA.
VARIANTS = {
    "LoRA": Variant(),
    "rsLoRA": Variant(use_rslora=True),
    "LoRA+": Variant(loraplus_ratio=16),  # the LoRA+ paper's suggested ratio
    "DoRA": Variant(use_dora=True),
    "PiSSA": Variant(init_lora_weights="pissa"),  # a full SVD of each adapted weight
}
