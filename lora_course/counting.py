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


# model_type values whose decoder blocks have exactly the seven separate projections of
# lora_course.targets.PROJECTIONS, shaped as projection_shapes says (checked in transformers'
# modeling_llama.py, modeling_mistral.py and modeling_qwen2.py)
LLAMA_STYLE_MODEL_TYPES = ("llama", "mistral", "qwen2")


def lora_pair_parameters(in_features: int, out_features: int, r: int) -> int:
    """Parameters of one LoRA pair: A is (r, in) and B is (out, r), so r * (in + out)."""
    return r * (in_features + out_features)


def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one Llama-style decoder block, from a model config.

    Grouped-query attention: k_proj and v_proj output num_key_value_heads * head_dim, which is
    narrower than q_proj's num_attention_heads * head_dim whenever there are fewer KV heads.
    Any other architecture is refused: its layers may be fused (Phi-3's qkv_proj) or shaped
    otherwise, and a count from these formulas would be silently wrong.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_STYLE_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not a Llama-style block (separate q/k/v/o and "
            f"gate/up/down layers: {', '.join(LLAMA_STYLE_MODEL_TYPES)}), so its count cannot come "
            "from config fields. Count its layers on the meta device instead: "
            "count_lora_parameters(meta_model(config), targets, r)"
        )
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
    """Trainable LoRA parameters for `targets` (projection names) at rank r, from a config.

    Llama-style configs only (see projection_shapes); count_lora_parameters counts any model.
    """
    shapes = projection_shapes(config)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"unknown projections {unknown}; choose from {', '.join(shapes)}")
    per_block = sum(lora_pair_parameters(*shapes[t], r) for t in targets)
    return config.num_hidden_layers * per_block


def count_lora_parameters(model: nn.Module, targets, r: int) -> int:
    """Trainable LoRA parameters for `targets` at rank r, walking the linear layers (notebook 03).

    Works for any model whose adapted layers are nn.Linear, and on the `meta` device, where a model
    has shapes but no memory (lora_course.architectures.meta_model). `targets` is a list of names
    matched as PEFT matches a list: a layer is adapted when its whole name equals a target or
    ends with "." + the target ("q_proj", "self_attn.q_proj"); each adds r * (in + out). Unlike
    PEFT, a target that matches nothing is an error, not silently skipped.
    """
    if isinstance(targets, str):  # PEFT reads a string as one regex over the whole name
        raise TypeError(f"targets must be a list of layer names, like [{targets!r}]")
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty: name at least one linear layer, e.g. ['q_proj']")
    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    hits = {t: {n for n in linear if n == t or n.endswith(f".{t}")} for t in targets}
    missing = [t for t, names in hits.items() if not names]
    if missing:
        kinds = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise ValueError(f"{missing} match no linear layer; this model's are: {', '.join(kinds)}")
    adapted = set().union(*hits.values())  # a layer named by two targets is adapted once
    return sum(
        lora_pair_parameters(linear[n].in_features, linear[n].out_features, r) for n in adapted
    )


def rank_for_budget(config, targets, budget: int) -> int:
    """The rank whose LoRA parameter count for `targets` comes closest to `budget` (notebook 06)."""
    if budget < 1:
        raise ValueError(f"budget must be a positive number of parameters, got {budget}")
    per_rank = lora_parameters(config, targets, r=1)  # the count is linear in r
    return max(1, round(budget / per_rank))
