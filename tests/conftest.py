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
    """Give every lora_B non-zero values so the adapter actually changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (from the course's model cache; converted on first use)."""
    from lora_course import load_smollm2

    return load_smollm2(verbose=False)[1]


@pytest.fixture(scope="session")
def make_exercises():
    """tools/make_exercises.py as a module (tools/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "tools" / "make_exercises.py"
    spec = importlib.util.spec_from_file_location("make_exercises", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
