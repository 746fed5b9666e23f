"""Checkpoint compatibility for PEFT adapters: refuse a base they were not trained on (notebook 07).

PEFT itself catches a different architecture only as a long size-mismatch error from
`load_state_dict`, and a base with the same shapes but different weights (another fine-tune,
a quantized copy, a merged model) not at all: the adapter loads and quietly computes nonsense.
`save_peft_adapter` therefore stores a fingerprint of the base next to the adapter, and
`load_peft_adapter` checks shapes and fingerprint before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from torch import nn

from .adapters import _fingerprint

BASE_FILE = "lora_course_base.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterMismatchError(ValueError):
    """The adapter does not belong to this base model; the message says how they differ."""


def base_weights(model: nn.Module) -> dict:
    """The base model's own weights by their plain names, with any PEFT LoRA wrapping removed."""
    if hasattr(model, "get_base_model"):  # a PeftModel
        model = model.get_base_model()
    weights = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        weights[name.replace(".base_layer", "")] = tensor
    return weights


def base_fingerprint_of(model: nn.Module) -> str:
    """sha256 over every base weight (bf16-rounded, so fp32 and bf16 copies agree); ~1 s."""
    for module in model.modules():
        if getattr(module, "merged", False):
            raise ValueError("the model has merged LoRA weights: unmerge before fingerprinting.")
    return _fingerprint(base_weights(model))


def describe_base(model: nn.Module) -> dict:
    """Architecture facts that tell two checkpoints apart before any weight is compared."""
    config = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "vocab_size")  # fmt: skip
    return {key: getattr(config, key, None) for key in keys}


def save_peft_adapter(peft_model, folder: str | Path, base: nn.Module | None = None) -> Path:
    """`save_pretrained` the adapter, plus the fingerprint of the base it was trained on.

    Pass `base` when `peft_model` wraps a copy of it; otherwise the wrapped model is used.
    """
    folder = Path(folder)
    peft_model.save_pretrained(str(folder))
    base = base if base is not None else peft_model
    record = {"fingerprint": base_fingerprint_of(base), "architecture": describe_base(base)}
    (folder / BASE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def check_adapter_fits(model: nn.Module, folder: str | Path, check_weights: bool = True) -> None:
    """Raise AdapterMismatchError if the adapter in `folder` was not trained on `model`."""
    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {folder}: not a saved PEFT adapter.")
    _check_shapes(model, folder)
    record_file = folder / BASE_FILE
    if not check_weights:
        return
    if not record_file.is_file():
        raise AdapterMismatchError(
            f"{folder} has no {BASE_FILE}, so the base it was trained on is unknown; save it with "
            "save_peft_adapter, or load with check_weights=False if you know it matches."
        )
    record = json.loads(record_file.read_text())
    found = base_fingerprint_of(model)
    if found != record["fingerprint"]:
        raise AdapterMismatchError(
            f"adapter was trained on a different base: same shapes, different weights (base "
            f"fingerprint {record['fingerprint']}, this model's {found}). A fine-tuned, merged or "
            "re-quantized copy of the base counts as different; load the original base."
        )


def load_peft_adapter(model, folder: str | Path, adapter_name: str = "default", **kwargs):
    """Check the adapter fits, then load it: a PeftModel from a plain base, or one more adapter."""
    from peft import PeftModel

    check_adapter_fits(model, folder, **kwargs)
    if isinstance(model, PeftModel):
        model.load_adapter(str(folder), adapter_name=adapter_name)
        return model
    return PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name)


def _check_shapes(model: nn.Module, folder: Path) -> None:
    """Every lora_A / lora_B must fit the in / out features of the module it adapts."""
    modules = dict((name.replace(".base_layer", ""), m) for name, m in _base(model).named_modules())
    problems = []
    with safe_open(folder / ADAPTER_WEIGHTS, framework="pt") as tensors:
        for key in tensors.keys():  # base_model.model.<module>.lora_A.weight
            module_name, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
            shape = tensors.get_slice(key).get_shape()
            module = modules.get(module_name)
            if module is None:
                problems.append(f"{module_name}: not in this model")
            elif kind.startswith("A") and shape[1] != module.in_features:
                problems.append(f"{module_name}: adapter in {shape[1]}, model {module.in_features}")
            elif kind.startswith("B") and shape[0] != module.out_features:
                problems.append(
                    f"{module_name}: adapter out {shape[0]}, model {module.out_features}"
                )
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise AdapterMismatchError(
            "adapter does not fit this model (a different architecture or size?): "
            + "; ".join(problems[:3]) + more
        )  # fmt: skip


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model
