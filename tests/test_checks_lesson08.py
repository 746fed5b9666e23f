"""Exercises 08: the checks pass right answers and name each classic mistake, on every case."""

import math
import random
import re
import statistics
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exercise_harness import (
    ODD_OBJECTS,
    UNWRITTEN,
    cases_vary,
    fails,
    judged_odd,
    passes,
    through_json,
)

from lora_course.checks import lesson08
from lora_course.checks.lesson08 import (
    BITS_PER_PARAMETER,
    NF4_LEVELS,
    QLORA_FORWARD,
    QUANTIZE_4BIT,
)
from lora_course.quantization import (
    BITSANDBYTES_NF4,
    int_levels,
    pack_nibbles,
    quantize_blockwise,
    to_nf4,
)

# a learner's levels[codes] with uint8 codes: torch warns before it raises (the check names it)
pytestmark = pytest.mark.filterwarnings("ignore:indexing with dtype torch.uint8:UserWarning")
SEEDS = range(20)  # variants a right answer must pass
WRONG_SEEDS = (1, 2, 3)  # variants each wrong answer must fail
OFFSET = 1 - (1 / 30 + 1 / 32) / 2


class Pattern(str):
    """A message given as a regular expression (any other message is matched literally)."""


@pytest.mark.parametrize("exercise", lesson08.EXERCISES, ids=lambda e: e.id)
@pytest.mark.parametrize("name", ODD_OBJECTS)
def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
    judged_odd(exercise, ODD_OBJECTS[name], "not written yet" if name == "not written" else None)


@pytest.mark.parametrize("exercise", lesson08.EXERCISES, ids=lambda e: e.id)
def test_cases_are_json_and_variants_differ(exercise):
    cases_vary(exercise)


# --- 08.1 nf4_levels --------------------------------------------------------------------------


def nf4_levels():  # the solution notebook's answer
    above = torch.special.ndtri(torch.linspace(OFFSET, 0.5, 9)[:-1])  # (8,)
    below = -torch.special.ndtri(torch.linspace(OFFSET, 0.5, 8)[:-1])  # (7,)
    levels = torch.cat([below, torch.zeros(1), above]).sort().values  # (16,)
    return levels / levels.max()


def nf4_levels_icdf():
    normal = torch.distributions.Normal(0.0, 1.0)
    above = normal.icdf(torch.linspace(0.9677083, 0.5, 9)[:-1])
    below = -normal.icdf(torch.linspace(0.9677083, 0.5, 8)[:-1])
    levels = torch.cat([below, torch.zeros(1), above]).sort().values
    return levels / levels.max()


def nf4_levels_python():
    """Plain Python floats, from the standard library's normal distribution."""
    normal = statistics.NormalDist()
    above = [normal.inv_cdf(OFFSET + (0.5 - OFFSET) * k / 8) for k in range(8)]
    below = [-normal.inv_cdf(OFFSET + (0.5 - OFFSET) * k / 7) for k in range(7)]
    top = max(above)
    return sorted(v / top for v in [*below, 0.0, *above])


def halves(offset=OFFSET, n_above=8, n_below=7, normalise=True, ordered=True):
    """NF4 built with one step changed: the offset, the split, no division, no sort."""
    above = torch.special.ndtri(torch.linspace(offset, 0.5, n_above + 1)[:-1].double())
    below = -torch.special.ndtri(torch.linspace(offset, 0.5, n_below + 1)[:-1].double())
    levels = torch.cat([below, torch.zeros(1, dtype=torch.float64), above])
    levels = levels.sort().values if ordered else levels
    return levels / levels.abs().max() if normalise else levels


def zero_twice():
    """Each half keeps the probability 0.5 (8 a side): its quantile, 0, comes twice."""
    half = torch.special.ndtri(torch.linspace(OFFSET, 0.5, 8).double())  # (8,), ends with 0
    levels = torch.cat([-half, half]).sort().values
    return levels / levels.max()


def symmetric_without_zero():
    """The QLoRA paper's formula read literally: 16 quantiles, symmetric, no exact zero."""
    edges = torch.special.ndtri(torch.linspace(1 - OFFSET, OFFSET, 16).double())
    return edges / edges.max()


WRONG_LEVELS = [
    (lambda: int_levels(4), "returned 15 levels: a 4-bit code takes 16 values"),
    (lambda: int_levels(4), "(the symmetric integer levels -7/7 ... 7/7 are 15)"),
    (lambda: halves(n_above=7), "returned 15 levels: a 4-bit code takes 16 values, so NF4"),
    (
        lambda: halves(n_above=7),
        "8 above zero (9 points from the offset to 0.5, a step of (offset - 0.5) / 8",
    ),
    (lambda: halves(n_above=7, n_below=6), "returned 14 levels"),
    (
        lambda: halves(n_above=7, n_below=6),
        "7 below (8 points, a step of (offset - 0.5) / 7, then drop 0.5)",
    ),
    (lambda: torch.linspace(-1, 1, 17), "returned 17 levels"),
    (lambda: torch.linspace(-1, 1, 16), "evenly spaced levels (like int4's)"),
    (lambda: torch.arange(-8, 8) / 8, "evenly spaced levels"),
    (lambda: halves(normalise=False), "is not normalised: the levels span [-1.848, 1.848]"),
    (lambda: halves(ordered=False), "is not sorted"),
    (symmetric_without_zero, "no level exactly at 0: 16 levels symmetric around zero"),
    (lambda: halves(n_above=7, n_below=8), "8 levels below zero and 7 above"),
    (lambda: halves(offset=1.0), "contains inf or NaN"),
    (zero_twice, "has a level twice"),
    (lambda: halves(offset=1 - 1 / 32), "NF4's shape (16 sorted levels"),
    (lambda: halves(offset=0.99), "the probabilities start at the offset"),
    (lambda: halves(offset=0.9677), "as from a rounded offset"),
    (lambda: halves(offset=0.96771), "use 1 - (1/30 + 1/32) / 2 exactly (or bitsandbytes' 0.96"),
    (lambda: nf4_levels().half(), "returned torch.float16 levels, off by up to"),
    (lambda: nf4_levels().bfloat16(), "returned torch.bfloat16 levels"),
    (lambda: torch.tensor(BITSANDBYTES_NF4).view(4, 4), "got a tensor of shape (4, 4)"),
    (lambda: None, "should return the 16 levels"),
    (lambda: "NF4", "should return the 16 levels"),
    (UNWRITTEN, "not written yet"),
]


# --- 08.2 quantize_4bit -----------------------------------------------------------------------


def quantize_4bit(weight, levels, block_size):  # the solution notebook's answer
    blocks = weight.reshape(-1, block_size)  # (n_blocks, block_size), row-major
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    normalized = (blocks / absmax[:, None]).reshape(-1, 1)  # (numel, 1) in [-1, 1]
    codes = (normalized - levels).abs().argmin(dim=1).to(torch.uint8)  # (numel,)
    pairs = codes.view(-1, 2)  # (numel / 2, 2)
    return pairs[:, 0] << 4 | pairs[:, 1], absmax


def quantize_4bit_midpoints(weight, levels, block_size):
    flat = weight.flatten()
    absmax = flat.view(-1, block_size).abs().max(dim=1).values
    scaled = flat * (1 / absmax).repeat_interleave(block_size)  # multiply: a tie may round apart
    codes = torch.bucketize(scaled, (levels[1:] + levels[:-1]) / 2).to(torch.uint8)
    return (codes[0::2] * 16 + codes[1::2]).reshape(-1, 1), absmax  # (numel / 2, 1), as bnb


def quantize_4bit_package(weight, levels, block_size):
    quantized = quantize_blockwise(weight, levels, block_size)
    return pack_nibbles(quantized.codes), quantized.absmax


def quantize_4bit_by_hand(weight, levels, block_size):
    """Pure Python loops over the values, bytes built with bytes()."""
    flat, levels = weight.flatten().tolist(), levels.tolist()
    absmax, codes = [], []
    for start in range(0, len(flat), block_size):
        block = flat[start : start + block_size]
        absmax.append(max(abs(v) for v in block))
        for v in block:
            codes.append(min(range(16), key=lambda i, v=v: abs(v / absmax[-1] - levels[i])))
    packed = bytes(codes[i] << 4 | codes[i + 1] for i in range(0, len(codes), 2))
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8), torch.tensor(absmax)


def quantizer(absmax=None, scale=None, pack=None, flatten=None, nearest=None, dtype=torch.uint8):
    """quantize_4bit with one step done the wrong way (each argument replaces a step)."""

    def quantize(weight, levels, block_size):
        flat = flatten(weight) if flatten else weight.reshape(-1)
        blocks = flat.view(-1, block_size)
        scales = absmax(blocks) if absmax else blocks.abs().amax(dim=1)
        per_value = (
            scale(flat, scales, block_size) if scale else scales.repeat_interleave(block_size)
        )
        normalized = flat / per_value
        if nearest:
            codes = nearest(normalized, levels)
        else:
            codes = (normalized[:, None] - levels).abs().argmin(dim=1)
        codes = codes.to(torch.uint8)
        packed = pack(codes) if pack else codes[0::2] << 4 | codes[1::2]
        return packed.to(dtype), scales

    return quantize


def per_row_blocks(weight, levels, block_size):
    """Blocks of block_size within each row: a short block at the end of each row."""
    absmax, codes = [], []
    for row in weight:
        for start in range(0, len(row), block_size):
            block = row[start : start + block_size]
            absmax.append(block.abs().max())
            codes.append((block[:, None] / absmax[-1] - levels).abs().argmin(dim=1))
    codes = torch.cat(codes).to(torch.uint8)
    return codes[0::2] << 4 | codes[1::2], torch.stack(absmax)


def quantize_in_place(weight, levels, block_size):
    packed, absmax = quantize_4bit(weight, levels, block_size)
    weight.view(-1, block_size).div_(absmax[:, None])  # "normalise" the caller's weight
    return packed, absmax


WRONG_QUANTIZERS = [
    (
        quantizer(absmax=lambda b: b.abs().max().expand(len(b))),
        "scaled by the absmax of the whole weight",
    ),
    (
        quantizer(
            absmax=lambda b: b.abs().max().reshape(1), scale=lambda f, s, bs: s.expand(len(f))
        ),
        "scaled by the absmax of the whole weight",
    ),
    (
        quantizer(scale=lambda flat, s, bs: flat.abs().max().expand(len(flat))),
        "divided every weight by the absmax of the whole weight",
    ),
    (per_row_blocks, "cut each row into blocks"),
    (
        quantizer(pack=lambda c: c[1::2] << 4 | c[0::2]),
        "packed the first code of each pair in the LOW",
    ),
    (quantizer(pack=lambda c: c), "one per weight: pack them, two 4-bit codes a byte"),
    (quantizer(dtype=torch.int64), "of torch.int64: store them as torch.uint8"),
    (quantizer(dtype=torch.int8), "int8 holds -128 to 127"),
    (quantizer(dtype=torch.float32), "of torch.float32: store them as torch.uint8"),
    (quantizer(absmax=lambda b: b.amax(dim=1)), "by its largest value, .max()"),
    (quantizer(flatten=lambda w: w.T.reshape(-1)), "down the columns (weight.T)"),
    (
        quantizer(nearest=lambda v, lv: torch.bucketize(v, lv).clamp(max=15)),
        "rounds each value up (or down) to a level: take the NEAREST level",
    ),
    (
        quantizer(nearest=lambda v, lv: torch.bucketize(v, lv, right=True) - 1),
        "take the NEAREST level",
    ),
    (
        quantizer(pack=lambda c: (c[0::2] << 4 | c[1::2])[:-1]),
        "bytes: two 4-bit codes a byte make numel / 2",
    ),
    (
        quantizer(
            absmax=lambda b: b.abs().amax(dim=1).repeat_interleave(2),  # each scale twice
            scale=lambda f, s, bs: s[::2].repeat_interleave(bs),
        ),
        "scales: one absmax per block of",
    ),
    (
        quantizer(absmax=lambda b: b.abs().amax(dim=1) * 1.01),
        "a block's absmax is the largest |value|",
    ),
    (
        quantizer(nearest=lambda v, lv: torch.round(v * 7) + 8),
        "evenly spaced integer levels (like int4's round(value * 7) + 8), ignoring `levels`",
    ),
    (
        quantizer(nearest=lambda v, lv: ((v + 1) / 2 * 15).round()),
        "use the index of the nearest of `levels`",
    ),
    (lambda w, lv, bs: quantize_4bit(w, lv, bs)[::-1], "returned (absmax, packed): return"),
    (
        lambda w, lv, bs: (quantize_4bit(w, lv, bs)[0], quantize_4bit(w, lv, bs)[1].bfloat16()),
        "returned absmax in torch.bfloat16, which rounds the scales",
    ),
    (
        lambda w, lv, bs: (quantize_4bit(w, lv, bs)[0], quantize_4bit(w, lv, bs)[1].half()),
        "returned absmax in torch.float16",
    ),
    (quantize_in_place, "changed the weight it was given in place"),
    (lambda w, lv, bs: quantize_4bit(w, lv, bs)[0], "should return a pair (packed, absmax)"),
    (
        lambda w, lv, bs: (quantize_4bit(w, lv, bs)[0].tolist(), quantize_4bit(w, lv, bs)[1]),
        "packed should be a tensor, got list",
    ),
    (UNWRITTEN, "not written yet"),
]


def test_the_quantize_cases_hold_what_the_mistakes_need():
    """Rows are not whole blocks; an outlier sets the global absmax; block 0's top is negative."""
    for case in [QUANTIZE_4BIT.visible] + [QUANTIZE_4BIT.variant(random.Random(s)) for s in SEEDS]:
        weight = lesson08._quantize_weight(case)
        block_size = case["block_size"]
        assert weight.shape[1] % block_size and weight.numel() % block_size == 0
        blocks = weight.reshape(-1, block_size)
        assert len(blocks) >= 3
        assert blocks[0].min().abs() > blocks[0].max() and blocks[1].max() > blocks[1].min().abs()
        absmax = blocks.abs().amax(dim=1)
        assert absmax[-1] == absmax.max() and absmax[-1] > 5 * absmax[:-1].max()


# --- 08.3 bits_per_parameter ------------------------------------------------------------------


def bits_per_parameter(block_size, double_quant, scale_block_size=256):  # the solution's answer
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * scale_block_size)
    return 4 + 32 / block_size


def bits_counted_in_bytes(block_size, double_quant, scale_block_size=256):
    """Bytes per block of weights, times 8, per weight."""
    nbytes = block_size / 2 + (1 + 4 / scale_block_size if double_quant else 4)
    return Fraction(int(8 * nbytes * scale_block_size), block_size * scale_block_size)


def bits(single, double):
    return lambda b, double_quant, scale_block_size=256: (
        double(b, scale_block_size) if double_quant else single(b, scale_block_size)
    )


def right_single(b, s):
    return 4 + 32 / b


def right_double(b, s):
    return 4 + 8 / b + 32 / (b * s)


WRONG_BITS = [
    *[(bits(m, right_double), msg) for m, msg in lesson08.SINGLE_MISTAKES],
    *[(bits(right_single, m), msg) for m, msg in lesson08.DOUBLE_MISTAKES],
    (bits(lambda b, s: 4 + 32 / b + 0.01, right_double), Pattern(r"should be [\d.]+, got")),
    (bits(right_single, lambda b, s: None), "should return a number"),
    (lambda b, scale_block_size=256: 4.5, "raised TypeError"),  # no double_quant argument
    (UNWRITTEN, "not written yet"),
]


def test_the_formula_is_the_package_storage():
    """NF4Weight stores 4 + 8/64 + 32/(64 x 256) bits a weight, and one fp32 mean per tensor."""
    for block_size, scale_block_size in ((64, 256), (32, 128)):
        numel = block_size * scale_block_size * 2
        stored = to_nf4(torch.randn(numel), block_size, scale_block_size).bits_per_parameter
        assert stored == pytest.approx(right_double(block_size, scale_block_size) + 32 / numel)
        single = quantize_blockwise(torch.randn(numel), int_levels(4), block_size)
        nbytes = numel // 2 + single.absmax.numel() * single.absmax.element_size()
        assert 8 * nbytes / numel == pytest.approx(right_single(block_size, scale_block_size))


# --- 08.4 qlora_forward -----------------------------------------------------------------------


def dequantize_4bit(packed, absmax, levels, shape, block_size, dtype):  # the solution's answer
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)  # (numel,)
    values = levels[codes.long()] * absmax.repeat_interleave(block_size)  # (numel,) fp32
    return values.view(shape).to(dtype)  # (out, in)


def qlora_forward(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, scaling):
    weight = dequantize_4bit(packed, absmax, levels, shape, block_size, x.dtype)  # (out, in)
    base = F.linear(x, weight, None if bias is None else bias.to(x.dtype))  # (..., out)
    branch = F.linear(F.linear(x.to(lora_A.dtype), lora_A), lora_B)  # (..., out) fp32
    return base + (scaling * branch).to(x.dtype)


def forward_in_x_dtype(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, s):
    """Levels and scales cast to x's dtype first; the branch in x's dtype too."""
    codes = torch.stack([packed // 16, packed % 16], dim=-1).flatten().long()
    scales = absmax.to(x.dtype).repeat_interleave(block_size)
    weight = (levels.to(x.dtype)[codes] * scales).reshape(shape)
    y = x @ weight.T + (0 if bias is None else bias.to(x.dtype))
    return y + s * (x @ lora_A.to(x.dtype).T @ lora_B.to(x.dtype).T)


def forward_merged(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, scaling):
    """The update folded into a dequantized copy (in fp32), then one product in x's dtype."""
    weight = dequantize_4bit(packed, absmax, levels, shape, block_size, torch.float32)
    merged = weight + scaling * lora_B @ lora_A  # (out, in)
    return F.linear(x, merged.to(x.dtype), None if bias is None else bias.to(x.dtype))


def forward_einsum(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, scaling):
    codes = torch.stack([packed >> 4, packed & 15], dim=1).view(-1).long()
    weight = (levels[codes].view(-1, block_size) * absmax[:, None]).view(shape).to(x.dtype)
    y = torch.einsum("...i,oi->...o", x, weight)
    if bias is not None:
        y = y + bias.to(y.dtype)
    branch = torch.einsum("...i,ri,or->...o", x.float(), lora_A, lora_B)
    return y + (scaling * branch).to(y.dtype)


def forwarding(weight=None, branch=None, bias=True, dtype=None, cast_back=True):
    """qlora_forward with one step done the wrong way (each argument replaces a step)."""

    def forward(x, packed, absmax, levels, shape, block_size, b, lora_A, lora_B, scaling):
        if weight:
            W = weight(packed, absmax, levels, shape, block_size, x.dtype)
        else:
            W = dequantize_4bit(packed, absmax, levels, shape, block_size, dtype or x.dtype)
        base = F.linear(x, W, (b.to(W.dtype) if b is not None else None) if bias else None)
        if branch:
            update = branch(x, lora_A, lora_B, scaling)
        else:
            update = scaling * F.linear(F.linear(x.to(lora_A.dtype), lora_A), lora_B)
        return base + (update.to(base.dtype) if cast_back else update)

    return forward


def unpack_low_first(packed, absmax, levels, shape, block_size, dtype):
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1).long()
    return (levels[codes] * absmax.repeat_interleave(block_size)).view(shape).to(dtype)


def tiled_absmax(packed, absmax, levels, shape, block_size, dtype):
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1).long()
    return (levels[codes] * absmax.repeat(block_size)).view(shape).to(dtype)


def unscaled(packed, absmax, levels, shape, block_size, dtype):
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1).long()
    return levels[codes].view(shape).to(dtype)


def codes_as_numbers(packed, absmax, levels, shape, block_size, dtype):
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)
    return (codes * absmax.repeat_interleave(block_size)).view(shape).to(dtype)


def uint8_index(packed, absmax, levels, shape, block_size, dtype):
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)  # uint8: a mask
    return (levels[codes] * absmax.repeat_interleave(block_size)).view(shape).to(dtype)


def divided(packed, absmax, levels, shape, block_size, dtype):
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1).long()
    return (levels[codes].view(-1, block_size) / absmax[:, None]).view(shape).to(dtype)


def in_float32_then_cast(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, s):
    """bitsandbytes' compute_dtype=float32 under a bf16 input: right values, the wrong product."""
    weight = dequantize_4bit(packed, absmax, levels, shape, block_size, torch.float32)
    xf = x.float()
    y = F.linear(xf, weight, bias) + s * (xf @ lora_A.T @ lora_B.T)
    return y.to(x.dtype)


def bias_not_cast(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, scaling):
    """The bias added as it comes, float32: a bfloat16 output becomes float32."""
    weight = dequantize_4bit(packed, absmax, levels, shape, block_size, x.dtype)
    y = x @ weight.T + (0 if bias is None else bias)
    return y + (scaling * (x.to(lora_A.dtype) @ lora_A.T @ lora_B.T)).to(x.dtype)


def float64_in_float32(x, packed, absmax, levels, shape, block_size, bias, A, B, scaling):
    """float32 compute for a float64 input (right for float32 and bfloat16 inputs)."""
    dtype = torch.float32 if x.dtype == torch.float64 else x.dtype
    y = qlora_forward(x.to(dtype), packed, absmax, levels, shape, block_size, bias, A, B, scaling)
    return y.to(x.dtype)


def bias_always(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, scaling):
    weight = dequantize_4bit(packed, absmax, levels, shape, block_size, x.dtype)
    branch = F.linear(F.linear(x.to(lora_A.dtype), lora_A), lora_B)
    return F.linear(x, weight, bias.to(x.dtype)) + (scaling * branch).to(x.dtype)


def in_float32_with_matmul(x, packed, absmax, levels, shape, block_size, bias, A, B, scaling):
    """The same mistake, written with the @ operator."""
    weight = dequantize_4bit(packed, absmax, levels, shape, block_size, torch.float32)
    y = x.float() @ weight.T + (0 if bias is None else bias) + scaling * (x.float() @ A.T @ B.T)
    return y.to(x.dtype)


def forward_delta_matrix(x, packed, absmax, levels, shape, block_size, bias, A, B, scaling):
    """The branch as one (out, in) update B A in fp32 (not the weight: right, if wasteful)."""
    weight = dequantize_4bit(packed, absmax, levels, shape, block_size, x.dtype)
    base = F.linear(x, weight, None if bias is None else bias.to(x.dtype))
    return base + F.linear(x.to(A.dtype), scaling * B @ A).to(x.dtype)


def under_no_grad(*args):
    with torch.no_grad():
        return qlora_forward(*args)


def changes_absmax(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, scaling):
    y = qlora_forward(x, packed, absmax, levels, shape, block_size, bias, lora_A, lora_B, scaling)
    absmax.mul_(2)  # "rescaled for the next call"
    return y


def flattened(*args):
    y = qlora_forward(*args)
    return y.reshape(-1, y.shape[-1])


def branch_of(f):
    return lambda x, A, B, s: f(x.to(A.dtype), A, B, s)


WRONG_FORWARDS = [
    (forwarding(weight=unpack_low_first), "unpacked the low nibble first"),
    (forwarding(weight=tiled_absmax), "absmax.repeat(block_size) repeats the whole list"),
    (forwarding(weight=unscaled), "the levels are not scaled"),
    (forwarding(weight=codes_as_numbers), "the codes were used as numbers"),
    (forwarding(weight=divided), "divided by the absmax"),
    (forwarding(weight=uint8_index), "reads them as a mask of booleans, not as indices"),
    (forwarding(branch=branch_of(lambda x, A, B, s: x @ A.T @ B.T)), "branch is not scaled"),
    (forwarding(branch=branch_of(lambda x, A, B, s: 0 * (x @ A.T @ B.T))), "branch is missing"),
    (forwarding(branch=branch_of(lambda x, A, B, s: s * s * (x @ A.T @ B.T))), "scaled twice"),
    (forwarding(bias=False), "the bias is missing"),
    (forwarding(dtype=torch.float32), "a dtype mismatch. Dequantize the weight in x.dtype"),
    (forwarding(cast_back=False), "returned torch.float32: the output has x's dtype"),
    (forwarding(branch=lambda x, A, B, s: s * (x @ A.T @ B.T)), "a dtype mismatch"),
    (in_float32_then_cast, "the weight reached the product as torch.float32, not x's torch.bf"),
    (in_float32_then_cast, "(bitsandbytes warns of this: a compute dtype other than the input"),
    (in_float32_with_matmul, "the weight reached the product as torch.float32, not x's"),
    (float64_in_float32, "reached the product as torch.float32, not x's torch.float64 (the"),
    (bias_not_cast, "returned torch.float32: the output has x's dtype (torch.bfloat16)"),
    (
        bias_not_cast,
        "Or a float32 bias was added without `.to(x.dtype)` (float32 + bfloat16 gives float32)",
    ),
    (bias_always, "bias is None here"),
    (under_no_grad, "no gradient reaches lora_A and lora_B"),
    (
        forwarding(branch=lambda x, A, B, s: s * F.linear(F.linear(x.float(), A.detach()), B)),
        "no gradient reaches lora_A through",
    ),
    (
        forwarding(
            weight=lambda p, a, lv, shape, bs, dt: dequantize_4bit(p, a, lv, shape, bs, dt).T
        ),
        "the matrices do not line up",
    ),  # fmt: skip
    (forwarding(branch=lambda x, A, B, s: s * x.float() @ A @ B), "the matrices do not line up"),
    (changes_absmax, "changed the absmax it was given in place"),
    (flattened, "returned shape"),
    (lambda *args: None, "should return the output tensor, got NoneType"),
    (lambda *args: qlora_forward(*args) + 1e-2, "differs from the package's LoRALinear"),
    (UNWRITTEN, "not written yet"),
]


def test_the_forward_cases_keep_the_weight_shape_apart():
    """The product spy tells the weight by its shape: no other tensor may have it."""
    for case in [QLORA_FORWARD.visible] + [QLORA_FORWARD.variant(random.Random(s)) for s in SEEDS]:
        weight = {case["out"], case["in"]}
        assert case["out"] != case["in"] and case["r"] < case["out"]
        assert not weight & {case["batch"], case["seq"], case["batch"] * case["seq"]}
        assert case["in"] % case["block_size"] and case["alpha"] % case["r"]


def test_the_reference_is_the_formula():
    """The package's LoRALinear(NF4Linear) computes x W^T + b + scaling (x A^T) B^T in fp32."""
    case = QLORA_FORWARD.visible
    t = lesson08._forward_inputs(case)
    weight = to_nf4(t["W"], case["block_size"])
    args = (t["x"], weight.packed, weight.absmax(), torch.tensor(BITSANDBYTES_NF4),
            (case["out"], case["in"]), case["block_size"], t["bias"], t["A"], t["B"],
            case["alpha"] / case["r"])  # fmt: skip
    want = lesson08._reference(case, torch.float32, True)["y"]
    assert torch.allclose(qlora_forward(*args), want, rtol=1e-5, atol=1e-5)


# --- shared tests -----------------------------------------------------------------------------

RIGHT = [
    (NF4_LEVELS, nf4_levels),
    (NF4_LEVELS, nf4_levels_icdf),
    (NF4_LEVELS, nf4_levels_python),
    (NF4_LEVELS, lambda: np.array(BITSANDBYTES_NF4)),
    (NF4_LEVELS, lambda: halves()),  # float64 throughout
    (QUANTIZE_4BIT, quantize_4bit),
    (QUANTIZE_4BIT, quantize_4bit_midpoints),
    (QUANTIZE_4BIT, quantize_4bit_package),
    (QUANTIZE_4BIT, quantize_4bit_by_hand),
    (BITS_PER_PARAMETER, bits_per_parameter),
    (BITS_PER_PARAMETER, bits_counted_in_bytes),
    (
        BITS_PER_PARAMETER,
        lambda b, double_quant, scale_block_size: np.float32(
            bits_per_parameter(b, double_quant, scale_block_size)
        ),
    ),  # fmt: skip
    (QLORA_FORWARD, qlora_forward),
    (QLORA_FORWARD, forward_in_x_dtype),
    (QLORA_FORWARD, forward_merged),
    (QLORA_FORWARD, forward_einsum),
    (QLORA_FORWARD, forward_delta_matrix),
]
WRONG = [
    *[(NF4_LEVELS, f, m) for f, m in WRONG_LEVELS],
    *[(QUANTIZE_4BIT, f, m) for f, m in WRONG_QUANTIZERS],
    *[(BITS_PER_PARAMETER, f, m) for f, m in WRONG_BITS],
    *[(QLORA_FORWARD, f, m) for f, m in WRONG_FORWARDS],
]
MAIN = (nf4_levels, quantize_4bit, bits_per_parameter, qlora_forward)


@pytest.mark.parametrize(("exercise", "answer"), RIGHT)
def test_right_answers_pass_the_visible_case_and_variants(exercise, answer):
    passes(exercise, answer, SEEDS if answer in MAIN else SEEDS[:5])


@pytest.mark.parametrize(("exercise", "answer", "message"), WRONG)
def test_each_mistake_is_named_on_the_visible_case_and_variants(exercise, answer, message):
    pattern = message if isinstance(message, Pattern) else re.escape(message)
    fails(exercise, answer, pattern, WRONG_SEEDS)


def test_the_levels_messages_do_not_give_the_table_away():
    with pytest.raises(AssertionError) as error:
        NF4_LEVELS.check(lambda: halves(offset=1 - 1 / 32))
    assert "0.6961" not in str(error.value) and "0.0795" not in str(error.value)


def test_the_messages_fit_the_mistake():
    """No bitsandbytes speed remark for a float64 input; no rounded offset for a wrong one."""
    with pytest.raises(AssertionError) as error:
        QLORA_FORWARD.check(float64_in_float32)
    assert "bitsandbytes" not in str(error.value) and "slow" not in str(error.value)
    with pytest.raises(AssertionError) as error:
        NF4_LEVELS.check(lambda: halves(offset=0.99))
    assert "rounded offset" not in str(error.value)


def test_the_solution_is_within_the_tolerance_not_bit_exact():
    """The exercise text says so: float32 quantiles of the exact offset differ from bitsandbytes'
    table by a few 1e-7, inside the check's 1e-6; its offset and float64 quantiles give it exactly.
    """
    table = torch.tensor(BITSANDBYTES_NF4)
    gap = float((nf4_levels() - table).abs().max())
    assert 0 < gap <= lesson08.LEVELS_TOLERANCE
    above = torch.special.ndtri(torch.linspace(0.9677083, 0.5, 9)[:-1].double()).float()
    below = -torch.special.ndtri(torch.linspace(0.9677083, 0.5, 8)[:-1].double()).float()
    levels = torch.cat([below, torch.zeros(1), above]).sort().values
    assert torch.equal(levels / levels.max(), table)


def test_judging_uses_only_the_case_and_the_observations():
    """The grader's process rebuilds the references: the judge needs no learner state."""
    for exercise, answer in zip(lesson08.EXERCISES, MAIN, strict=True):
        case = exercise.variant(random.Random(5)) if exercise.variant else exercise.visible
        observations = exercise.observe(answer, case)
        torch.manual_seed(123)  # whatever the global RNG holds
        exercise.judge(observations, through_json(case))


def test_the_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for exercise, answer in zip(lesson08.EXERCISES, MAIN, strict=True):
        exercise.check(answer)
    assert torch.equal(torch.rand(3), expected)
    assert math.isfinite(float(expected.sum()))
