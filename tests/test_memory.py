"""The memory calculator's arithmetic, and the probe that measures a real peak."""

import pytest
import torch

from lora_course import tiny_llama
from lora_course.memory import (
    activation_bytes,
    estimate_training_memory,
    measure_training_peak,
    quantized_parameters,
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


def test_quantized_parameters_are_the_blocks_linear_layers():
    """What bitsandbytes quantizes: every nn.Linear but lm_head; not the embedding or the norms."""
    model = tiny_llama()
    linear = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    )
    assert quantized_parameters(model.config) == linear == 2 * 36_864  # 2 blocks of 7 layers


def test_full_lora_and_qlora_charge_what_the_docstring_says(config):
    base, lora = 100_000, 10
    full = estimate_training_memory(config, "full", base, lora, batch=1, seq=8, weight_bytes=2)
    # every parameter trained: fp32 weight, gradient and two moments, whatever weight_bytes says
    assert (full.weights, full.gradients, full.optimizer) == (4 * base, 4 * base, 8 * base)
    lora_estimate = estimate_training_memory(config, "lora", base, lora, 1, 8, weight_bytes=2)
    assert (lora_estimate.weights, lora_estimate.gradients, lora_estimate.optimizer) == (
        base * 2 + lora * 4,
        lora * 4,
        lora * 8,
    )
    qlora = estimate_training_memory(config, "qlora", base, lora, 1, 8, weight_bytes=2)
    # NF4 (0.5 bytes, plus one fp32 scale per 64 weights) for the blocks' linear layers only
    quantized = quantized_parameters(config)
    expected = quantized * 0.5625 + (base - quantized) * 2 + lora * 4
    assert qlora.weights == pytest.approx(expected)
    assert full.activations == lora_estimate.activations == qlora.activations > 0
    assert full.total == 16 * base + full.activations
    gib = estimate_training_memory(config, "full", 2**28, 0, batch=1, seq=8).as_gib()
    assert (gib["weights"], gib["gradients"], gib["optimizer"]) == (1.0, 1.0, 2.0)  # 2^28 fp32
    with pytest.raises(ValueError, match="method"):
        estimate_training_memory(config, "dora", base, lora, batch=1, seq=8)


def test_qlora_keeps_embedding_and_output_layer_in_16_bits():
    """Llama-3.1-8B: a 4-bit base is about 5.6 GiB, not 8.0e9 x 0.5625 bytes (4.2 GiB)."""
    from lora_course.architectures import ARCHITECTURES, build_config

    config = build_config("Llama-3.1-8B")
    base = ARCHITECTURES["Llama-3.1-8B"][2]
    qlora = estimate_training_memory(config, "qlora", base, 0, batch=1, seq=8, weight_bytes=2)
    embeddings = 2 * config.vocab_size * config.hidden_size  # untied: embedding and lm_head
    assert base - quantized_parameters(config) - embeddings == 65 * config.hidden_size  # norms
    assert qlora.weights / 2**30 == pytest.approx(5.6, abs=0.05)


@pytest.mark.slow  # a subprocess that trains
def test_probe_measures_its_own_process_not_its_parent():
    """A parent holding a lot of memory must not inflate or hide the child's measurement."""
    ballast = torch.ones(250_000_000)  # 1 GB in this process
    result = measure_training_peak("lora", batch=1, seq=16, steps=1)
    assert ballast.sum() > 0
    weights = (result["base"] + result["lora"]) * 4
    assert weights < result["peak"] < 3 * weights, result


@pytest.mark.slow  # two subprocesses that train
def test_probe_measures_dora_with_its_magnitudes():
    lora = measure_training_peak("lora", batch=1, seq=16, steps=1, r=4)
    dora = measure_training_peak("dora", batch=1, seq=16, steps=1, r=4)
    assert dora["lora"] - lora["lora"] == 30 * (576 + 192), "a magnitude per output row"
    assert dora["base"] == lora["base"] and dora["peak"] > 0
    with pytest.raises(RuntimeError, match="can measure 'full', 'lora' or 'dora'"):
        measure_training_peak("vera", batch=1, seq=16, steps=1)


def test_checkpointing_keeps_one_block_of_activations(config):
    """Notebook 11: checkpointing keeps L blocks' inputs and one block's activations, not L's."""
    off = activation_bytes(config, batch=2, seq=16)
    on = activation_bytes(config, batch=2, seq=16, checkpointing=True)
    logits = 2 * 16 * 3 * config.vocab_size * 4
    one_block = (off - logits) / config.num_hidden_layers
    inputs = 2 * 16 * config.num_hidden_layers * config.hidden_size * 4
    assert on == pytest.approx(logits + one_block + inputs)
    full = estimate_training_memory(config, "full", 1000, 0, 2, 16, checkpointing=True)
    assert full.activations == on and full.weights == 4000


@pytest.mark.slow  # two subprocesses that train
def test_probe_with_checkpointing_holds_less_and_times_its_steps():
    plain = measure_training_peak("lora", batch=2, seq=128, steps=2)
    checkpointed = measure_training_peak("lora", batch=2, seq=128, steps=2, checkpointing=True)
    assert checkpointed["peak"] < plain["peak"]
    assert plain["seconds_per_step"] > 0 and checkpointed["seconds_per_step"] > 0
