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


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_PRESETS = {  # the three choices compared in notebooks 03 and 06
    "q, v": ("q_proj", "v_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all linear": PROJECTIONS,
}


def lora_pair_parameters(in_features: int, out_features: int, r: int) -> int:
    """Parameters of one LoRA pair: A is (r, in) and B is (out, r), so r * (in + out)."""
    return r * (in_features + out_features)


def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one Llama-style decoder block, from a model config.

    Grouped-query attention: k_proj and v_proj output num_key_value_heads * head_dim, which is
    narrower than q_proj's num_attention_heads * head_dim whenever there are fewer KV heads.
    """
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width = config.num_attention_heads * head_dim
    kv_width = config.num_key_value_heads * head_dim
    return {
        "q_proj": (hidden, q_width),
        "k_proj": (hidden, kv_width),
        "v_proj": (hidden, kv_width),
        "o_proj": (q_width, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def lora_parameters(config, targets, r: int) -> int:
    """Trainable LoRA parameters for `targets` (projection names) at rank r, from a config."""
    shapes = projection_shapes(config)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"unknown projections {unknown}; choose from {', '.join(shapes)}")
    per_block = sum(lora_pair_parameters(*shapes[t], r) for t in targets)
    return config.num_hidden_layers * per_block


def rank_for_budget(config, targets, budget: int) -> int:
    """The rank whose LoRA parameter count for `targets` comes closest to `budget` (notebook 06)."""
    if budget < 1:
        raise ValueError(f"budget must be a positive number of parameters, got {budget}")
    per_rank = lora_parameters(config, targets, r=1)  # the count is linear in r
    return max(1, round(budget / per_rank))
