"""Device and precision, decided in one place for every notebook (introduced in notebook 00).

The rule: CUDA with bf16 where the GPU computes bf16 natively (Ampere, compute capability 8.0,
and newer); fp16 with loss scaling on older GPUs such as the T4 (7.5). On a CPU: bf16 autocast
with fp32 weights where the CPU has bf16 instructions (avx512_bf16 or AMX on x86, bf16 on Arm),
1.4-1.5x faster per training step by itself on the course's machine, about 2x with make_trainer's
other choices (`make bench`); fp32 elsewhere, or when LORA_COURSE_CPU_BF16=0 turns it off.

A T4 is the trap: recent PyTorch reports `torch.cuda.is_bf16_supported()` as True there because
bf16 can be *emulated*, which is slow. We decide on the compute capability instead. The CPU case
is decided the same way: on the instruction set, not on "can torch run bf16 here" (it always can,
slowly).
"""

from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .settings import CPU_BF16_ENV, cpu_bf16_allowed

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: native bf16 tensor cores
FP16_MIN_CAPABILITY = (6, 0)  # Pascal P100 and newer: fp16 arithmetic worth using


@dataclass(frozen=True)
class Precision:
    """Where to run and in which dtypes; build it with `choose_precision()`."""

    device: str  # "cuda" or "cpu"
    weight_dtype: torch.dtype  # dtype the base model's weights are loaded in
    compute_dtype: torch.dtype  # dtype matmuls run in (autocast when it differs from the weights')
    loss_scaling: bool  # fp16 gradients underflow without a GradScaler
    reason: str  # one sentence for the notebook to print

    @property
    def trainer_kwargs(self) -> dict[str, bool]:
        """The `bf16=` / `fp16=` flags for transformers' TrainingArguments."""
        return {
            "bf16": self.compute_dtype == torch.bfloat16,
            "fp16": self.compute_dtype == torch.float16,
        }

    def in_fp32(self) -> Precision:
        """This device with fp32 weights and compute: for comparing arithmetic (notebook 04)."""
        return Precision(self.device, torch.float32, torch.float32, False, "fp32 on purpose")

    @property
    def training_attention(self) -> str | None:
        """Attention kernel to train with: eager on a CPU; None (the model's own) on a GPU.

        On the course's CPU, eager attention made notebook 05's training step about 1.15x faster
        than SDPA, whose CPU backward is slow for short padded rows; SDPA generates faster there
        (about 1.15x), so models keep SDPA and switch only while training (make bench).
        """
        return "eager" if self.device == "cpu" else None

    def autocast(self):
        """Autocast context for a hand-written training loop (a no-op in fp32)."""
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.compute_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only when fp16 needs loss scaling."""
        return torch.amp.GradScaler(self.device, enabled=self.loss_scaling)

    def __str__(self) -> str:
        weights, compute = _short(self.weight_dtype), _short(self.compute_dtype)
        scaling = ", loss scaling on" if self.loss_scaling else ""
        return f"{self.device}: weights {weights}, compute {compute}{scaling} ({self.reason})"


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cpu_bf16_instructions() -> str:
    """The CPU's bf16 instructions: 'AMX', 'avx512_bf16', 'Arm bf16' or '' (notebook 05)."""
    probes = {  # private torch probes of the CPU's features: absent in some builds, never fatal
        "AMX": lambda: torch.cpu._is_amx_tile_supported(),
        "avx512_bf16": lambda: torch.cpu._is_avx512_bf16_supported(),
    }
    if platform.machine().lower() in ("arm64", "aarch64"):  # oneDNN's check of the Arm bf16 ISA
        probes = {"Arm bf16": lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported()}
    for name, probe in probes.items():
        try:
            if probe():
                return name
        except (AttributeError, RuntimeError):
            continue
    return ""


def _cpu_precision(bf16_instructions: str) -> Precision:
    """bf16 autocast over fp32 weights where the CPU has bf16 instructions, else fp32."""
    if not bf16_instructions:
        why = "no CUDA GPU, no bf16 instructions on this CPU"
        return Precision("cpu", torch.float32, torch.float32, False, why)
    if not cpu_bf16_allowed():
        why = f"this CPU has {bf16_instructions}, but {CPU_BF16_ENV}=0 asks for fp32"
        return Precision("cpu", torch.float32, torch.float32, False, why)
    # Weights (and the LoRA adapters) stay fp32, as on a GPU: autocast rounds each matmul's inputs
    # to bf16 and accumulates in fp32, so the optimizer still updates fp32 values.
    why = f"this CPU has {bf16_instructions}; {CPU_BF16_ENV}=0 for fp32"
    return Precision("cpu", torch.float32, torch.bfloat16, False, why)


def choose_precision(
    cuda_available: bool | None = None,
    capability: tuple[int, int] | None = None,
    device_name: str | None = None,
    cpu_bf16: str | None = None,
) -> Precision:
    """Decide device and dtypes; pass the arguments to test the decision on any machine.

    `cpu_bf16` stands for the CPU's bf16 instructions (e.g. 'avx512_bf16'; '' for none).
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return _cpu_precision(cpu_bf16_instructions() if cpu_bf16 is None else cpu_bf16)
    if capability is None:
        capability = torch.cuda.get_device_capability()
    if device_name is None:
        device_name = torch.cuda.get_device_name()
    gpu = f"{device_name}, compute capability {capability[0]}.{capability[1]}"
    if capability >= BF16_MIN_CAPABILITY:
        return Precision("cuda", torch.bfloat16, torch.bfloat16, False, f"{gpu}: native bf16")
    if capability >= FP16_MIN_CAPABILITY:
        # fp32 master weights + fp16 autocast + GradScaler: the standard mixed-precision recipe.
        # Loading the weights in fp16 would make the optimizer update them in fp16 too.
        return Precision("cuda", torch.float32, torch.float16, True, f"{gpu}: no native bf16")
    return Precision("cuda", torch.float32, torch.float32, False, f"{gpu}: too old for fp16")


def describe_runtime() -> str:
    """One line about the hardware, printed at the top of every notebook."""
    if not torch.cuda.is_available():
        return f"CPU only, {torch.get_num_threads()} torch threads"
    props = torch.cuda.get_device_properties(0)
    gib = props.total_memory / 2**30
    return f"GPU {props.name}, {gib:.1f} GiB, compute capability {props.major}.{props.minor}"


def start_lesson(seed: int = 0) -> Precision:
    """Seed torch and print versions, hardware, precision and mode: every notebook's first cell."""
    import platform
    import warnings

    import peft
    import transformers

    from .settings import fast_mode

    # Library deprecation notices (transformers / PEFT talking to each other) are not lesson
    # content, and their text changes between versions; hide them in notebook outputs.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft)(\.|$)")
    torch.manual_seed(seed)
    precision = choose_precision()
    print(
        f"python {platform.python_version()} | torch {torch.__version__} | "
        f"transformers {transformers.__version__} | peft {peft.__version__}"
    )
    print(f"seed {seed} | {describe_runtime()}")
    print(f"precision: {precision}")
    print(f"fast mode (LORA_COURSE_FAST): {fast_mode()}")
    return precision
