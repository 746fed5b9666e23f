"""DoRA from scratch against PEFT's `use_dora=True` layer, on the same weights (tiny shapes)."""

import copy

import pytest
import torch
from torch import nn

from lora_course.variants import DoRALinear, peft_dora_linear


def pair(out_features=6, in_features=10, r=3, alpha=6.0, bias=True, use_rslora=False, seed=0):
    """Our DoRA layer and PEFT's around copies of one base, with the same A, B and magnitudes."""
    torch.manual_seed(seed)
    base = nn.Linear(in_features, out_features, bias=bias)
    ours = DoRALinear(copy.deepcopy(base), r=r, alpha=alpha, use_rslora=use_rslora)
    theirs = peft_dora_linear(copy.deepcopy(base), r=r, alpha=alpha, use_rslora=use_rslora)
    with torch.no_grad():
        ours.lora_B.normal_()  # a non-zero update, so that the norm moves away from ||W0||
        ours.magnitude.mul_(torch.rand(out_features) + 0.5)  # and magnitudes that differ from it
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
        theirs.lora_magnitude_vector["default"].weight.copy_(ours.magnitude)
    return ours, theirs


def test_starts_as_the_base_layer_with_row_norms_as_magnitudes():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    layer = DoRALinear(copy.deepcopy(base), r=3)
    x = torch.randn(4, 10)  # (batch, in)
    torch.testing.assert_close(layer(x), base(x))
    torch.testing.assert_close(layer.magnitude, base.weight.norm(dim=1))  # (out,): per output row
    assert layer.magnitude.shape == (6,)


def test_magnitudes_equal_pefts_at_initialization():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    ours = DoRALinear(copy.deepcopy(base), r=3)
    theirs = peft_dora_linear(copy.deepcopy(base), r=3)
    torch.testing.assert_close(ours.magnitude, theirs.lora_magnitude_vector["default"].weight)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_forward_equals_pefts(bias, use_rslora):
    ours, theirs = pair(bias=bias, use_rslora=use_rslora)
    x = torch.randn(2, 5, 10)  # (batch, tokens, in)
    torch.testing.assert_close(ours(x), theirs(x))


def test_gradients_equal_pefts_and_skip_the_norm():
    ours, theirs = pair()
    x = torch.randn(4, 10)  # (batch, in)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(
        ours.magnitude.grad, theirs.lora_magnitude_vector["default"].weight.grad
    )
    torch.testing.assert_close(ours.lora_A.grad, theirs.lora_A["default"].weight.grad)
    torch.testing.assert_close(ours.lora_B.grad, theirs.lora_B["default"].weight.grad)
    assert ours.base.weight.grad is None  # frozen


def test_merge_equals_unmerged_and_pefts_merge_and_unmerge_restores():
    ours, theirs = pair()
    x = torch.randn(4, 10)  # (batch, in)
    unmerged = ours(x)
    original = ours.base.weight.detach().clone()
    ours.merge()
    theirs.merge()
    torch.testing.assert_close(ours(x), unmerged)
    torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight)
    with pytest.raises(ValueError, match="already merged"):
        ours.merge()
    ours.unmerge()
    torch.testing.assert_close(ours.base.weight, original)
    torch.testing.assert_close(ours(x), unmerged)
    with pytest.raises(ValueError, match="not merged"):
        ours.unmerge()


def test_per_column_norm_is_a_different_layer():
    """The common mistake (norms over input columns) gives other outputs once B is non-zero."""
    ours, _ = pair()
    x = torch.randn(4, 10)  # (batch, in)
    weight = ours.base.weight + ours.get_delta_weight()  # (out, in)
    per_column = weight / weight.norm(dim=0, keepdim=True)  # (out, in): each input column unit
    assert not torch.allclose(ours(x), x @ (per_column * ours.magnitude.unsqueeze(1)).T)


def test_refuses_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="nn.Linear"):
        DoRALinear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="rank r"):
        DoRALinear(nn.Linear(4, 4), r=5)
    with pytest.raises(ValueError, match="no dropout"):
        DoRALinear(nn.Linear(4, 4), r=2, dropout=0.1)


def test_pissa_reproduces_the_weight_at_step_zero_and_equals_pefts():
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    from lora_course import LoRALinear
    from lora_course.variants import pissa_init

    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    x = torch.randn(4, 10)  # (batch, in)
    ours = pissa_init(LoRALinear(copy.deepcopy(base), r=3, alpha=6))
    config = LoraConfig(r=3, lora_alpha=6, init_lora_weights="pissa")
    theirs = PeftLinear(copy.deepcopy(base), "default", config=config, r=3, lora_alpha=6)
    torch.testing.assert_close(ours(x), base(x))  # base + s B A == W at step 0
    torch.testing.assert_close(ours.lora_A, theirs.lora_A["default"].weight)
    torch.testing.assert_close(ours.lora_B, theirs.lora_B["default"].weight)
    torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight)  # the residual
    singular = torch.linalg.svdvals(ours.base.weight)  # the residual keeps the rest of W's spectrum
    torch.testing.assert_close(singular[:3], torch.linalg.svdvals(base.weight)[3:6])


def test_a_trained_pissa_layer_merges_and_unmerges_to_its_residual():
    """PiSSA's layer is a LoRALinear on the residual: merge equals unmerged, unmerge restores."""
    from lora_course import LoRALinear
    from lora_course.variants import pissa_init

    torch.manual_seed(0)
    layer = pissa_init(LoRALinear(nn.Linear(10, 6), r=3, alpha=6))
    residual = layer.base.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B.add_(0.1 * torch.randn_like(layer.lora_B))  # as if trained
    x = torch.randn(4, 10)  # (batch, in)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, residual)
    with pytest.raises(ValueError, match="unmerged"):
        layer.merge()
        pissa_init(layer)


def test_loraplus_groups_give_each_parameter_pefts_learning_rate():
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer

    from lora_course import tiny_llama
    from lora_course.variants import loraplus_param_groups

    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(tiny_llama(seed=0), config)
    ours = torch.optim.AdamW(loraplus_param_groups(model, lr=1e-3, ratio=16))
    theirs = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)

    def rate_of(optimizer):
        return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}

    assert rate_of(ours) == rate_of(theirs)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in ours.param_groups:
        assert all(group["name"] in names[id(p)] for p in group["params"])
    assert {g["name"]: g["lr"] for g in ours.param_groups} == {"lora_A": 1e-3, "lora_B": 16e-3}


def test_loraplus_refuses_bad_input():
    from lora_course import tiny_llama
    from lora_course.variants import loraplus_param_groups

    with pytest.raises(ValueError, match="no trainable lora_A"):
        loraplus_param_groups(tiny_llama(seed=0), lr=1e-3, ratio=4)
    with pytest.raises(ValueError, match="positive"):
        loraplus_param_groups(nn.Linear(2, 2), lr=1e-3, ratio=0)


def test_rslora_at_one_rank_is_loraplus_with_ratio_sqrt_r_under_adam():
    """At a fixed rank, alpha / sqrt(r) only speeds up B: Adam's steps ignore a gradient's scale,
    so rsLoRA at lr trains exactly as LoRA with B at sqrt(r) x lr (LoRA+), not as LoRA at a larger
    lr (notebook 09). Checked step by step, without clipping, on the same data."""
    from lora_course import LoRALinear
    from lora_course.variants import loraplus_param_groups

    torch.manual_seed(0)
    base, r, lr = nn.Linear(12, 8), 4, 1e-2
    x, target = torch.randn(16, 12), torch.randn(16, 8)  # (batch, in), (batch, out)
    rs = LoRALinear(copy.deepcopy(base), r=r, alpha=8, use_rslora=True)  # s = 8 / 2 = 4
    plus, faster = (LoRALinear(copy.deepcopy(base), r=r, alpha=8) for _ in range(2))  # s = 2
    for layer in (plus, faster):
        layer.lora_A.data.copy_(rs.lora_A)
    optimizers = {
        "rsLoRA": torch.optim.Adam([rs.lora_A, rs.lora_B], lr=lr),
        "LoRA+ ratio sqrt(r)": torch.optim.Adam(loraplus_param_groups(plus, lr, r**0.5), lr=lr),
        "LoRA at sqrt(r) x lr": torch.optim.Adam([faster.lora_A, faster.lora_B], lr=lr * r**0.5),
    }
    layers = {"rsLoRA": rs, "LoRA+ ratio sqrt(r)": plus, "LoRA at sqrt(r) x lr": faster}
    for _ in range(20):
        for name, layer in layers.items():
            optimizers[name].zero_grad()
            torch.nn.functional.mse_loss(layer(x), target).backward()
            optimizers[name].step()
    with torch.no_grad():
        outputs = {name: layer(x) for name, layer in layers.items()}
    torch.testing.assert_close(
        outputs["rsLoRA"], outputs["LoRA+ ratio sqrt(r)"], rtol=1e-4, atol=1e-5
    )
    assert not torch.allclose(outputs["rsLoRA"], outputs["LoRA at sqrt(r) x lr"], atol=1e-3)
