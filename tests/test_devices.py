"""The device/precision policy, tested through its decisions (no GPU needed)."""

import pytest
import torch

from lora_course import choose_precision


def test_cpu_trains_in_fp32_without_loss_scaling():
    p = choose_precision(cuda_available=False)
    assert (p.device, p.weight_dtype, p.compute_dtype, p.loss_scaling) == (
        "cpu",
        torch.float32,
        torch.float32,
        False,
    )
    assert p.trainer_kwargs == {"bf16": False, "fp16": False}
    assert not p.grad_scaler().is_enabled()


@pytest.mark.parametrize(("name", "capability"), [("A100", (8, 0)), ("H100", (9, 0))])
def test_ampere_and_newer_use_bf16(name, capability):
    p = choose_precision(cuda_available=True, capability=capability, device_name=name)
    assert p.device == "cuda"
    assert p.weight_dtype == p.compute_dtype == torch.bfloat16
    assert not p.loss_scaling, "bf16 has fp32's exponent range: no loss scaling"
    assert p.trainer_kwargs == {"bf16": True, "fp16": False}


def test_t4_uses_fp16_with_loss_scaling_and_never_bf16():
    p = choose_precision(cuda_available=True, capability=(7, 5), device_name="Tesla T4")
    assert p.compute_dtype == torch.float16 and p.loss_scaling
    assert p.weight_dtype == torch.float32, "fp32 master weights; fp16 only inside autocast"
    assert p.trainer_kwargs == {"bf16": False, "fp16": True}
    assert "Tesla T4" in str(p) and "loss scaling on" in str(p)


def test_very_old_gpus_fall_back_to_fp32():
    p = choose_precision(cuda_available=True, capability=(5, 2), device_name="Tesla M60")
    assert p.device == "cuda" and p.compute_dtype == torch.float32 and not p.loss_scaling


def test_this_machine_gets_the_policy_for_its_hardware():
    p = choose_precision()
    assert p.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_autocast_is_a_no_op_in_fp32():
    p = choose_precision(cuda_available=False)
    with p.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
