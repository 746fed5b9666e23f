"""Serving many adapters on one base: routing a mixed batch, checking a merged copy (notebook 10).

PEFT serves a batch whose rows use different adapters in one forward pass: `generate(...,
adapter_names=[...])` gives each row its adapter's name, or "__base__" for none. Each LoRA layer
then splits the batch by name, adds each group's B A x to the shared W0 x, and puts the rows back
in order. A row sent to the wrong name is answered by the wrong adapter, and nothing fails, so
the list is built from each request's own tag (`route_adapters`, exercise 10.1). PEFT refuses
`adapter_names` on merged layers and on DoRA adapters (notebook 10 shows both errors).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


def route_adapters(tags: Sequence[str | None], routes: Mapping[str, str]) -> list[str]:
    """One adapter name per request, in the requests' order (notebook 10, exercise 10.1).

    A tag in `routes` gets its adapter; None gets the base model ("__base__"). An unknown tag is
    an error rather than a silent fall-back to the base: the client asked for something this
    server does not have.
    """
    names = []
    for row, tag in enumerate(tags):
        if tag is None:
            names.append(BASE)
        elif tag in routes:
            names.append(routes[tag])
        else:
            known = ", ".join(sorted(routes)) or "none"
            raise KeyError(f"request {row} asks for {tag!r}; this server routes {known} (or None)")
    return names


@torch.no_grad()
def served_vs_merged_gap(
    served: nn.Module, merged: nn.Module, batch: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> float:
    """Largest |logit| difference between an adapter model and its merged copy (exercise 10.3).

    Both models run in `dtype` (copies are cast; the originals are untouched) on the same
    `batch` (input_ids and attention_mask); padded positions are left out.
    """
    mask = batch["attention_mask"].bool()  # (B, T)
    logits = []
    for model in (served, merged):
        low = copy.deepcopy(model).to(dtype)
        logits.append(low(**batch).logits.float()[mask])  # (real tokens, vocab)
    return (logits[0] - logits[1]).abs().max().item()
