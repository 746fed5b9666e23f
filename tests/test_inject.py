"""Injecting LoRALinear into a model by target-module name."""

import pytest
import torch
from conftest import randomize_lora

from lora_course import LoRALinear, count_parameters, inject_lora, lora_layers


def test_report_names_every_replaced_layer_and_counts_by_hand(base):
    original_q_proj = base.model.layers[0].self_attn.q_proj
    report = inject_lora(base, ["q_proj", "v_proj"], r=4, alpha=8)
    assert report.replaced == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    assert report.per_target == {"q_proj": 2, "v_proj": 2}
    # per layer r * (in + out): q_proj 64 -> 64, v_proj 64 -> 32 (grouped-query attention)
    assert report.params.trainable == 2 * (4 * (64 + 64) + 4 * (64 + 32))
    assert sorted(lora_layers(base)) == report.replaced, "the model itself holds the new layers"
    q_proj = base.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, LoRALinear) and q_proj.base is original_q_proj  # W0 kept, not copied
    assert "r=4, alpha=8 on 4 layers" in str(report)


def test_zero_initialized_adapter_leaves_logits_unchanged(base, tokens):
    before = base(tokens).logits
    inject_lora(base, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert len(lora_layers(base)) == 2 * 7, "otherwise the logits are equal for a trivial reason"
    assert torch.equal(base(tokens).logits, before)


def test_one_optimizer_step_changes_only_lora_parameters(base, tokens):
    inject_lora(base, ["q_proj", "v_proj"], r=4)
    randomize_lora(base)  # with B = 0 the gradient of A would be zero; make both move
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=1e-2)
    base.train()
    base(tokens, labels=tokens).loss.backward()
    optimizer.step()
    changed = {n for n, p in base.named_parameters() if not torch.equal(p, before[n])}
    lora = {n for n in before if n.endswith(("lora_A", "lora_B"))}
    assert changed == lora


def test_a_plain_string_is_one_target(base):
    assert inject_lora(base, "q_proj").per_target == {"q_proj": 2}


def test_targets_that_match_nothing_are_named(base):
    with pytest.raises(ValueError, match=r"\['qproj'\] matched no module.*q_proj"):
        inject_lora(base, ["q_proj", "qproj"])
    assert not lora_layers(base), "a failed injection leaves the model untouched"
    assert count_parameters(base).trainable == count_parameters(base).total


def test_non_linear_targets_are_refused(base):
    with pytest.raises(TypeError, match="matched 'model.layers.0.self_attn', a LlamaAttention"):
        inject_lora(base, ["self_attn"])


def test_injecting_twice_is_refused(base):
    inject_lora(base, ["q_proj"])
    with pytest.raises(TypeError, match="already has LoRA"):
        inject_lora(base, ["q_proj"])


@pytest.mark.parametrize("targets", [[], [""], [3]])
def test_malformed_target_lists_are_refused(base, targets):
    with pytest.raises((ValueError, TypeError), match="target_modules"):
        inject_lora(base, targets)


def test_inject_lora_can_put_a_lora_subclass_in_place():
    from lora_course import tiny_llama
    from lora_course.variants import DoRALinear

    model = tiny_llama(seed=0)
    report = inject_lora(model, ["q_proj"], r=2, layer=DoRALinear)
    layers = [m for m in model.modules() if isinstance(m, DoRALinear)]
    assert len(layers) == len(report.replaced) == model.config.num_hidden_layers
