"""Writing a merged Llama model to a GGUF file for llama.cpp, and reading it back (notebook 10).

GGUF is llama.cpp's single-file format: key-value metadata (architecture, sizes, tokenizer) and
named tensors, each in its own type (F32, F16, or a block-quantized type such as Q8_0 or Q4_0).
llama.cpp's own converter (`convert_hf_to_gguf.py`) does this for every architecture; this module
hand-writes the Llama case with the `gguf` package's writer and quantizers, because the lesson
teaches what the file holds: llama.cpp's tensor names, the q / k row permutation its rotary code
expects, and which tensors stay F32. transformers' `gguf_file=` loader reads the file back.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: The tensor types `write_gguf` writes: 2-d weights in the chosen type, 1-d norms always in F32
#: (as llama.cpp does). Q8_0 and Q4_0 store blocks of 32 values with one fp16 scale each, Q4_1
#: a scale and a minimum (the packaged SmolLM2 came as Q4_1).
GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_1", "Q4_0")


def write_gguf(
    model: nn.Module,
    path: str | Path,
    tensor_type: str = "F32",
    tokenizer_from: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write a plain (merged) Llama model to one GGUF file in `tensor_type` (notebook 10).

    `tokenizer_from`: a GGUF file whose `tokenizer.*` and `general.*` entries are copied (the
    packaged SmolLM2 GGUF for SmolLM2), so the file also carries its tokenizer and chat
    template; without it the file holds the model alone. The file appears whole or not at all.
    """
    import gguf

    if tensor_type not in GGUF_TYPES:
        raise ValueError(f"tensor_type must be one of {', '.join(GGUF_TYPES)}; got {tensor_type!r}")
    config = _plain_llama_config(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    writer = gguf.GGUFWriter(partial, "llama")
    _add_metadata(writer, config, tensor_type, tokenizer_from, name)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd.weight, as transformers does
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ValueError(f"no llama.cpp name for {hf_name}: not a plain Llama model?")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        data = _permute_for_rope(data, gguf_name, config)
        _add_tensor(writer, f"{gguf_name}.{suffix}", data, tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, path)
    finally:
        writer.close()  # a failed write leaves it open (no-op after the close above)
        partial.unlink(missing_ok=True)
    return path


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """The model in a GGUF file, dequantized by transformers' `gguf_file=` loader (notebook 10)."""
    from transformers import AutoModelForCausalLM

    from .models import _quiet_transformers

    path = Path(path)
    with _quiet_transformers(), _no_dequantizing_bar():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model.eval()


@contextlib.contextmanager
def _no_dequantizing_bar():
    """transformers' GGUF loader draws its own tqdm bar per file (a second each): hide it."""
    from transformers import modeling_gguf_pytorch_utils as loader

    bar = loader.tqdm
    loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        loader.tqdm = bar


def gguf_tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each type a GGUF file holds, e.g. {"Q4_0": 210, "F32": 61}."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def _plain_llama_config(model: nn.Module):
    """The model's LlamaConfig, after refusing what this writer cannot ship as it is."""
    if hasattr(model, "peft_config") or any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError(
            "the model still holds LoRA layers: merge them first (merge_and_unload()); "
            "write_gguf ships one plain model. A separate LoRA GGUF is llama.cpp's "
            "convert_lora_to_gguf.py's job."
        )
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        found = getattr(config, "model_type", type(model).__name__)
        raise ValueError(f"write_gguf writes Llama models only; this is {found!r}")
    return config


def _add_metadata(writer, config, tensor_type: str, tokenizer_from, name: str | None) -> None:
    """llama.* entries from the config (the ones transformers reads back), then the tokenizer."""
    import gguf

    copied = _copied_fields(tokenizer_from, config.vocab_size) if tokenizer_from else {}
    source_name = copied.pop("general.name", ("llama",))[0]
    writer.add_name(name or source_name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPES[tensor_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, (value, value_type, sub_type) in copied.items():
        writer.add_key_value(key, value, value_type, sub_type=sub_type)


# llama.cpp's LLAMA_FTYPE codes for a file whose weights are mostly of one type
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}

# written from the config above (or by the writer itself); everything else is copied.
# general.alignment too: this writer pads tensors to its own alignment, and a copied value
# would make readers look for every tensor at the wrong offset.
_NOT_COPIED = (
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "general.alignment",
    "GGUF.",
)


def _copied_fields(source: str | Path, vocab_size: int) -> dict[str, tuple]:
    """The `general.*` and `tokenizer.*` entries of another GGUF file, with their value types."""
    import gguf

    reader = gguf.GGUFReader(source)
    copied = {}
    for key, field in reader.fields.items():
        if not key.startswith(("general.", "tokenizer.")) or key.startswith(_NOT_COPIED):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        copied[key] = (field.contents(), value_type, sub_type)
    tokens = copied.get("tokenizer.ggml.tokens", ((),))[0]
    if tokens and len(tokens) != vocab_size:
        raise ValueError(
            f"{Path(source).name} has {len(tokens)} tokens, the model {vocab_size}: "
            "not this model's tokenizer"
        )
    return copied


def _permute_for_rope(data: np.ndarray, gguf_name: str, config) -> np.ndarray:
    """Reorder q / k rows as llama.cpp's converter does: its rotary code pairs rows differently.

    transformers rotates row i with row i + d/2 of each head; llama.cpp rotates rows 2i and
    2i + 1. transformers' GGUF loader undoes exactly this permutation.
    """
    if gguf_name.endswith(".attn_q"):
        heads = config.num_attention_heads
    elif gguf_name.endswith(".attn_k"):
        heads = config.num_key_value_heads
    else:
        return data
    half = data.shape[0] // heads // 2
    return data.reshape(heads, 2, half, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def _add_tensor(writer, name: str, data: np.ndarray, tensor_type: str) -> None:
    """One tensor: 1-d ones (norms) in F32 whatever the file's type, 2-d ones in `tensor_type`."""
    import gguf

    if data.ndim == 1 or tensor_type == "F32":
        writer.add_tensor(name, data.astype(np.float32))
    elif tensor_type == "F16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType[tensor_type]
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def llama_cpp_lora_problems(adapter_config: dict) -> list[str]:
    """What a LoRA GGUF for llama.cpp would not carry of this PEFT adapter (notebook 10).

    llama.cpp's `convert_lora_to_gguf.py` writes each module's A and B and one number,
    `adapter.lora.alpha`; llama.cpp then scales every module by alpha / r, r read from each
    module's tensors (so per-module ranks survive). What else adapter_config.json asks for is
    lost or refused.
    """
    problems = []
    if adapter_config.get("use_rslora"):
        problems.append(
            "rsLoRA: llama.cpp scales by alpha / r, not alpha / sqrt(r); store "
            "lora_alpha * sqrt(r) instead to keep the same update"
        )
    if adapter_config.get("use_dora"):
        problems.append("DoRA: the file has no place for the magnitude vectors; merge instead")
    if adapter_config.get("alpha_pattern"):  # per-module ranks are fine: r is read per tensor
        problems.append("per-module alphas (alpha_pattern): the file holds a single alpha")
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    embedding = sorted(set(targets) & {"embed_tokens", "lm_head"})
    if embedding:
        problems.append(
            f"LoRA on {', '.join(embedding)}: older converters refuse these tensors and newer "
            "ones remap them; check the result before relying on it (not tested here)"
        )
    if adapter_config.get("modules_to_save"):
        problems.append("modules_to_save: full copies of modules are not LoRA tensors")
    return problems
