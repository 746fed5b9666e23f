"""QLoRA's experiments on whole models: every linear layer round-tripped, and merging (notebook 08).

`round_trip_linears` measures what a 4-bit format does to a model: each targeted weight is
replaced by its quantized-then-dequantized copy (the model keeps computing in full precision, so
only the format's rounding differs). `merged_model` folds a QLoRA adapter into a plain model in
one of three ways, and `requantized_update` measures how much of an adapter's update survives
being rounded back to NF4: lesson 08's merge trap.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .inject import _find_targets, _replace, lora_layers
from .layers import LoRALinear
from .quantization import (
    BLOCK_SIZE,
    NF4Linear,
    nf4_levels,
    per_value,
    quantize_blockwise,
    to_nf4,
    unpack_nibbles,
)
from .targets import PROJECTIONS

MERGE_INTO = ("dequantized", "original", "requantized")  # what `merged_model` can merge into


def bitsandbytes_config(precision):
    """QLoRA's BitsAndBytesConfig: NF4, double quantization, `precision`'s compute (notebook 08).

    The compute dtype follows devices.choose_precision: bf16 where the hardware has it (Ampere
    and newer, CPUs with bf16 instructions), fp16 on a T4 (with loss scaling in the Trainer),
    fp32 otherwise. The layers a 4-bit model keeps in full precision load in its weight dtype.
    """
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=precision.compute_dtype,
    )


@torch.no_grad()
def round_trip_linears(
    model: nn.Module, levels: torch.Tensor, targets=PROJECTIONS, block_size: int = BLOCK_SIZE
) -> list[str]:
    """Replace, in place, each targeted nn.Linear's weight by its blockwise round trip to `levels`.

    Introduced in notebook 08. Returns the names of the layers changed; weights keep their dtype.
    """
    found = _find_targets(model, targets, (nn.Linear,))
    for _, linear in found:
        quantized = quantize_blockwise(linear.weight, levels, block_size)
        linear.weight.copy_(quantized.dequantize(linear.weight.dtype))  # (out, in)
    return sorted(name for name, _ in found)


def stored_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, NF4 layers at their packed size (notebook 08)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()  # tied once
    nf4 = sum(m.nf4.nbytes for m in model.modules() if isinstance(m, NF4Linear))
    return sum(t.numel() * t.element_size() for t in tensors) + nf4


@torch.no_grad()
def merged_model(qlora_model: nn.Module, original: nn.Module, into: str) -> nn.Module:
    """A copy of `original` with each QLoRA layer's update B A (scaled) folded in (notebook 08).

    `qlora_model` is `original` with NF4 linear layers and LoRA branches (quantize_linears, then
    inject_lora, then training); it is not modified. `into` says which weight takes the update:
    "dequantized" (the NF4 weight the adapter was trained on, now in full precision), "original"
    (the full-precision weight before quantization) or "requantized" (the dequantized NF4 weight
    plus the update, quantized to NF4 again: the layer stays 4-bit).
    """
    if into not in MERGE_INTO:
        raise ValueError(f"into must be one of {', '.join(MERGE_INTO)}; got {into!r}")
    layers = lora_layers(qlora_model)
    if not layers or not all(isinstance(layer.base, NF4Linear) for layer in layers.values()):
        raise TypeError("qlora_model needs LoRA layers on NF4 bases: quantize_linears, inject_lora")
    merged = copy.deepcopy(original)
    for name, layer in layers.items():
        target = merged.get_submodule(name)
        delta = layer.get_delta_weight().float()  # (out, in)
        if into == "original":
            weight = target.weight.float() + delta
        else:
            weight = layer.base.nf4.dequantize(torch.float32) + delta  # (out, in)
        if into == "requantized":
            requantized = to_nf4(weight, layer.base.nf4.block_size)
            _replace(merged, name, NF4Linear(requantized, target.bias))
        else:
            target.weight.copy_(weight.to(target.weight.dtype))
    return merged.eval()


@torch.no_grad()
def requantized_update(layer: LoRALinear) -> dict[str, float]:
    """What re-quantizing W_nf4 + update to NF4 keeps of one QLoRA layer's update (notebook 08).

    `codes_changed`: share of the 4-bit codes that differ from the trained-on weight's (and
    `codes_changed_count`, how many). `kept`: the least-squares share of the update in the weight's
    actual change (1: all of it). `off_update`: the part of the actual change that is not the
    update, relative to the update. `update_to_half_gap`: the median over weights of |update| /
    (half the gap to the nearest other level x the block's absmax): a code can change only where
    this exceeds 1.
    """
    if not isinstance(layer.base, NF4Linear):
        raise TypeError(f"a QLoRA layer has an NF4Linear base, not {type(layer.base).__name__}")
    nf4 = layer.base.nf4
    before = nf4.dequantize(torch.float32)  # (out, in): what the adapter was trained on
    delta = layer.get_delta_weight().float()  # (out, in)
    if not delta.any():
        raise ValueError("the adapter's update B A is zero (untrained?): there is nothing to keep")
    after_nf4 = to_nf4(before + delta, nf4.block_size)
    change = (after_nf4.dequantize(torch.float32) - before).flatten()  # (out * in,)
    delta = delta.flatten()
    kept = float(change @ delta / (delta @ delta))  # projection of the change onto the update
    old_codes = unpack_nibbles(nf4.packed).long()  # (out * in,)
    codes = unpack_nibbles(after_nf4.packed).long() != old_codes  # (out * in,)
    gaps = nf4_levels().diff()  # (15,): between neighbouring levels
    half_gap = torch.minimum(F.pad(gaps, (1, 0), value=2.0), F.pad(gaps, (0, 1), value=2.0)) / 2
    threshold = half_gap[old_codes] * per_value(nf4.absmax(), nf4.block_size, len(delta))
    return {
        "codes_changed": codes.float().mean().item(),
        "codes_changed_count": int(codes.sum()),
        "kept": kept,
        "off_update": float((change - kept * delta).norm() / delta.norm()),
        "update_to_half_gap": float((delta.abs() / threshold).median()),
    }
