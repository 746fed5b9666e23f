"""Configs of real model families, written out so counts need no hub (introduced in notebook 03).

Values are the published config.json fields that determine parameter counts. A test builds each
model on the `meta` device (no memory) and checks the total against the published count.
"""

from __future__ import annotations

# name: (config class in transformers, fields, published total parameter count)
ARCHITECTURES = {
    "SmolLM2-135M": (
        "LlamaConfig",
        dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
             tie_word_embeddings=True),
        134_515_008,
    ),
    "Llama-3.2-1B": (
        "LlamaConfig",
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
             tie_word_embeddings=True),
        1_235_814_400,
    ),
    "Llama-2-7B": (
        "LlamaConfig",
        dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
             tie_word_embeddings=False),
        6_738_415_616,
    ),
    "Mistral-7B": (
        "MistralConfig",
        dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
             tie_word_embeddings=False),
        7_241_732_096,
    ),
    "Llama-3.1-8B": (
        "LlamaConfig",
        dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
             tie_word_embeddings=False),
        8_030_261_248,
    ),
}  # fmt: skip


def build_config(name: str):
    """The transformers config object for one of ARCHITECTURES."""
    import transformers

    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    class_name, fields, _ = ARCHITECTURES[name]
    return getattr(transformers, class_name)(**fields)


def meta_model(config):
    """The model for `config` on the meta device: real shapes, no memory, built in milliseconds."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
