"""Bridges between the from-scratch LoRA code and Hugging Face PEFT (notebooks 00 and 02).

PEFT is the production implementation; these helpers put our layer next to it on the same
weights, so tests and notebooks can show the two compute the same thing.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig
from peft.tuners.lora import Linear as PeftLinear
from safetensors.torch import save_file
from torch import nn

from .adapters import require_layers, shared_settings


def peft_lora_linear(
    base: nn.Linear, r: int = 8, alpha: float = 16, use_rslora: bool = False
) -> PeftLinear:
    """PEFT's LoRA layer around `base`, built standalone (adapter name "default").

    The base is frozen here, as `get_peft_model` would do; a bare PEFT layer leaves it trainable.
    """
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=use_rslora)
    layer = PeftLinear(base, "default", config=config, r=r, lora_alpha=alpha)
    layer.base_layer.requires_grad_(False)
    return layer


def export_peft_adapter(
    model: nn.Module,
    folder: str | Path,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write the from-scratch adapter so `peft.PeftModel.from_pretrained` can load it."""
    layers = require_layers(model)
    settings = shared_settings(layers)
    config = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        use_rslora=settings["use_rslora"],
        target_modules=sorted(layers),  # full module names: PEFT matches them exactly
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type,
    )
    folder = Path(folder)
    config.save_pretrained(str(folder))
    tensors = {}
    for name, layer in layers.items():
        # PEFT stores nn.Linear weights: lora_A.weight is (r, in), lora_B.weight is (out, r).
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder
