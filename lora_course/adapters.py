"""Saving and loading PEFT adapters, refusing a base they were not trained on (notebooks 05 and 07).

An adapter is tiny next to its base model, so it is saved alone, and nothing in PEFT's files
says which weights it was trained on. PEFT catches a different architecture only as a long
size-mismatch error from `load_state_dict`, and a base with the same shapes but other weights
(another fine-tune, a re-quantized or merged copy) not at all: the adapter loads and quietly
computes nonsense. So `save_peft_adapter` (and `export_peft_adapter`, for an adapter trained with
the from-scratch `LoRALinear`) store a fingerprint of the base next to the adapter, and
`load_peft_adapter` checks the shapes and the fingerprint before anything is loaded.

PEFT is imported inside the functions that need it: importing it costs seconds, and every
notebook imports `lora_course`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .inject import lora_layers
from .layers import LoRALinear

BASE_FILE = "lora_course_base.json"  # {"fingerprint": "sha256:..."}, next to PEFT's own files
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's prefix on every saved tensor name


class AdapterMismatchError(ValueError):
    """The adapter does not belong to this base model; the message says how (notebook 07)."""


def base_fingerprint(model: nn.Module) -> str:
    """The sha256 of every base weight, LoRA left out (used by finetune.adapter_folder).

    Returns "sha256:" and 16 hex digits. It is the same for a plain model, for it wrapped by
    PEFT (`get_peft_model`: `.base_layer` names, `lora_` tensors skipped) and for it with the
    from-scratch `LoRALinear` injected (the weight under `<name>.base` counts as `<name>`'s).

    The bf16 trick: every value is rounded to bf16 before it is hashed. bf16 is fp32 with the
    low 16 mantissa bits rounded away, so a checkpoint loaded in fp32 and the same checkpoint
    loaded in bf16 hash alike, while a base with other weights (fine-tuned, modified, merged)
    does not, unless the change is below bf16's resolution. A merged model is refused: its
    weights hold W0 + BA, not the base. Unmerging restores W0 only up to fp32 rounding: enough
    when W0 holds bf16 values (a bf16 checkpoint), not always otherwise, where one weight in a
    few thousand can land on the other side of a bf16 rounding step; fingerprint before merging.
    """
    for name, module in model.named_modules():
        if getattr(module, "merged", False):  # PEFT's layers and LoRALinear both say so
            raise ValueError(
                f"{name or 'the model'} has merged LoRA weights (W0 + BA), not the base's: "
                "unmerge first (unmerge() or unmerge_adapter()), or better, take the fingerprint "
                "before merging (unmerging restores W0 only up to rounding)."
            )
    digest = hashlib.sha256()
    weights = _base_weights(model)
    for name in sorted(weights):
        weight = weights[name].detach().to("cpu", torch.bfloat16).contiguous()
        digest.update(f"{name}:{tuple(weight.shape)};".encode())
        digest.update(weight.view(torch.int16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def check_adapter_fits(model: nn.Module, folder: str | Path, check_weights: bool = True) -> None:
    """Raise AdapterMismatchError if the adapter in `folder` does not fit `model` (notebook 07).

    Shapes are checked first (a different architecture or size); then, unless `check_weights`
    is False, the fingerprint saved with the adapter against this model's.
    """
    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {folder}: not a saved PEFT adapter.")
    problems = _shape_problems(model, folder / ADAPTER_WEIGHTS)
    if problems:
        raise _mismatch(
            "adapter does not fit this model (a different architecture or size?)", problems
        )
    if not check_weights:
        return
    record_file = folder / BASE_FILE
    if not record_file.is_file():
        raise _mismatch(
            f"{folder} has no {BASE_FILE}, so the base it was trained on is unknown; save it with "
            "save_peft_adapter, or load with check_weights=False if you know it matches"
        )
    saved, found = json.loads(record_file.read_text())["fingerprint"], base_fingerprint(model)
    if found != saved:
        raise _mismatch(
            f"adapter was trained on a different base: same shapes, different weights (base "
            f"fingerprint {saved}, this model's {found}). A fine-tuned, merged or re-quantized "
            "copy of the base counts as different; load the original base"
        )


def save_peft_adapter(peft_model, folder: str | Path, base: nn.Module | None = None) -> Path:
    """PEFT's `save_pretrained`, plus the fingerprint of the base it was trained on (notebook 05).

    Pass `base` when `peft_model` wraps a copy of it; otherwise the wrapped model is used.
    """
    fingerprint = base_fingerprint(base if base is not None else peft_model)  # before writing
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as staging:
        peft_model.save_pretrained(staging)
        _write_record(Path(staging), fingerprint)
        # Move each finished file in with one atomic rename, adapter_config.json last: whoever
        # sees that file (cached_adapter, a notebook running beside this one) finds it complete.
        files = sorted(Path(staging).iterdir(), key=lambda path: path.name == "adapter_config.json")
        for path in files:
            if path.is_dir():  # an adapter saved under a name other than "default"
                shutil.rmtree(folder / path.name, ignore_errors=True)
            os.replace(path, folder / path.name)
    return folder


def load_peft_adapter(
    model, folder: str | Path, adapter_name: str = "default", check_weights: bool = True
):
    """Check the adapter fits, then load it as a PeftModel or one more adapter (notebook 07)."""
    from peft import PeftModel

    check_adapter_fits(model, folder, check_weights=check_weights)  # before anything changes
    if isinstance(model, PeftModel):
        model.load_adapter(str(folder), adapter_name=adapter_name)
        return model
    return PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name)


def export_peft_adapter(
    model: nn.Module,
    folder: str | Path,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write the from-scratch LoRALinear adapter as a PEFT adapter with its base's fingerprint.

    `PeftModel.from_pretrained` and `load_peft_adapter` both load the folder.
    """
    from peft import LoraConfig

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRALinear layers; call inject_lora() first.")
    settings = _shared_settings(layers)
    fingerprint = base_fingerprint(model)  # before writing: refuses a merged model
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
        for kind, weight in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
            tensors[f"{PEFT_PREFIX}{name}.{kind}.weight"] = weight.detach().contiguous()
    save_file(tensors, folder / ADAPTER_WEIGHTS)
    _write_record(folder, fingerprint)
    return folder


def _base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's own weights by their plain names, PEFT or from-scratch LoRA removed."""
    model = _unwrap(model)
    scratch = {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    weights = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:  # PEFT's lora_A.default.weight, our <name>.lora_A
            continue
        name = name.replace(".base_layer", "")  # PEFT keeps the wrapped nn.Linear there
        owner, _, leaf = name.rpartition(".")
        parent, _, child = owner.rpartition(".")
        if child == "base" and parent in scratch:  # LoRALinear keeps it under <name>.base
            name = f"{parent}.{leaf}" if parent else leaf
        weights[name] = tensor
    return weights


def _shape_problems(model: nn.Module, weights_file: Path) -> list[str]:
    """One line per adapted module that is missing or whose in / out widths differ."""
    modules = {}
    for name, module in _unwrap(model).named_modules():  # a PEFT wrapper, then its base_layer
        modules.setdefault(name.replace(".base_layer", ""), module)
    widths: dict[str, list] = {}  # module name -> [in, out] that the adapter expects
    with safe_open(weights_file, framework="pt") as tensors:
        for key in tensors.keys():  # base_model.model.<module>.lora_A.weight
            module_name, _, kind = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
            if not module_name:
                continue  # not a LoRA tensor (a modules_to_save copy)
            shape = tensors.get_slice(key).get_shape()
            expected = widths.setdefault(module_name, [None, None])
            if kind == "A.weight":
                expected[0] = shape[1]  # A is (r, in)
            elif kind == "B.weight":
                expected[1] = shape[0]  # B is (out, r)
    problems = []
    for name, (n_in, n_out) in widths.items():
        module = modules.get(name)
        if module is None:
            problems.append(f"{name}: not in this model")
            continue
        found = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if (n_in is not None and n_in != found[0]) or (n_out is not None and n_out != found[1]):
            problems.append(
                f"{name}: adapter in->out {n_in}->{n_out}, model {found[0]}->{found[1]}"
            )
    return problems


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a PeftModel (whose names all start with base_model.model.)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _mismatch(message: str, problems: Sequence[str] = ()) -> AdapterMismatchError:
    """The error for a refused adapter: the message, then at most 3 problems and how many more."""
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        message += ": " + "; ".join(problems[:3]) + more
    return AdapterMismatchError(message + ".")


def _write_record(folder: Path, fingerprint: str) -> None:
    (folder / BASE_FILE).write_text(json.dumps({"fingerprint": fingerprint}, indent=2) + "\n")


def _shared_settings(layers: dict[str, LoRALinear]) -> dict:
    found = {(m.r, m.alpha, getattr(m.dropout, "p", 0.0), m.use_rslora) for m in layers.values()}
    if len(found) > 1:
        raise ValueError(f"LoRA layers have different settings {sorted(found)}; export needs one.")
    r, alpha, dropout, use_rslora = found.pop()
    return {"r": r, "alpha": alpha, "dropout": dropout, "use_rslora": use_rslora}
