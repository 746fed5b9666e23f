"""The memory calculator's arithmetic, and the probe that measures a real peak."""

import pytest
import torch

from lora_course import tiny_llama
from lora_course.memory import (
    QLORA_BYTES,
    activation_bytes,
    estimate_training_memory,
    measure_training_peak,
)


@pytest.fixture
def config():
    return tiny_llama().config  # h 64, kv 32, i 128, 4 heads, 2 layers, vocab 128


def test_activations_follow_the_stated_per_token_count(config):
    per_block = 10 * 64 + 2 * 32 + 4 * 128 + 4 * 16  # seq 16
    per_token = 2 * per_block + 3 * 128
    assert activation_bytes(config, batch=2, seq=16) == 2 * 16 * per_token * 4


def test_full_lora_and_qlora_charge_what_the_docstring_says(config):
    full = estimate_training_memory(config, "full", 1000, 10, batch=1, seq=8)
    assert (full.weights, full.gradients, full.optimizer) == (4000, 4000, 8000)
    lora = estimate_training_memory(config, "lora", 1000, 10, batch=1, seq=8, weight_bytes=2)
    assert (lora.weights, lora.gradients, lora.optimizer) == (990 * 2 + 40, 40, 80)
    qlora = estimate_training_memory(config, "qlora", 1000, 10, batch=1, seq=8)
    assert qlora.weights == pytest.approx(990 * QLORA_BYTES + 40)
    assert full.activations == lora.activations == qlora.activations
    assert (
        full.total
        == sum(full.as_gib()[p] for p in ("weights", "gradients", "optimizer", "activations"))
        * 2**30
    )
    with pytest.raises(ValueError, match="method"):
        estimate_training_memory(config, "dora", 1000, 10, batch=1, seq=8)


def test_probe_measures_its_own_process_not_its_parent():
    """A parent holding a lot of memory must not inflate or hide the child's measurement."""
    ballast = torch.ones(250_000_000)  # 1 GB in this process
    result = measure_training_peak("lora", batch=1, seq=16, steps=1)
    assert ballast.sum() > 0
    weights = result["total"] * 4
    assert weights < result["peak"] < 3 * weights, result
