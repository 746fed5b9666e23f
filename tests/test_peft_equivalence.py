"""The from-scratch code and Hugging Face PEFT agree on the same weights."""

import copy

import pytest
import torch
from conftest import randomize_lora
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from lora_course import (
    LoRALinear,
    count_parameters,
    export_peft_adapter,
    inject_lora,
    peft_lora_linear,
)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_layer_matches_peft_given_the_same_a_and_b(use_rslora):
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    ours = LoRALinear(copy.deepcopy(base), r=4, alpha=8, use_rslora=use_rslora)
    theirs = peft_lora_linear(copy.deepcopy(base), r=4, alpha=8, use_rslora=use_rslora)
    with torch.no_grad():
        ours.lora_B.normal_()
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(5, 32)
    assert ours.scaling == theirs.scaling["default"]
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.get_delta_weight(), theirs.get_delta_weight("default"))
    ours.merge()
    theirs.merge()
    torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight)


def test_trainable_count_matches_peft(base):
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    report = inject_lora(base, ["q_proj", "v_proj"], r=8, alpha=16)
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert (report.params.trainable, report.params.total) == (trainable, total)
    assert count_parameters(peft_model) == report.params


def test_adapter_trained_from_scratch_loads_in_peft_with_same_outputs(base, tokens, tmp_path):
    pristine = copy.deepcopy(base)
    inject_lora(base, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    randomize_lora(base, std=0.05)
    optimizer = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=1e-2)
    base.train()
    for _ in range(3):
        optimizer.zero_grad()
        base(tokens, labels=tokens).loss.backward()
        optimizer.step()
    base.eval()

    export_peft_adapter(base, tmp_path / "peft_adapter")
    loaded = PeftModel.from_pretrained(pristine, tmp_path / "peft_adapter").eval()
    with torch.no_grad():
        expected, got = base(tokens).logits, loaded(tokens).logits
        plain = loaded.get_base_model()
        with loaded.disable_adapter():
            untouched = plain(tokens).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - untouched).abs().max() > 1e-3, "the adapter must change the outputs"
