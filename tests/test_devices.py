"""The device/precision policy, tested through its decisions (no GPU needed)."""

import platform
import warnings

import pytest
import torch

from lora_course import choose_precision, devices


def autocast_settings(precision):
    """(device, dtype) the autocast context is built with, or None when it is a no-op.

    Without a GPU, torch disables a CUDA autocast with a warning but keeps its settings.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        context = precision.autocast()
    if not isinstance(context, torch.autocast):
        return None
    return context.device, context.fast_dtype


def scaler_enabled(precision, monkeypatch):
    """Whether the GradScaler is on; CUDA is faked so a CPU-only torch keeps what it was told."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return precision.grad_scaler().is_enabled()


def test_a_cpu_without_bf16_instructions_trains_in_fp32(monkeypatch):
    monkeypatch.delenv("LORA_COURSE_CPU_BF16", raising=False)
    p = choose_precision(cuda_available=False, cpu_bf16="")
    assert (p.device, p.weight_dtype, p.compute_dtype, p.loss_scaling) == (
        "cpu",
        torch.float32,
        torch.float32,
        False,
    )
    assert p.trainer_kwargs == {"bf16": False, "fp16": False}
    assert not p.grad_scaler().is_enabled()
    assert autocast_settings(p) is None
    assert "no bf16 instructions" in str(p)


@pytest.mark.parametrize("instructions", ["avx512_bf16", "AMX", "Arm bf16"])
def test_a_cpu_with_bf16_instructions_autocasts_over_fp32_weights(instructions, monkeypatch):
    monkeypatch.delenv("LORA_COURSE_CPU_BF16", raising=False)
    p = choose_precision(cuda_available=False, cpu_bf16=instructions)
    assert (p.device, p.weight_dtype, p.compute_dtype) == ("cpu", torch.float32, torch.bfloat16)
    assert not p.loss_scaling, "bf16 has fp32's exponent range: no loss scaling"
    assert p.trainer_kwargs == {"bf16": True, "fp16": False}
    assert autocast_settings(p) == ("cpu", torch.bfloat16)
    assert instructions in str(p) and "LORA_COURSE_CPU_BF16=0" in str(p), "says how to opt out"


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_the_environment_variable_turns_cpu_bf16_off(value, monkeypatch):
    monkeypatch.setenv("LORA_COURSE_CPU_BF16", value)
    p = choose_precision(cuda_available=False, cpu_bf16="avx512_bf16")
    assert p.compute_dtype == torch.float32 and autocast_settings(p) is None
    assert "avx512_bf16" in str(p) and "asks for fp32" in str(p)
    monkeypatch.setenv("LORA_COURSE_CPU_BF16", "1")
    assert choose_precision(cuda_available=False, cpu_bf16="avx512_bf16").compute_dtype == (
        torch.bfloat16
    )
    monkeypatch.setenv("LORA_COURSE_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="LORA_COURSE_CPU_BF16='maybe'"):
        choose_precision(cuda_available=False, cpu_bf16="avx512_bf16")


def test_the_cpu_decision_reads_the_instruction_set(monkeypatch):
    """Like the T4 trap: torch runs bf16 on any CPU (slowly); only the instructions count."""
    monkeypatch.delenv("LORA_COURSE_CPU_BF16", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for amx, avx512_bf16, expected in [
        (True, True, "AMX"),
        (False, True, "avx512_bf16"),
        (False, False, ""),
    ]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert devices.cpu_bf16_instructions() == expected
        dtype = choose_precision(cuda_available=False).compute_dtype
        assert dtype == (torch.bfloat16 if expected else torch.float32)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a build without the probe
    assert devices.cpu_bf16_instructions() == ""


def test_a_cpu_bf16_autocast_step_keeps_fp32_weights_and_gradients():
    """What the Trainer's bf16=True does on a CPU: bf16 matmuls, fp32 parameters and grads."""
    p = choose_precision(cuda_available=False, cpu_bf16="avx512_bf16")
    layer = torch.nn.Linear(8, 4)
    with p.autocast():
        y = layer(torch.randn(3, 8))  # (3, 4)
    y.float().pow(2).mean().backward()
    assert y.dtype == torch.bfloat16
    assert layer.weight.dtype == layer.weight.grad.dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "capability"), [("NVIDIA A100", (8, 0)), ("NVIDIA L4", (8, 9)), ("H100", (9, 0))]
)
def test_ampere_and_newer_use_bf16(name, capability, monkeypatch):
    p = choose_precision(cuda_available=True, capability=capability, device_name=name)
    assert p.device == "cuda"
    assert p.weight_dtype == p.compute_dtype == torch.bfloat16
    assert not p.loss_scaling, "bf16 has fp32's exponent range: no loss scaling"
    assert p.trainer_kwargs == {"bf16": True, "fp16": False}
    assert autocast_settings(p) == ("cuda", torch.bfloat16)
    assert not scaler_enabled(p, monkeypatch)


def test_t4_uses_fp16_with_loss_scaling_and_never_bf16(monkeypatch):
    p = choose_precision(cuda_available=True, capability=(7, 5), device_name="Tesla T4")
    assert p.compute_dtype == torch.float16 and p.loss_scaling
    assert p.weight_dtype == torch.float32, "fp32 master weights; fp16 only inside autocast"
    assert p.trainer_kwargs == {"bf16": False, "fp16": True}
    assert autocast_settings(p) == ("cuda", torch.float16)
    assert scaler_enabled(p, monkeypatch)
    assert "Tesla T4" in str(p) and "loss scaling on" in str(p)


def test_very_old_gpus_fall_back_to_fp32():
    p = choose_precision(cuda_available=True, capability=(5, 2), device_name="Tesla M60")
    assert p.device == "cuda" and p.compute_dtype == torch.float32 and not p.loss_scaling
    assert autocast_settings(p) is None


@pytest.mark.parametrize(
    ("gpu", "capability", "compute_dtype"),
    [("Tesla T4", (7, 5), torch.float16), ("NVIDIA H100 80GB HBM3", (9, 0), torch.bfloat16)],
)
def test_without_arguments_the_gpus_capability_decides(gpu, capability, compute_dtype, monkeypatch):
    """The T4 trap: torch says bf16 is supported there (emulated, slow); the policy must not ask."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: gpu)
    p = choose_precision()
    assert (p.device, p.compute_dtype) == ("cuda", compute_dtype)
    assert gpu in str(p)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_precision().device == "cpu"


def test_autocast_is_a_no_op_in_fp32():
    p = choose_precision(cuda_available=False, cpu_bf16="")
    with p.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("gpu", [(7, 5), (9, 0)])
def test_in_fp32_keeps_the_device_and_drops_every_low_precision_setting(gpu):
    p = choose_precision(cuda_available=True, capability=gpu, device_name="GPU").in_fp32()
    assert (p.device, p.weight_dtype, p.compute_dtype, p.loss_scaling) == (
        "cuda",
        torch.float32,
        torch.float32,
        False,
    )
    cpu = choose_precision(cuda_available=False, cpu_bf16="AMX").in_fp32()
    assert cpu.device == "cpu" and autocast_settings(cpu) is None


@pytest.mark.parametrize(("cuda", "attention"), [(False, "eager"), (True, None)])
def test_training_attention_is_eager_on_a_cpu_and_the_models_own_on_a_gpu(cuda, attention):
    precision = choose_precision(cuda_available=cuda, capability=(8, 0), device_name="A100",
                                 cpu_bf16="")  # fmt: skip
    assert precision.training_attention == attention
