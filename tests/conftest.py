"""Shared fixtures: tiny seeded models that run in milliseconds on a CPU."""

import importlib.util
from pathlib import Path

import pytest
import torch

from lora_course import tiny_llama


@pytest.fixture
def base():
    """A tiny Llama with grouped-query attention (k_proj, v_proj: 64 -> 32)."""
    return tiny_llama(seed=0)


@pytest.fixture
def tokens():
    """A seeded batch of token ids, (batch=2, seq=10)."""
    return torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))


def randomize_lora(model, seed: int = 1, std: float = 0.5):
    """Give every from-scratch LoRALinear's lora_B non-zero values (PEFT names theirs otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture(scope="session")
def smollm2_folder():
    """The packaged GGUF converted to safetensors, in the course cache (converted if missing).

    `make test` converts it once per run into a fresh $LORA_COURSE_CACHE (its "model weights"
    part, the same `_converted_gguf`), so here it is found; the notebooks then reuse it too.
    """
    from lora_course import models

    reason, gguf = models._packaged_gguf()
    if gguf is None:
        pytest.fail(f"the packaged SmolLM2 is needed: {reason} ({models.INSTALL_GGUF})")
    return models._converted_gguf(gguf, cache=None)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_folder):
    """The real SmolLM2 tokenizer alone, read from the converted folder (no model weights)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_folder, local_files_only=True)


@pytest.fixture(scope="session")
def make_exercises():
    """tools/make_exercises.py as a module (tools/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "tools" / "make_exercises.py"
    spec = importlib.util.spec_from_file_location("make_exercises", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
