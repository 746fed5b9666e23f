"""Put `LoRALinear` into a model by module name, as PEFT's `target_modules` does (notebook 00)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from .counting import ParamCount, count_parameters
from .layers import LoRALinear
from .quantization import BLOCK_SIZE, NF4Linear


@dataclass
class InjectionReport:
    """What `inject_lora` replaced, per target name, and the resulting parameter count."""

    replaced: list[str]
    per_target: dict[str, int]
    params: ParamCount
    settings: dict = field(default_factory=dict)

    def __str__(self) -> str:
        targets = ", ".join(f"{name} x{n}" for name, n in self.per_target.items())
        r, alpha = self.settings.get("r"), self.settings.get("alpha")
        layers = len(self.replaced)
        return f"LoRA r={r}, alpha={alpha} on {layers} layers ({targets})\n{self.params}"


def matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a plain target name: the whole name, or its last dotted parts."""
    return module_name == target or module_name.endswith("." + target)


def inject_lora(
    model: nn.Module,
    target_modules: str | Iterable[str],
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    use_rslora: bool = False,
    layer: type[LoRALinear] = LoRALinear,
) -> InjectionReport:
    """Freeze `model` and wrap every nn.Linear named in `target_modules` in a LoRALinear.

    A layer that `quantize_linears` made 4-bit (an NF4Linear) is wrapped the same way: QLoRA.
    `layer` may be a subclass of LoRALinear with the same arguments (variants.DoRALinear).
    """
    found = _find_targets(model, target_modules, (nn.Linear, NF4Linear))
    model.requires_grad_(False)  # everything frozen; the new lora_A / lora_B are trainable
    for name, module in found:
        _replace(model, name, layer(module, r, alpha, dropout, use_rslora))
    settings = {"r": r, "alpha": alpha, "dropout": dropout, "use_rslora": use_rslora}
    per_target = {t: sum(matches(n, t) for n, _ in found) for t in _as_target_list(target_modules)}
    replaced = sorted(name for name, _ in found)
    return InjectionReport(replaced, per_target, count_parameters(model), settings)


def quantize_linears(
    model: nn.Module, target_modules: str | Iterable[str], block_size: int = BLOCK_SIZE
) -> list[str]:
    """Freeze `model` and store every nn.Linear named in `target_modules` in NF4 (an NF4Linear).

    QLoRA's base: the blocks' linear layers in 4 bits, the embedding, norms and output layer as
    they were. Returns the names of the layers replaced.
    """
    found = _find_targets(model, target_modules, (nn.Linear,))
    model.requires_grad_(False)
    for name, module in found:
        _replace(model, name, NF4Linear.from_linear(module, block_size))
    return sorted(name for name, _ in found)


def _find_targets(model: nn.Module, target_modules, kinds: tuple[type, ...]) -> list:
    """(name, module) of every module a target names, refusing targets that match nothing and
    modules of another kind."""
    targets = _as_target_list(target_modules)
    found = {t: [(n, m) for n, m in model.named_modules() if matches(n, t)] for t in targets}
    missing = [t for t, hits in found.items() if not hits]
    if missing:
        raise ValueError(
            f"target_modules {missing} matched no module. Linear layers in this model are "
            f"named like: {', '.join(_linear_suffixes(model))}."
        )
    unique = {}
    for target, hits in found.items():
        for name, module in hits:
            if isinstance(module, LoRALinear):
                raise TypeError(f"{name!r} already has LoRA; inject into a fresh model.")
            if not isinstance(module, kinds):
                allowed = " or ".join(kind.__name__ for kind in kinds)
                raise TypeError(
                    f"target {target!r} matched {name!r}, a {type(module).__name__}; "
                    f"only {allowed} layers can be replaced here."
                )
            unique[name] = module
    return list(unique.items())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear in `model`, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _as_target_list(target_modules) -> list[str]:
    if isinstance(target_modules, str):
        target_modules = [target_modules]  # a bare "q_proj" means one target, not five letters
    targets = list(target_modules)
    if not targets:
        raise ValueError("target_modules is empty: name at least one layer, e.g. ['q_proj'].")
    bad = [t for t in targets if not isinstance(t, str) or not t]
    if bad:
        raise TypeError(f"target_modules must be non-empty strings, got {bad!r}.")
    return list(dict.fromkeys(targets))  # drop repeats, keep order


def _linear_suffixes(model: nn.Module, limit: int = 12) -> list[str]:
    linear = (nn.Linear, NF4Linear)
    names = {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, linear)}
    return sorted(names)[:limit] or ["(none: this model has no nn.Linear layers)"]
