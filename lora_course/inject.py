"""Put `LoRALinear` into a model by module name, as PEFT's `target_modules` does (notebook 00)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from .counting import ParamCount, count_parameters
from .layers import LoRALinear


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
) -> InjectionReport:
    """Freeze `model` and wrap every nn.Linear named in `target_modules` in a LoRALinear."""
    targets = _as_target_list(target_modules)
    found = {t: [] for t in targets}
    for name, module in model.named_modules():
        for target in targets:
            if matches(name, target):
                found[target].append((name, module))

    missing = [t for t, hits in found.items() if not hits]
    if missing:
        raise ValueError(
            f"target_modules {missing} matched no module. Linear layers in this model are "
            f"named like: {', '.join(_linear_suffixes(model))}."
        )
    for target, hits in found.items():
        for name, module in hits:
            if isinstance(module, LoRALinear):
                raise TypeError(f"{name!r} already has LoRA; inject into a fresh model.")
            if not isinstance(module, nn.Linear):
                raise TypeError(
                    f"target {target!r} matched {name!r}, a {type(module).__name__}; "
                    "LoRALinear can only wrap nn.Linear layers."
                )

    model.requires_grad_(False)  # everything frozen; the new lora_A / lora_B are trainable
    replaced = []
    for hits in found.values():
        for name, module in hits:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, r, alpha, dropout, use_rslora))
            replaced.append(name)
    settings = {"r": r, "alpha": alpha, "dropout": dropout, "use_rslora": use_rslora}
    per_target = {t: len(hits) for t, hits in found.items()}
    return InjectionReport(sorted(replaced), per_target, count_parameters(model), settings)


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
    names = {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names)[:limit] or ["(none: this model has no nn.Linear layers)"]
