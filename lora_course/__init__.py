"""LoRA from the ground up: the code the course notebooks share.

Each object's docstring names the notebook that introduces it.
"""

import logging

# bitsandbytes (which PEFT imports) logs a warning at import on CPUs with avx512_bf16: it cannot
# download an optional fused 4-bit kernel from the hub. The course runs offline by design and
# bitsandbytes falls back to its built-in CPU path: the warning says nothing a learner can act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .adapters import (
    AdapterMismatchError,
    base_fingerprint,
    check_adapter_fits,
    export_peft_adapter,
    load_peft_adapter,
    save_peft_adapter,
)
from .chat import chat_input_ids, generate_reply
from .counting import ParamCount, count_parameters
from .devices import Precision, choose_precision, describe_runtime, start_lesson
from .inject import InjectionReport, inject_lora, lora_layers
from .layers import LoRALinear, peft_lora_linear
from .models import (
    HUB_ID,
    ModelNotAvailableError,
    ModelSource,
    load_smollm2,
    resolve_source,
    tiny_llama,
)
from .settings import by_mode, cache_dir, fast_mode

__all__ = [
    "AdapterMismatchError",
    "HUB_ID",
    "InjectionReport",
    "LoRALinear",
    "ModelNotAvailableError",
    "ModelSource",
    "ParamCount",
    "Precision",
    "base_fingerprint",
    "by_mode",
    "cache_dir",
    "chat_input_ids",
    "check_adapter_fits",
    "choose_precision",
    "count_parameters",
    "describe_runtime",
    "export_peft_adapter",
    "fast_mode",
    "generate_reply",
    "inject_lora",
    "load_peft_adapter",
    "load_smollm2",
    "lora_layers",
    "peft_lora_linear",
    "resolve_source",
    "save_peft_adapter",
    "start_lesson",
    "tiny_llama",
]
