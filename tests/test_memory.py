"""The memory calculator's arithmetic, and the probe that measures a real peak."""

import pytest
import torch

from lora_course import tiny_llama
from lora_course.memory import (
    activation_bytes,
    estimate_training_memory,
    measure_training_peak,
)


@pytest.fixture
def config():
    return tiny_llama().config  # h 64, kv 32, i 128, 4 heads, 2 layers, vocab 128


def saved_for_backward(model, batch: int, seq: int) -> int:
    """Bytes autograd keeps for the backward pass in one forward (weights left out)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}  # storage -> bytes: views of one tensor count once

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, model.config.vocab_size, (batch, seq),
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(ids, labels=ids)
    return sum(saved.values())


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_hidden_layers": 4}, {"hidden_size": 128, "intermediate_size": 384}],
    ids=["tiny", "deeper", "wider"],
)
@pytest.mark.parametrize(("batch", "seq"), [(2, 16), (1, 64)])
def test_activation_estimate_bounds_what_autograd_keeps(overrides, batch, seq):
    """Measured on the model itself: the estimate is an upper bound, and not a loose one."""
    model = tiny_llama(attn_implementation="eager", **overrides).train()  # eager, as documented
    estimate = activation_bytes(model.config, batch=batch, seq=seq)
    measured = saved_for_backward(model, batch, seq)  # measured: 0.94 to 0.99 of the estimate
    assert 0.85 * estimate < measured <= estimate, (measured, estimate)


def test_full_lora_and_qlora_charge_what_the_docstring_says(config):
    full = estimate_training_memory(config, "full", 1000, 10, batch=1, seq=8)
    assert (full.weights, full.gradients, full.optimizer) == (4000, 4000, 8000)
    lora = estimate_training_memory(config, "lora", 1000, 10, batch=1, seq=8, weight_bytes=2)
    assert (lora.weights, lora.gradients, lora.optimizer) == (990 * 2 + 40, 40, 80)
    qlora = estimate_training_memory(config, "qlora", 1000, 10, batch=1, seq=8)
    # NF4: 4 bits = 0.5 bytes per weight, plus one fp32 scale (4 bytes) per 64 weights
    assert qlora.weights == pytest.approx(990 * 0.5625 + 40)
    assert full.activations == lora.activations == qlora.activations > 0
    assert full.total == 4000 + 4000 + 8000 + full.activations
    gib = estimate_training_memory(config, "full", 2**28, 0, batch=1, seq=8).as_gib()
    assert (gib["weights"], gib["gradients"], gib["optimizer"]) == (1.0, 1.0, 2.0)  # 2^28 fp32
    with pytest.raises(ValueError, match="method"):
        estimate_training_memory(config, "dora", 1000, 10, batch=1, seq=8)


@pytest.mark.slow  # a subprocess that trains
def test_probe_measures_its_own_process_not_its_parent():
    """A parent holding a lot of memory must not inflate or hide the child's measurement."""
    ballast = torch.ones(250_000_000)  # 1 GB in this process
    result = measure_training_peak("lora", batch=1, seq=16, steps=1)
    assert ballast.sum() > 0
    weights = result["total"] * 4
    assert weights < result["peak"] < 3 * weights, result
