"""Saving and loading only the adapter weights, with checks that they fit (notebook 00).

An adapter is tiny next to its base model, so it is saved alone: the A and B matrices, the LoRA
settings, and a fingerprint of the base weights it was trained on. Loading checks that the model
it is loaded into has the same adapted layers, with the same shapes, and the same base weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .inject import inject_lora, lora_layers
from .layers import LoRALinear

FORMAT = "lora_course-adapter/1"
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter.json"


def base_fingerprint(layers: dict[str, LoRALinear]) -> str:
    """A hash of the frozen base weights under the adapted layers (names, shapes and values).

    Values are hashed after rounding to bf16, so one checkpoint loaded in fp32 or in bf16 gives
    the same fingerprint while a different or modified base does not.
    """
    for name, layer in layers.items():
        if layer.merged:
            raise ValueError(f"{name} is merged: unmerge() first, its weight holds W0 + BA.")
    return _fingerprint({name: layer.base.weight for name, layer in layers.items()})


def _fingerprint(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        weight = weights[name].detach().to("cpu", torch.bfloat16).contiguous()
        digest.update(f"{name}:{tuple(weight.shape)};".encode())
        digest.update(weight.view(torch.int16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def save_adapter(model: nn.Module, folder: str | Path) -> Path:
    """Write the LoRA weights and settings of `model` (only those) to `folder`."""
    layers = require_layers(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        **shared_settings(layers),
        "modules": {name: [m.out_features, m.in_features] for name, m in sorted(layers.items())},
        "base_fingerprint": base_fingerprint(layers),
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A"] = layer.lora_A.detach().contiguous()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach().contiguous()
    save_file(tensors, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_adapter(model: nn.Module, folder: str | Path, check_base: bool = True) -> nn.Module:
    """Load an adapter saved by `save_adapter` into `model`, injecting LoRA layers if needed."""
    config = _read_config(Path(folder))
    modules = config["modules"]
    _check_architecture(model, modules)
    layers = lora_layers(model)
    if layers and (set(layers) != set(modules) or shared_settings(layers)["r"] != config["r"]):
        raise ValueError(
            "model already has LoRA layers that differ from the adapter's "
            f"(r={config['r']} on {len(modules)} layers); load into a model without LoRA."
        )
    if check_base:  # checked before anything changes, so a refused adapter leaves no trace
        if layers:
            found = base_fingerprint(layers)
        else:
            found = _fingerprint({name: model.get_submodule(name).weight for name in modules})
        if found != config["base_fingerprint"]:
            raise ValueError(
                f"adapter was trained on a different base model (fingerprint "
                f"{config['base_fingerprint']}, this model's is {found}): same architecture, "
                "different weights. Load the base it was trained on, or pass check_base=False."
            )
    if not layers:
        settings = {k: config[k] for k in ("r", "alpha", "dropout", "use_rslora")}
        inject_lora(model, list(modules), **settings)
        layers = lora_layers(model)
    tensors = load_file(Path(folder) / WEIGHTS_FILE)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
    return model


def require_layers(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRALinear layers; call inject_lora() first.")
    return layers


def shared_settings(layers: dict[str, LoRALinear]) -> dict:
    found = {(m.r, m.alpha, getattr(m.dropout, "p", 0.0), m.use_rslora) for m in layers.values()}
    if len(found) > 1:
        raise ValueError(f"LoRA layers have different settings {sorted(found)}; save needs one.")
    r, alpha, dropout, use_rslora = found.pop()
    return {"r": r, "alpha": alpha, "dropout": dropout, "use_rslora": use_rslora}


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        hint = ""
        if (folder / "adapter_config.json").is_file():
            hint = " (this looks like a PEFT adapter: load it with PeftModel.from_pretrained)"
        raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}{hint}.")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format={config.get('format')!r}).")
    return config


def _check_architecture(model: nn.Module, modules: dict[str, list[int]]) -> None:
    problems = []
    for name, (out_features, in_features) in modules.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: missing in this model")
            continue
        expected = f"{in_features}->{out_features}"
        found = f"{getattr(module, 'in_features', '?')}->{getattr(module, 'out_features', '?')}"
        if found != expected:
            problems.append(f"{name}: adapter expects {expected}, model has {found}")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(
            "adapter does not fit this model (a different architecture?): "
            + "; ".join(problems[:3])
            + more
        )
