"""The 4-bit base by hand (lora_course.quantization): levels, round trips, packing, double
quantization, agreement with bitsandbytes' and torchao's independent NF4, and LoRA (QLoRA) on
frozen NF4 layers."""

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_course.layers import LoRALinear
from lora_course.quantization import (
    BITSANDBYTES_NF4,
    NF4Linear,
    fp4_levels,
    int_levels,
    nearest_level,
    nf4_levels,
    pack_nibbles,
    quantize_blockwise,
    to_nf4,
    unpack_nibbles,
)


def weight(rows=256, cols=128, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


# --- levels -------------------------------------------------------------------------------------


def test_nf4_levels_are_bitsandbytes_table_bit_for_bit():
    assert torch.equal(nf4_levels(), torch.tensor(BITSANDBYTES_NF4))


def test_nf4_is_asymmetric_with_an_exact_zero():
    levels = nf4_levels()
    assert len(levels) == 16 and bool((levels[1:] > levels[:-1]).all())
    assert levels[0] == -1 and levels[-1] == 1 and (levels == 0).sum() == 1
    assert (levels > 0).sum() == 8 and (levels < 0).sum() == 7
    # a symmetric set of 16 levels (8 quantiles either side) would have no zero
    assert not torch.equal(levels[1:8].abs().flip(0), levels[8:15])


def test_int_levels_are_evenly_spaced_and_symmetric():
    for bits, top in ((8, 127), (4, 7), (2, 1)):
        levels = int_levels(bits)
        assert len(levels) == 2 * top + 1
        assert torch.allclose(levels[1:] - levels[:-1], torch.full((2 * top,), 1 / top))
        assert torch.equal(levels, -levels.flip(0))
    for bits in (1, 9, 0):
        with pytest.raises(ValueError, match="bits must be 2 to 8"):
            int_levels(bits)


def test_fp4_levels_are_e2m1_scaled_to_one():
    levels = fp4_levels()
    magnitudes = sorted({round(abs(v) * 6, 6) for v in levels.tolist()})
    assert magnitudes == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert len(levels) == 15 and levels.max() == 1 and bool((levels[1:] > levels[:-1]).all())


# --- nearest level and the blockwise round trip ------------------------------------------------


def test_nearest_level_matches_brute_force_and_sends_ties_down():
    levels = nf4_levels()
    values = torch.rand(10_000, generator=torch.Generator().manual_seed(1)) * 2 - 1
    brute = (values[:, None] - levels).abs().argmin(dim=1)  # (N,): first index of the minimum
    assert torch.equal(nearest_level(values, levels).long(), brute)
    halfway = (levels[3] + levels[4]) / 2
    assert nearest_level(halfway[None], levels).item() == 3


@pytest.mark.parametrize(
    ("levels", "name"), [(int_levels(8), "int8"), (int_levels(4), "int4"), (nf4_levels(), "nf4")]
)
def test_round_trip_error_is_at_most_half_a_step(levels, name):
    w = weight()
    q = quantize_blockwise(w, levels, 64)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == (w.numel(),)
    assert q.absmax.shape == (w.numel() // 64,)
    largest_gap = (levels[1:] - levels[:-1]).max()
    error = (q.dequantize() - w).abs().view(-1, 64)  # (n_blocks, 64)
    bound = largest_gap / 2 * q.absmax[:, None] + 1e-6
    assert bool((error <= bound).all()), name
    # each block's largest |w| is a level (±1) times its own absmax: exact
    blocks = w.reshape(-1, 64)
    top = blocks.abs().argmax(dim=1)
    rebuilt = q.dequantize().reshape(-1, 64)
    assert torch.equal(rebuilt.gather(1, top[:, None]), blocks.gather(1, top[:, None]))


def test_a_block_of_zeros_stays_zero_without_nan():
    w = weight(4, 64)
    w[1] = 0
    q = quantize_blockwise(w, nf4_levels(), 64)
    assert torch.equal(q.dequantize()[1], torch.zeros(64))
    assert torch.isfinite(q.dequantize()).all()


def test_an_outlier_coarsens_the_rest_of_its_block():
    """The outliers argument: one large weight sets the block's scale for the other 63."""
    w = weight(1, 64)
    plain = (quantize_blockwise(w, int_levels(4), 64).dequantize() - w).abs()[0, 1:].mean()
    w[0, 0] = 50 * w.abs().max()
    spoiled = (quantize_blockwise(w, int_levels(4), 64).dequantize() - w).abs()[0, 1:].mean()
    assert spoiled > 5 * plain


def test_smaller_blocks_give_smaller_error():
    w = weight(64, 256)
    errors = [
        (quantize_blockwise(w, nf4_levels(), size).dequantize() - w).norm()
        for size in (16, 64, 256)
    ]
    assert errors[0] < errors[1] < errors[2]


def test_a_last_short_block_gets_its_own_absmax():
    values = torch.cat([torch.full((64,), 0.5), torch.tensor([4.0, -4.0, 0.0])])  # 64 + 3
    q = quantize_blockwise(values, int_levels(8), 64)
    assert q.absmax.tolist() == [0.5, 4.0] and q.codes.shape == (67,)
    assert torch.equal(q.dequantize(), values)  # every value here is a level times its absmax


def test_quantize_refuses_bad_input():
    bad = torch.randn(64)
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_blockwise(bad, nf4_levels(), 64)
    with pytest.raises(ValueError, match="sorted, distinct"):
        quantize_blockwise(torch.randn(64), nf4_levels().flip(0), 64)


# --- packing ------------------------------------------------------------------------------------


def test_pack_puts_the_first_code_in_the_high_nibble():
    codes = torch.tensor([1, 2, 15, 0], dtype=torch.uint8)
    assert pack_nibbles(codes).tolist() == [0x12, 0xF0]
    assert torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)


def test_pack_round_trips_every_code_pair():
    codes = torch.cartesian_prod(torch.arange(16), torch.arange(16)).reshape(-1).to(torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.dtype == torch.uint8 and len(packed) == 256 and len(set(packed.tolist())) == 256
    assert torch.equal(unpack_nibbles(packed), codes)


@pytest.mark.parametrize(
    "codes",
    [
        torch.tensor([1, 2, 3], dtype=torch.uint8),  # odd count
        torch.tensor([1, 16], dtype=torch.uint8),  # not 4 bits
        torch.tensor([1, 2], dtype=torch.int64),  # not bytes
    ],
)
def test_pack_refuses_what_does_not_fit(codes):
    with pytest.raises(ValueError, match="even number of uint8 codes from 0 to 15"):
        pack_nibbles(codes)


# --- NF4 with double quantization ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(576, 1536), (192, 576)])  # SmolLM2's MLP and k_proj shapes
def test_storage_is_counted_byte_by_byte(shape):
    w = weight(*shape)
    nf4 = to_nf4(w)
    n = w.numel()
    blocks = n // 64
    scale_blocks = -(-blocks // 256)  # k_proj: 1728 scales, the last of 7 blocks holds 192
    expected = n // 2 + blocks + 4 * scale_blocks + 4  # codes, 8-bit scales, their scales, mean
    assert nf4.nbytes == expected
    assert nf4.bits_per_parameter == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)
    single = quantize_blockwise(w, nf4_levels(), 64)  # one fp32 scale per block
    single_bits = 8 * (n // 2 + single.absmax.numel() * 4) / n
    assert single_bits == 4.5 and nf4.bits_per_parameter < 4.13


def test_double_quantized_scales_are_within_half_an_8_bit_step():
    w = weight()
    true = quantize_blockwise(w, nf4_levels(), 64).absmax
    nf4 = to_nf4(w)
    centred = true - true.mean()
    step = centred.view(-1, 256).abs().amax(dim=1) / 127  # (scale blocks,)
    error = (nf4.absmax() - true).view(-1, 256).abs()
    assert bool((error <= step[:, None] / 2 + 1e-6).all())
    # and the weight it gives back is close to single quantization's
    single = quantize_blockwise(w, nf4_levels(), 64).dequantize()
    assert (nf4.dequantize() - single).abs().max() < step.max()


def test_to_nf4_takes_any_even_size_and_refuses_an_odd_one():
    w = weight(192, 576)  # not a whole number of 256-scale blocks
    single = quantize_blockwise(w, nf4_levels(), 64).dequantize()
    assert (to_nf4(w).dequantize() - single).abs().max() < 0.01 * w.abs().max()
    with pytest.raises(ValueError, match="odd count"):
        to_nf4(torch.randn(3, 7))


# --- independent implementations: torchao and bitsandbytes ------------------------------------


def import_cross_check(module: str):
    """Import `module` from the folder tools/setup_env.sh installs torchao into (outside
    site-packages, so that PEFT does not import it into every notebook)."""
    folder = Path(sys.prefix) / "cross_check"
    if not (folder / module.partition(".")[0]).is_dir():
        message = f"{module} is not installed in {folder}: run `make env`"
        if os.environ.get("CI"):  # CI must compare, never skip
            pytest.fail(message)
        pytest.skip(message)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def torchao_nf4():
    return import_cross_check("torchao.quantization").to_nf4


@pytest.fixture(scope="module")
def bitsandbytes_functional():
    return importlib.import_module("bitsandbytes.functional")  # a dependency of the course


def test_codes_and_bytes_match_torchao_bit_for_bit_on_its_table(torchao_nf4):
    w = weight()
    theirs = torchao_nf4(w, 64, 256)
    ours = quantize_blockwise(w, theirs.nf4.float(), 64)  # torchao rounds NF4 to 4 decimals
    assert torch.equal(pack_nibbles(ours.codes), theirs.quantized_data)
    assert torch.equal(ours.codes, unpack_nibbles(theirs.quantized_data))
    assert (theirs.nf4.float() - nf4_levels()).abs().max() <= 5e-5


def test_dequantized_weights_agree_with_torchao(torchao_nf4):
    w = weight(512, 256)
    theirs = torchao_nf4(w, 64, 256)
    ours = to_nf4(w)
    our_codes = unpack_nibbles(ours.packed)
    their_codes = unpack_nibbles(theirs.quantized_data)
    differ = our_codes != their_codes  # only where a value sits on a boundary of the rounded table
    assert differ.float().mean() < 1e-3
    gap = (ours.dequantize() - theirs.get_original_weight()).reshape(-1)[~differ].abs().max()
    # both store 8-bit scales (each within half a step of the true absmax), and |level| <= 1
    absmax = quantize_blockwise(w, nf4_levels(), 64).absmax
    step = (absmax - absmax.mean()).abs().max() / 127
    assert gap <= step + 5e-5 * absmax.max()


@pytest.mark.parametrize("shape", [(256, 128), (192, 576), (3, 70)])  # the last: a short block
def test_single_quantized_nf4_equals_bitsandbytes_bit_for_bit(bitsandbytes_functional, shape):
    """bitsandbytes' CPU backend: the same bytes, scales and weights (its scales in fp32, as in
    `quantize_blockwise`; double quantization differs by design, see lora_course.quantization)."""
    w = weight(*shape)
    packed, state = bitsandbytes_functional.quantize_4bit(
        w, blocksize=64, quant_type="nf4", compress_statistics=False
    )
    ours = quantize_blockwise(w, nf4_levels(), 64)
    assert torch.equal(state.code, nf4_levels())
    assert torch.equal(packed.reshape(-1), pack_nibbles(ours.codes))
    assert torch.equal(state.absmax, ours.absmax)
    assert torch.equal(bitsandbytes_functional.dequantize_4bit(packed, state), ours.dequantize())


# --- NF4Linear: the frozen 4-bit base, and LoRA on top -----------------------------------------


def nf4_layer(seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(256, 128)  # 32768 weights: two blocks of 256 scales
    return linear, NF4Linear.from_linear(linear)


def test_nf4_linear_computes_with_the_dequantized_weight():
    linear, layer = nf4_layer()
    x = torch.randn(3, 5, 256)
    expected = F.linear(x, layer.nf4.dequantize(), linear.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    # half of NF4's widest gap (0.30 of a block's absmax, between its two lowest levels) bounds it
    assert (layer.weight - linear.weight).abs().max() < 0.16 * linear.weight.abs().max()
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_nf4_linear_passes_the_gradient_on_without_keeping_a_full_weight(compute):
    """The input's gradient is x's through the dequantized W; what autograd saves for the backward
    pass is never a tensor of the weight's size (bitsandbytes' MatMul4Bit does the same)."""
    _, layer = nf4_layer()
    weight = layer.nf4.dequantize()  # (128, 256)
    x = torch.randn(3, 5, 256, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    saved = []
    autocast = torch.autocast("cpu", dtype=compute, enabled=compute != torch.float32)
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        with autocast:
            out = layer(x)
    out.float().sum().backward()
    with autocast:
        F.linear(x_ref, weight, layer.bias).float().sum().backward()
    assert weight.numel() not in saved and all(n < weight.numel() for n in saved), saved
    assert out.dtype == compute and x.grad.dtype == torch.float32
    tolerance = 1e-5 if compute == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=tolerance, atol=tolerance)


def test_nf4_linear_cannot_be_trained_and_holds_nothing_trainable():
    _, layer = nf4_layer()
    assert [p.requires_grad for p in layer.parameters()] == [False]  # the bias, frozen
    with pytest.raises(RuntimeError, match="cannot be trained"):
        layer.requires_grad_(True)
    layer.requires_grad_(False)  # freezing is fine


def test_a_dtype_cast_of_the_model_leaves_the_4_bit_storage_alone():
    _, layer = nf4_layer()
    before = layer.nf4.dequantize()
    layer.to(torch.bfloat16)
    assert layer.nf4.scales.absmax.dtype == torch.float32 and layer.nf4.packed.dtype == torch.uint8
    assert torch.equal(layer.nf4.dequantize(), before)
    assert layer.bias.dtype == torch.bfloat16


def test_lora_on_an_nf4_base_starts_at_the_base_and_trains_only_a_and_b():
    _, base = nf4_layer()
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(8, 256)
    assert torch.equal(layer(x), base(x))  # B = 0
    trainable = [name for name, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    storage = layer.base.nf4.packed.clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(2):  # B moves in step one, A in step two (its gradient needs B != 0)
        optimizer.zero_grad()
        layer(x).pow(2).mean().backward()
        optimizer.step()
    assert layer.lora_B.abs().sum() > 0 and base.bias.grad is None
    assert torch.equal(layer.base.nf4.packed, storage)
    assert not torch.equal(layer(x), base(x))


def test_lora_refuses_to_merge_into_a_4_bit_base():
    _, base = nf4_layer()
    layer = LoRALinear(base, r=4)
    with pytest.raises(TypeError, match="cannot absorb the update in place"):
        layer.merge()
    assert not layer.merged


# --- QLoRA on a whole (tiny) model --------------------------------------------------------------


def test_qlora_on_a_tiny_llama_trains_only_the_adapters_and_the_loss_falls():
    from lora_course.inject import inject_lora, quantize_linears
    from lora_course.models import tiny_llama
    from lora_course.targets import PROJECTIONS

    model = tiny_llama()
    ids = torch.randint(
        0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        full_logits = model(ids).logits
    replaced = quantize_linears(model, PROJECTIONS)
    assert len(replaced) == 7 * model.config.num_hidden_layers
    assert not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if "layers." in n)
    assert isinstance(model.lm_head, nn.Linear)  # the output layer stays as it was
    with torch.no_grad():
        drift = (model(ids).logits - full_logits).abs().max()
    assert 0 < drift < 0.1 * full_logits.abs().max()  # 4 bits move the logits, a little

    report = inject_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert report.per_target == {"q_proj": 2, "v_proj": 2}
    storage = {
        n: m.nf4.packed.clone() for n, m in model.named_modules() if isinstance(m, NF4Linear)
    }

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    for name, module in model.named_modules():
        if isinstance(module, NF4Linear):
            assert torch.equal(module.nf4.packed, storage[name]), name


def test_quantize_linears_refuses_what_it_cannot_store():
    from lora_course.inject import quantize_linears
    from lora_course.models import tiny_llama

    model = tiny_llama()
    with pytest.raises(ValueError, match="matched no module"):
        quantize_linears(model, ["qproj"])
    with pytest.raises(TypeError, match="only Linear layers can be replaced"):
        quantize_linears(model, ["embed_tokens"])
