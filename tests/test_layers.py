"""LoRALinear's invariants, checked on small seeded layers."""

import math

import pytest
import torch
from torch import nn

from lora_course import LoRALinear

torch.manual_seed(0)


def make_layer(r=4, alpha=8, nonzero_b=True, **kw):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=r, alpha=alpha, **kw)
    if nonzero_b:
        with torch.no_grad():
            layer.lora_B.normal_(std=0.5)
    return layer


def test_shapes_and_initialization_follow_peft():
    layer = make_layer(r=4, nonzero_b=False)
    assert layer.lora_A.shape == (4, 16)  # (r, in)
    assert layer.lora_B.shape == (12, 4)  # (out, r)
    assert torch.count_nonzero(layer.lora_B) == 0, "B starts at zero"
    assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel(), "A starts random"
    bound = 1 / math.sqrt(16)  # kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(in), 1/sqrt(in))
    assert layer.lora_A.abs().max() <= bound


def test_zero_initialized_adapter_changes_no_output():
    layer = make_layer(nonzero_b=False, dropout=0.5).train()  # dropout on the branch only
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), layer.base(x))


def test_forward_is_base_plus_scaled_low_rank_update():
    layer = make_layer(r=4, alpha=8)
    x = torch.randn(3, 16)
    by_hand = x @ layer.base.weight.T + layer.base.bias + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), by_hand)
    assert not torch.allclose(layer(x), layer.base(x)), "non-zero B must change the output"


@pytest.mark.parametrize(
    ("r", "alpha", "use_rslora", "expected"),
    [(4, 8, False, 2.0), (8, 16, False, 2.0), (16, 8, False, 0.5), (16, 8, True, 2.0)],
)
def test_scaling_is_what_the_config_says(r, alpha, use_rslora, expected):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 32), r=r, alpha=alpha, use_rslora=use_rslora)
    with torch.no_grad():
        layer.lora_B.normal_()  # with B = 0 any scaling gives the same (zero) update
    low_rank = layer.lora_B @ layer.lora_A  # (out, in), unscaled
    x = torch.randn(3, 32)
    assert layer.scaling == pytest.approx(expected)
    torch.testing.assert_close(layer.get_delta_weight(), expected * low_rank)
    torch.testing.assert_close(layer(x) - layer.base(x), expected * x @ low_rank.T)


def test_merged_and_unmerged_outputs_agree_and_differ_from_base():
    layer = make_layer()
    x = torch.randn(4, 16)
    base_out, unmerged_out = layer.base(x), layer(x)
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, w0 + 2.0 * layer.lora_B @ layer.lora_A)
    torch.testing.assert_close(layer(x), unmerged_out, rtol=1e-6, atol=1e-6)
    assert (layer(x) - base_out).abs().max() > 1e-2


def test_unmerge_restores_the_base_weights():
    layer = make_layer()
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)


def test_merge_twice_and_unmerge_unmerged_are_refused():
    layer = make_layer()
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()


def test_merge_refuses_non_finite_updates():
    layer = make_layer()
    w0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer.merge()
    assert torch.equal(layer.base.weight, w0) and not layer.merged


def test_base_is_frozen_and_only_lora_gets_gradients():
    layer = make_layer()
    layer(torch.randn(4, 16)).pow(2).sum().backward()
    assert not layer.base.weight.requires_grad and layer.base.weight.grad is None
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None


def test_half_precision_base_keeps_small_adapter_updates():
    """Under a bf16 base, an optimizer step far below bf16's resolution still moves A."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12).to(torch.bfloat16), r=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    a0 = layer.lora_A.detach().clone()
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16, "the layer answers in its base's dtype"
    out.float().pow(2).sum().backward()
    # Adam's first step moves every entry by about lr = 1e-5; |A| is up to 0.25, where bf16's
    # spacing is about 1e-3: in bf16 the step would round away for all but the tiniest entries.
    torch.optim.Adam([layer.lora_A], lr=1e-5).step()
    moved = (layer.lora_A != a0).float().mean().item()
    assert moved > 0.95, f"only {moved:.0%} of A moved"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"r": 0}, ValueError, "1 <= r <= 12"),
        ({"r": 13}, ValueError, "out of range"),
        ({"r": 2.0}, TypeError, "must be an int"),
        ({"alpha": 0}, ValueError, "alpha must be a positive"),
        ({"dropout": 1.0}, ValueError, "dropout"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        LoRALinear(nn.Linear(16, 12), **kwargs)


def test_only_linear_layers_can_be_wrapped():
    with pytest.raises(TypeError, match=r"wraps an nn.Linear \(or an NF4Linear\), got Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 1))
    with pytest.raises(TypeError, match="already has LoRA"):
        LoRALinear(LoRALinear(nn.Linear(4, 4), r=2))
