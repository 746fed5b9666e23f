"""Exercises 08: NF4's levels, 4-bit quantization with packing, bits per weight, a QLoRA forward.

08.1 `nf4_levels()`, 08.2 `quantize_4bit(weight, levels, block_size)`, 08.3
`bits_per_parameter(block_size, double_quant, scale_block_size)`, 08.4 `qlora_forward(...)`.
Every check judges against the package's own 4-bit code (lora_course.quantization, which tests
compare bit for bit with bitsandbytes): its `nf4_levels`, `quantize_blockwise`, packing high nibble
first, `NF4Weight`'s storage, and `LoRALinear` around an `NF4Linear`. Weights are seeded so that
the classic mistakes give other answers: the blocks' absmax differ widely (an outlier in one block),
a block's largest magnitude is negative, and rows are not a whole number of blocks.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..layers import LoRALinear
from ..quantization import (
    NF4Linear,
    nearest_level,
    nf4_levels,
    quantize_blockwise,
    to_nf4,
    unpack_nibbles,
)
from .exercise import (
    Exercise,
    attempt,
    describe,
    judge_number,
    judge_numbers,
    observe_number,
    raised,
    require,
)

OFFSET = "1 - (1/30 + 1/32) / 2 (0.9677083 as bitsandbytes rounds it)"  # NF4's outermost p
STEPS = (
    "8 above zero (9 points from the offset to 0.5, a step of (offset - 0.5) / 8, then drop 0.5), "
    "7 below (8 points, a step of (offset - 0.5) / 7, then drop 0.5) and an exact 0"
)
HALF = ("torch.float16", "torch.bfloat16")
HIGH_FIRST = "byte = first << 4 | second, as bitsandbytes packs them"


def _float64(value) -> torch.Tensor:
    """A float64 CPU copy (never a view of the learner's tensor, which may change later)."""
    return torch.as_tensor(value).detach().to(torch.float64, copy=True).cpu()


def _record_tensor(observations, key: str, value, numbers: bool = False) -> None:
    """Record a tensor the learner returned (or, with `numbers`, a list of numbers) as float64
    under `key`, or what it returned instead."""
    if not isinstance(value, torch.Tensor) and (
        not numbers or value is None or isinstance(value, bool | str | bytes)
    ):
        observations[f"{key}_returned"] = describe(value)
        return
    converted = attempt(observations, key, lambda: _float64(value))
    if converted is not None:
        observations[key] = converted
        observations[f"{key}_dtype"] = str(value.dtype) if isinstance(value, torch.Tensor) else ""


def _record_input(observations, key: str, tensor: torch.Tensor) -> None:
    """The learner's input tensor as the call left it, for the judge to compare with the case's."""
    after = attempt(observations, key, lambda: _float64(tensor))
    if after is not None:
        observations[key] = after


def _changed_inputs(observations, given: dict[str, torch.Tensor], prefix: str) -> list[str]:
    """Names of the given tensors that the call changed (value, shape) or left unreadable."""
    changed = []
    for name, tensor in given.items():
        after = observations.get(f"{prefix}{name}")
        if f"{prefix}{name}_error" in observations or (
            isinstance(after, torch.Tensor)
            and (tuple(after.shape) != tuple(tensor.shape) or not torch.equal(after, tensor))
        ):
            changed.append(name)
    return changed


def _in_place(call: str, names: list[str]) -> str:
    return (
        f"{call} changed the {' and '.join(names)} it was given in place (an in-place operation "
        "such as div_, mul_, clamp_, /= or [...] = ...): the caller's tensors must stay as they "
        "were, so compute on new tensors"
    )


def _blocky_weight(g: torch.Generator, rows: int, cols: int, block_size: int) -> torch.Tensor:
    """A (rows, cols) fp32 weight whose blocks (row-major, `block_size` values) differ in spread.

    Block 0's largest magnitude is negative and block 1's positive; the last block holds an
    outlier, ten times the largest value elsewhere, as real weights have.
    """
    n_blocks = rows * cols // block_size
    spread = 0.25 + 4 * torch.rand(n_blocks, generator=g)  # (n_blocks,)
    flat = torch.randn(rows * cols, generator=g) * spread.repeat_interleave(block_size)
    for block, sign in ((0, -1.0), (1, 1.0)):
        values = flat[block * block_size : (block + 1) * block_size]  # a view: set in place
        top = int(values.abs().argmax())
        values[top] = sign * values[top].abs()
    last = flat[-block_size:]
    last[int(torch.randint(block_size, (1,), generator=g))] = 10 * float(flat.abs().max())
    return flat.view(rows, cols)


# --- 08.1 nf4_levels() ------------------------------------------------------------------------

LEVELS_TOLERANCE = 1e-6  # float32 quantiles (torch.special.ndtri, Normal.icdf) are within 5e-7
ROUNDED_OFFSET = 1e-4  # levels this close come from a rounded offset (0.9677 gives 2e-5)


def observe_nf4_levels(nf4_levels, case):
    """Exercise 08.1: the learner's 16 levels, as float64."""
    observations = {}
    result = attempt(observations, "call", nf4_levels)
    if "call_error" in observations:
        return observations
    _record_tensor(observations, "levels", result, numbers=True)
    levels = observations.get("levels")
    if levels is not None and levels.dim() != 1:
        observations["levels_returned"] = f"a tensor of shape {tuple(levels.shape)}"
        del observations["levels"]
    return observations


def _close_levels(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and float((got - want).abs().max()) <= LEVELS_TOLERANCE


def judge_nf4_levels(observations, case) -> None:
    """Exercise 08.1: bitsandbytes' NF4 table, as `lora_course.quantization.nf4_levels` makes it."""
    call = "nf4_levels()"
    raised(observations, "call", call)
    returned = observations.get("levels_returned")
    require(
        returned is None,
        f"{call} should return the 16 levels, a 1-D tensor (or a list of numbers), got {returned}",
    )
    raised(observations, "levels", f"converting the result of {call} to a tensor")
    got, want = observations["levels"], nf4_levels().double()
    count = len(got)
    if count in (14, 15):
        gaps = got.sort().values.diff()
        even = count == 15 and float((gaps - gaps.mean()).abs().max()) <= 1e-4
        hint = " (the symmetric integer levels -7/7 ... 7/7 are 15)" if even else f": {STEPS}"
    require(
        count == 16,
        f"{call} returned {count} levels: a 4-bit code takes 16 values, so NF4 has 16 levels"
        + (hint if count in (14, 15) else ""),
    )
    require(
        bool(torch.isfinite(got).all()),
        f"{call} contains inf or NaN: the normal quantile of probability 1 (or 0) is infinite; "
        f"the outermost probability is the offset {OFFSET}, not 1",
    )
    if _close_levels(got, want):
        return
    require(
        bool((got[1:] >= got[:-1]).all()),
        f"{call} is not sorted: list the levels in ascending order (a code is the index of its "
        "level, and the nearest level is found between sorted neighbours)",
    )
    require(
        bool((got[1:] > got[:-1]).all()),
        f"{call} has a level twice (ndtri(0.5) = 0 in both halves?): leave the probability 0.5 "
        "out of each half, and add the level 0 once",
    )
    require(
        not _close_levels(got / got.abs().max(), want),
        f"{call} is not normalised: the levels span [{float(got[0]):.4g}, {float(got[-1]):.4g}]; "
        "divide by the largest so they span [-1, 1], like weight / absmax",
    )
    require(
        not _close_levels(-got.flip(0), want),
        f"{call} has 8 levels below zero and 7 above: NF4 puts the extra level on the positive "
        "side (8 quantiles above zero, 7 below, and 0), as bitsandbytes does",
    )
    gaps = got[1:] - got[:-1]  # (15,)
    require(
        float((gaps - gaps.mean()).abs().max()) > 1e-4,
        f"{call} gives evenly spaced levels (like int4's): NF4's levels are quantiles of a "
        "normal distribution, closer together near 0, where most weights are",
    )
    symmetric = _close_levels(got, -got.flip(0))
    require(
        bool((got == 0).any()),
        f"{call} has no level exactly at 0"
        + (": 16 levels symmetric around zero cannot include it (8 on each side)" if symmetric
           else "")
        + ". NF4 takes 8 quantiles above zero, 7 below, and an exact 0, so that a zero weight "
        "(and the zero padding) is stored exactly",
    )  # fmt: skip
    require(
        abs(float(got[0]) + 1) <= LEVELS_TOLERANCE and abs(float(got[-1]) - 1) <= LEVELS_TOLERANCE,
        f"{call} spans [{float(got[0]):.4g}, {float(got[-1]):.4g}]: NF4's levels run from -1 to 1 "
        "(each half is divided by its outermost quantile, the same in both halves)",
    )
    above, below = int((got > 0).sum()), int((got < 0).sum())
    require(
        (above, below) == (8, 7),
        f"{call} has {above} levels above zero and {below} below: NF4 has 8 above, 7 below",
    )
    dtype = observations.get("levels_dtype", "")
    gap = float((got - want).abs().max())
    require(
        dtype not in HALF,
        f"{call} returned {dtype} levels, off by up to {gap:.2g}: {dtype} keeps about "
        f"{3 if dtype == 'torch.float16' else 2} significant digits. Return float32 levels",
    )
    require(
        gap > ROUNDED_OFFSET,
        f"{call} is off by up to {gap:.1g}, as from a rounded offset (0.9677 gives 2e-5): use "
        "1 - (1/30 + 1/32) / 2 exactly (or bitsandbytes' 0.9677083)",
    )
    k = int((got - want).abs().argmax())
    raise AssertionError(
        f"{call} has NF4's shape (16 sorted levels from -1 to 1, 7 below zero, an exact 0, 8 "
        f"above) but other values (level {k} is {float(got[k]):.6f}): the probabilities start "
        f"at the offset {OFFSET} and are evenly spaced towards 0.5: {STEPS}"
    )


NF4_LEVELS = Exercise(
    id="08.1",
    target="nf4_levels",
    observe=observe_nf4_levels,
    judge=judge_nf4_levels,
    visible={},
    variant=None,  # the levels are a fact: the same table for every case
)


def check_nf4_levels(nf4_levels) -> None:
    """Exercise 08.1: NF4's 16 levels, normal quantiles with an exact zero, in [-1, 1]."""
    NF4_LEVELS.check(nf4_levels)


# --- 08.2 quantize_4bit(weight, levels, block_size) -> (packed, absmax) ----------------------


def _quantize_weight(case) -> torch.Tensor:
    g = torch.Generator().manual_seed(case["seed"])
    return _blocky_weight(g, case["rows"], case["cols"], case["block_size"])


def observe_quantize_4bit(quantize_4bit, case):
    """Exercise 08.2: the learner's packed bytes and block scales, and the weight after the call."""
    observations = {}
    weight = _quantize_weight(case)
    result = attempt(
        observations, "call", lambda: quantize_4bit(weight, nf4_levels(), case["block_size"])
    )
    if "call_error" not in observations:
        try:
            packed, absmax = result
        except Exception:  # noqa: BLE001 - not a pair
            observations["call_returned"] = describe(result)
        else:
            _record_tensor(observations, "packed", packed)
            _record_tensor(observations, "absmax", absmax)
    _record_input(observations, "after_weight", weight)
    return observations


def _codes(flat: torch.Tensor, scales: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The nearest level's index for flat / scales (int64)."""
    return nearest_level((flat / scales).float(), levels).long()


def _same_codes(got: torch.Tensor, want: torch.Tensor, normalized: torch.Tensor, levels) -> bool:
    """Equal codes, except where a value sits on the midpoint between two levels (a tie)."""
    if got.shape != want.shape:
        return False
    differ = got != want
    if not bool(differ.any()):
        return True
    low, high = torch.minimum(got, want)[differ], torch.maximum(got, want)[differ]
    if bool(((high - low) != 1).any()):
        return False
    midpoints = (levels[low] + levels[high]).double() / 2
    return bool(((normalized[differ].double() - midpoints).abs() <= 1e-6).all())


def _evenly_spaced_codes(normalized: torch.Tensor) -> list[torch.Tensor]:
    """Codes of evenly spaced integer levels (int4's, ignoring NF4's table): the mistake."""
    return [
        torch.round(normalized * 7).long() + 8,  # -7 ... 7 stored as 1 ... 15
        torch.round(normalized * 7).long() + 7,  # stored as 0 ... 14
        torch.round((normalized + 1) * 7.5).long(),  # 16 levels over [-1, 1]: 0 ... 15
        torch.round(normalized * 7.5 + 7.5).long(),
    ]


def _nearly_equal(got: torch.Tensor, want: torch.Tensor) -> bool:
    """The same codes but for a few off by one (a float rounding on a .5 boundary)."""
    if got.shape != want.shape or bool(((got - want).abs() > 1).any()):
        return False
    return int((got != want).sum()) <= max(1, len(got) // 100)


def _per_row_absmax(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Blocks of `block_size` within each row (a short one at each row's end): the mistake."""
    rows, cols = weight.shape
    chunks = [row[i : i + block_size] for row in weight for i in range(0, cols, block_size)]
    return torch.stack([c.abs().max() for c in chunks]).double()


def judge_quantize_4bit(observations, case) -> None:
    """Exercise 08.2: the package's `quantize_blockwise` with NF4, packed as `pack_nibbles` does."""
    rows, cols, block_size = case["rows"], case["cols"], case["block_size"]
    call = f"quantize_4bit(weight ({rows}, {cols}), levels, block_size={block_size})"
    raised(observations, "call", call)
    returned = observations.get("call_returned")
    require(returned is None, f"{call} should return a pair (packed, absmax), got {returned}")
    for name in ("packed", "absmax"):
        returned = observations.get(f"{name}_returned")
        require(returned is None, f"{call}: {name} should be a tensor, got {returned}")
        raised(observations, name, f"reading the {name} returned by {call}")
    weight = _quantize_weight(case)
    numel, n_blocks = rows * cols, rows * cols // block_size
    reference = quantize_blockwise(weight, nf4_levels(), block_size)
    packed, absmax = observations["packed"].reshape(-1), observations["absmax"].reshape(-1)

    require(
        not (len(packed) == n_blocks and len(absmax) == numel // 2),
        f"{call} returned (absmax, packed): return the pair in the order (packed, absmax), "
        f"the {numel // 2} bytes first, then the {n_blocks} scales",
    )
    require(
        len(packed) != numel,
        f"{call} returned {numel} codes, one per weight: pack them, two 4-bit codes a byte, into "
        f"numel / 2 = {numel // 2} bytes ({HIGH_FIRST})",
    )
    require(
        len(packed) == numel // 2,
        f"{call} returned {len(packed)} bytes: two 4-bit codes a byte make numel / 2 = "
        f"{numel // 2} for {numel} weights",
    )
    dtype = observations["packed_dtype"]
    require(
        dtype == "torch.uint8",
        f"{call} returned packed bytes of {dtype}: store them as torch.uint8, one byte (0 to 255) "
        "for two codes"
        + (": int8 holds -128 to 127, so a byte above 127 wraps" if dtype == "torch.int8" else ""),
    )

    flat = weight.reshape(-1)  # (numel,) row-major
    want_absmax = reference.absmax.double()  # (n_blocks,)
    global_absmax = float(flat.abs().max())
    if len(absmax) != n_blocks or not torch.allclose(absmax, want_absmax, rtol=1e-6, atol=0):
        dtype = observations["absmax_dtype"]
        if dtype in HALF and len(absmax) == n_blocks:
            off = float(((absmax - want_absmax) / want_absmax).abs().max())  # relative
            require(
                off > 1e-2,
                f"{call} returned absmax in {dtype}, which rounds the scales (by up to {off:.1g} "
                "relative): keep absmax float32, as bitsandbytes stores it",
            )
        require(
            len(absmax) == 0
            or not torch.allclose(absmax, torch.full_like(absmax, global_absmax), rtol=1e-6),
            f"{call} scaled by the absmax of the whole weight ({global_absmax:.4g}): one outlier "
            "then squeezes every other block onto the few levels near 0. Each block of "
            f"block_size = {block_size} weights gets its own absmax",
        )
        per_row = _per_row_absmax(weight, block_size)
        require(
            not (len(absmax) == len(per_row) and torch.allclose(absmax, per_row, rtol=1e-6)),
            f"{call} cut each row into blocks: blocks run over the flattened weight "
            f"(weight.reshape(-1), row-major), and a row of {cols} is not a whole number of "
            f"blocks of {block_size}",
        )
        require(
            len(absmax) == n_blocks,
            f"{call} returned {len(absmax)} scales: one absmax per block of {block_size} "
            f"consecutive weights of weight.reshape(-1), {numel} / {block_size} = {n_blocks}",
        )
        column_major = weight.T.reshape(-1, block_size).abs().amax(dim=1).double()
        require(
            not torch.allclose(absmax, column_major, rtol=1e-6),
            f"{call} took blocks down the columns (weight.T): blocks are consecutive weights of "
            "weight.reshape(-1), row by row",
        )
        signed = flat.view(-1, block_size).amax(dim=1).double()
        require(
            not torch.allclose(absmax, signed, rtol=1e-6),
            f"{call} scaled each block by its largest value, .max(): the scale is the largest "
            "magnitude, .abs().max(), or a block whose most extreme weight is negative falls "
            "outside [-1, 1]",
        )
        k = int((absmax - want_absmax).abs().argmax())
        raise AssertionError(
            f"{call}: the absmax of block {k} is {float(absmax[k]):.6g}: a block's absmax is the "
            "largest |value| among its weights"
        )

    levels = nf4_levels()
    codes = packed.long()  # bytes, 0 to 255
    got = torch.stack([codes >> 4, codes & 0x0F], dim=1).reshape(-1)  # (numel,) high nibble first
    scales = reference.absmax.repeat_interleave(block_size)  # (numel,)
    normalized = flat / scales
    want = reference.codes.long()
    if _same_codes(got, want, normalized, levels):
        return _judge_weight_unchanged(observations, weight, call)
    low_first = got.view(-1, 2).flip(1).reshape(-1)
    require(
        not _same_codes(low_first, want, normalized, levels),
        f"{call} packed the first code of each pair in the LOW nibble: the first goes in the "
        f"high nibble ({HIGH_FIRST}); unpacking reads byte >> 4 first",
    )
    global_codes = _codes(flat, torch.full_like(flat, global_absmax), levels)
    require(
        not _same_codes(got, global_codes, normalized, levels),
        f"{call} divided every weight by the absmax of the whole weight ({global_absmax:.4g}), "
        "not by its own block's: each block of weights is scaled by its own absmax",
    )
    require(
        not any(_nearly_equal(got, even) for even in _evenly_spaced_codes(normalized)),
        f"{call} rounded to evenly spaced integer levels (like int4's round(value * 7) + 8), "
        "ignoring `levels`: use the index of the nearest of `levels`",
    )
    rounded_up = torch.bucketize(normalized, levels).clamp(max=len(levels) - 1)  # level >= value
    rounded_down = (torch.bucketize(normalized, levels, right=True) - 1).clamp(min=0)
    require(
        not (torch.equal(got, rounded_up) or torch.equal(got, rounded_down)),
        f"{call} rounds each value up (or down) to a level: take the NEAREST level (the midpoints "
        "between neighbouring levels are the boundaries, or argmin of |value - level|)",
    )
    wrong = int((got != want).sum())
    raise AssertionError(
        f"{call}: {wrong} of {numel} codes are not the nearest level to weight / (its block's "
        "absmax)"
    )


def _judge_weight_unchanged(observations, weight: torch.Tensor, call: str) -> None:
    changed = _changed_inputs(observations, {"weight": weight.double()}, "after_")
    require(not changed, _in_place(call, changed))


def _quantize_variant(rng: random.Random):
    block_size = rng.choice([16, 32, 64])
    while True:
        rows, cols = rng.randint(3, 8), rng.randint(block_size // 2, 3 * block_size)
        numel = rows * cols
        # whole blocks, at least 3 of them, rows that are not a whole number of blocks
        if numel % block_size == 0 and numel >= 3 * block_size and cols % block_size:
            break
    return {"seed": rng.randrange(2**31), "rows": rows, "cols": cols, "block_size": block_size}


QUANTIZE_4BIT = Exercise(
    id="08.2",
    target="quantize_4bit",
    observe=observe_quantize_4bit,
    judge=judge_quantize_4bit,
    visible={"seed": 0, "rows": 8, "cols": 40, "block_size": 64},  # 5 blocks, rows of 40
    variant=_quantize_variant,
)


def check_quantize_4bit(quantize_4bit) -> None:
    """Exercise 08.2: blockwise absmax quantization to NF4 codes, two codes packed a byte."""
    QUANTIZE_4BIT.check(quantize_4bit)


# --- 08.3 bits_per_parameter(block_size, double_quant, scale_block_size) ---------------------

BITS_TOLERANCE = 1e-6  # relative


def bits_single(bs: int, sbs: int) -> float:
    """4-bit codes and one fp32 absmax per block of `bs`."""
    return 4 + 32 / bs


def bits_double(bs: int, sbs: int) -> float:
    """4-bit codes, an 8-bit scale per block, an fp32 scale per `sbs` block scales."""
    return 4 + 8 / bs + 32 / (bs * sbs)


BYTES = "that is in bytes: the answer is in bits (8 a byte)"
SINGLE_MISTAKES = (  # double_quant=False: (what the learner computed, the mistake it names)
    (lambda bs, s: 32 / bs, "the 4 bits of each code are missing: the scales come on top of them"),
    (
        lambda bs, s: 4 + 32,
        "one fp32 scale per weight: a block's absmax is shared by its block_size weights, so it "
        "costs each of them 32 / block_size bits",
    ),
    (
        lambda bs, s: 4 + 32 // bs,
        "integer division: 32 // block_size rounds down (to 0 for blocks above 32 weights)",
    ),
    (lambda bs, s: 4, "only the codes are counted: each block also stores its fp32 absmax"),
    (lambda bs, s: (4 + 32 / bs) / 8, BYTES),
    (lambda bs, s: 4 + 16 / bs, "without double quantization each absmax is fp32: 32 bits"),
    (lambda bs, s: 4 + 8 / bs, "without double quantization the absmax scales are fp32, not 8-bit"),
    (
        lambda bs, s: bits_double(bs, s),
        "double_quant=False: this is the size with double quantization",
    ),
)
DOUBLE_MISTAKES = (  # double_quant=True
    (
        lambda bs, s: 4 + 32 / bs,
        "double_quant is ignored: with it, the block scales are stored in 8 bits",
    ),
    (
        lambda bs, s: 4 + 8 / bs,
        "the second-level scales are missing: every scale_block_size block scales share one "
        "fp32 scale of their own, stored too",
    ),
    (
        lambda bs, s: 4 + 8 / bs + 32 / s,
        "one second-level fp32 scale serves scale_block_size block scales, that is block_size x "
        "scale_block_size weights: divide its 32 bits by both",
    ),
    (
        lambda bs, s: 4 + 8 / bs + 32 / bs,
        "one fp32 scale per block on top of the 8-bit one: the fp32 scale is shared by "
        "scale_block_size blocks",
    ),
    (
        lambda bs, s: 4 + 32 / bs + 32 / (bs * s),
        "with double quantization the block scales are 8-bit (the fp32 ones are the "
        "second-level scales)",
    ),
    (
        lambda bs, s: 4 + 8 / bs + 8 / (bs * s),
        "the second-level scales are fp32: 32 bits each",
    ),
    (
        lambda bs, s: 4 + 8 // bs + 32 // (bs * s),
        "integer division: // rounds the scales' share down to 0",
    ),
    (
        lambda bs, s: 8 / bs + 32 / (bs * s),
        "the 4 bits of each code are missing: the scales come on top of them",
    ),
    (lambda bs, s: bits_double(bs, s) / 8, BYTES),
)


def observe_bits_per_parameter(bits_per_parameter, case):
    """Exercise 08.3: the learner's bits per weight for a few block sizes, without and with DQ."""
    observations = {}
    for flag, key in ((False, "single"), (True, "double")):
        observations[key] = [
            observe_number(
                observations,
                f"{key}{k}",
                lambda b=b, s=s, f=flag: bits_per_parameter(b, double_quant=f, scale_block_size=s),
            )
            for k, (b, s) in enumerate(case["pairs"])
        ]
    return observations


def judge_bits_per_parameter(observations, case) -> None:
    """Exercise 08.3: 4 + 32/bs, or 4 + 8/bs + 32/(bs x sbs) with double quantization."""
    pairs = [tuple(p) for p in case["pairs"]]
    for flag, key, want_of, mistakes in (
        (False, "single", bits_single, SINGLE_MISTAKES),
        (True, "double", bits_double, DOUBLE_MISTAKES),
    ):
        calls = [f"bits_per_parameter({b}, double_quant={flag}, scale_block_size={s})"
                 for b, s in pairs]  # fmt: skip
        for k, call in enumerate(calls):
            judge_number(observations, f"{key}{k}", call)
        wrong = [([mistake(b, s) for b, s in pairs], message) for mistake, message in mistakes]
        want = [want_of(b, s) for b, s in pairs]
        judge_numbers(calls, observations[key], want, wrong, BITS_TOLERANCE)


def _bits_variant(rng: random.Random):
    scale_blocks = [128, 256, 512]
    return {
        "pairs": [
            [64, rng.choice(scale_blocks)],  # QLoRA's block
            [rng.choice([16, 32]), rng.choice(scale_blocks)],
            [rng.choice([128, 256]), rng.choice(scale_blocks)],
        ]
    }


BITS_PER_PARAMETER = Exercise(
    id="08.3",
    target="bits_per_parameter",
    observe=observe_bits_per_parameter,
    judge=judge_bits_per_parameter,
    visible={"pairs": [[64, 256], [32, 256], [128, 512]]},  # QLoRA's sizes first
    variant=_bits_variant,
)


def check_bits_per_parameter(bits_per_parameter) -> None:
    """Exercise 08.3: the storage of a 4-bit weight per parameter, with and without DQ."""
    BITS_PER_PARAMETER.check(bits_per_parameter)


# --- 08.4 qlora_forward(x, packed, absmax, levels, shape, block_size, bias, A, B, scaling) ---

# The calls of one case: (key, x's dtype, with a bias, backward through it)
RUNS = (
    ("float32", torch.float32, True, True),
    ("bfloat16", torch.bfloat16, True, False),
    ("float64", torch.float64, False, False),  # and no bias, as in Llama's projections
)
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2, "float64": 1e-5}  # of the output's largest value
PRODUCTS = {"linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "baddbmm",
            "einsum", "tensordot", "inner", "mv", "chain_matmul", "multi_dot"}  # fmt: skip


class _WeightProducts(TorchFunctionMode):
    """Records the dtype of every (out, in)- or (in, out)-shaped tensor a product is given.

    That is the dequantized weight (or its transpose): the case's sizes make sure no other
    tensor of the forward has that shape (x's last two dimensions, the branch's, never match),
    and a product of A and B, the update B A, requires grad (A and B always do) where the
    weight, made of the 4-bit codes and the scales, never does.
    """

    def __init__(self, shape: tuple[int, int]):
        super().__init__()
        self.shapes, self.dtypes = {shape, shape[::-1]}, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in PRODUCTS:
            for arg in (*args, *kwargs.values()):
                if (
                    isinstance(arg, torch.Tensor)
                    and tuple(arg.shape[-2:]) in self.shapes
                    and not arg.requires_grad
                ):
                    self.dtypes.append(str(arg.dtype))
        return func(*args, **kwargs)


def _forward_inputs(case) -> dict[str, torch.Tensor]:
    """The case's fp32 tensors: the weight to quantize, bias, A, B (not zero), x, loss weights."""
    g = torch.Generator().manual_seed(case["seed"])
    n_in, n_out, r = case["in"], case["out"], case["r"]
    shape = (case["batch"], case["seq"], n_in)
    return {
        "W": _blocky_weight(g, n_out, n_in, case["block_size"]) / math.sqrt(n_in),  # (out, in)
        "bias": torch.randn(n_out, generator=g),  # (out,)
        "A": torch.randn(r, n_in, generator=g) / math.sqrt(n_in),  # (r, in)
        "B": torch.randn(n_out, r, generator=g),  # (out, r): trained, so not zero
        "x": torch.randn(*shape, generator=g),  # (batch, seq, in)
        "w_loss": torch.randn(case["batch"], case["seq"], n_out, generator=g),  # (batch, seq, out)
    }


def _reference_layer(case, with_bias: bool) -> LoRALinear:
    """The package's QLoRA layer on the case: LoRALinear around NF4Linear, A and B set."""
    t = _forward_inputs(case)
    linear = nn.utils.skip_init(nn.Linear, case["in"], case["out"], bias=with_bias)
    with torch.no_grad():
        linear.weight.copy_(t["W"])
        if with_bias:
            linear.bias.copy_(t["bias"])
    with torch.random.fork_rng(devices=[]):  # A's init draws from the global RNG: leave it be
        layer = LoRALinear(
            NF4Linear.from_linear(linear, case["block_size"]), r=case["r"], alpha=case["alpha"]
        )
    with torch.no_grad():
        layer.lora_A.copy_(t["A"])
        layer.lora_B.copy_(t["B"])
    return layer


def _reference(case, dtype: torch.dtype, with_bias: bool) -> dict[str, torch.Tensor]:
    """The package layer's output for x in `dtype`, and the gradients of the seeded loss."""
    t, layer = _forward_inputs(case), _reference_layer(case, with_bias)
    y = layer(t["x"].to(dtype))  # (batch, seq, out)
    (y * t["w_loss"].to(y.dtype)).sum().backward()
    return {"y": y.detach(), "A": layer.lora_A.grad, "B": layer.lora_B.grad}


def observe_qlora_forward(qlora_forward, case):
    """Exercise 08.4: the learner's output for x in fp32, bf16 and fp64, gradients in fp32."""
    observations = {}
    t = _forward_inputs(case)
    weight = to_nf4(t["W"], case["block_size"])
    shape = (case["out"], case["in"])
    scaling = case["alpha"] / case["r"]
    for key, dtype, with_bias, backward in RUNS:
        given = {
            "x": t["x"].to(dtype),
            "packed": weight.packed.clone(),
            "absmax": weight.absmax().clone(),
            "A": t["A"].clone().requires_grad_(True),  # trainable, as in a QLoRA layer
            "B": t["B"].clone().requires_grad_(True),
        }
        bias = t["bias"].clone() if with_bias else None
        args = (given["x"], given["packed"], given["absmax"], nf4_levels(), shape,
                case["block_size"], bias, given["A"], given["B"], scaling)  # fmt: skip
        spy = _WeightProducts(shape)

        def call(args=args, spy=spy):
            with spy:
                return qlora_forward(*args)

        result = attempt(observations, key, call)
        observations[f"{key}_weight_dtypes"] = sorted(set(spy.dtypes))
        if f"{key}_error" not in observations:
            _record_tensor(observations, key, result)
        if backward:
            _observe_gradients(observations, key, result, given, t["w_loss"])
            for name, tensor in given.items():
                _record_input(observations, f"after_{name}", tensor)
    return observations


def _observe_gradients(observations, key: str, result, given: dict, w_loss: torch.Tensor) -> None:
    """Backward through the learner's output on the seeded loss; record A's and B's gradients."""
    if not isinstance(result, torch.Tensor) or f"{key}_error" in observations:
        return

    def backward() -> None:
        (result * w_loss.to(result.dtype)).sum().backward()

    attempt(observations, f"{key}_backward", backward)
    if f"{key}_backward_error" in observations:
        return
    for name in ("A", "B"):
        grad = given[name].grad
        if grad is None:
            observations[f"{key}_grad_{name}_missing"] = True
        else:
            _record_input(observations, f"{key}_grad_{name}", grad)


def _forward_mistakes(case):
    """(the output a mistake gives, in fp64 for the fp32 input, the mistake it names)."""
    t = {k: v.double() for k, v in _forward_inputs(case).items()}
    weight = to_nf4(_forward_inputs(case)["W"], case["block_size"])
    codes = unpack_nibbles(weight.packed).long()  # (numel,)
    levels = nf4_levels().double()
    absmax = weight.absmax().double()  # (n_blocks,)
    block_size, shape = case["block_size"], (case["out"], case["in"])
    scales = absmax.repeat_interleave(block_size)  # (numel,)
    W = (levels[codes] * scales).view(shape)  # (out, in)
    low_first = codes.view(-1, 2).flip(1).reshape(-1)
    scaling = case["alpha"] / case["r"]
    x = t["x"]

    def y(W=W, scaling=scaling, bias=True, base=True):
        branch = x @ t["A"].T @ t["B"].T  # (batch, seq, out)
        return (x @ W.T + (t["bias"] if bias else 0) if base else 0) + scaling * branch

    return (
        (
            y(W=(levels[low_first] * scales).view(shape)),
            "unpacked the low nibble first: the first code of each byte is in its HIGH nibble "
            "(byte >> 4), the second in its low nibble (byte & 0x0F), as bitsandbytes packs them",
        ),
        (
            y(W=(levels[codes] * absmax.repeat(block_size)).view(shape)),
            "absmax.repeat(block_size) repeats the whole list of scales: each block's absmax must "
            "be repeated block_size times in place, absmax.repeat_interleave(block_size)",
        ),
        (
            y(W=levels[codes].view(shape)),
            "the levels are not scaled: they are in [-1, 1], and each weight is its level times "
            "its block's absmax",
        ),
        (
            y(W=(codes.double() * scales).view(shape)),
            "the codes were used as numbers: a code is the index of its level, levels[code]",
        ),
        (
            y(W=(levels[codes].view(-1, block_size) / absmax[:, None]).view(shape)),
            "divided by the absmax: dequantizing multiplies each level by its block's absmax",
        ),
        (y(scaling=1.0), "the LoRA branch is not scaled: multiply it by scaling"),
        (y(scaling=0.0), "the LoRA branch is missing: add scaling * (x A^T) B^T"),
        (y(bias=False), "the bias is missing: add it to the base output (when it is not None)"),
        (y(base=False), "the base output is missing: x W^T + bias, with W dequantized"),
        (y(scaling=scaling**2), "the LoRA branch is scaled twice"),
    )


def _close(got: torch.Tensor, want: torch.Tensor, tol: float) -> bool:
    if tuple(got.shape) != tuple(want.shape) or not bool(torch.isfinite(got).all()):
        return False
    return float((got - want).abs().max()) <= tol * (1 + float(want.abs().max()))


DTYPES = (
    "lora_A and lora_B stay float32 whatever x's dtype (as PEFT keeps adapters): PEFT computes "
    "the branch in float32 (x.to(lora_A.dtype)) and casts the result to x.dtype; computing it in "
    "x's dtype passes too"
)


def judge_qlora_forward(observations, case) -> None:
    """Exercise 08.4: `LoRALinear(NF4Linear)` of the package: output, dtype and A's, B's grads."""
    dims = (case["batch"], case["seq"], case["in"])
    for key, dtype, with_bias, backward in RUNS:
        call = (f"qlora_forward(x {key} {dims}, ..., bias={'(out,)' if with_bias else 'None'}, "
                "...)")  # fmt: skip
        _judge_call_error(observations, key, call, with_bias, case)
        raised(observations, key, call)
        returned = observations.get(f"{key}_returned")
        require(returned is None, f"{call} should return the output tensor, got {returned}")
        got, got_dtype = observations[key], observations[f"{key}_dtype"]
        short = str(dtype).removeprefix("torch.")
        require(
            got_dtype == str(dtype),
            f"{call} returned {got_dtype}: the output has x's dtype ({dtype}). Dequantize the "
            f"weight in x.dtype (the 4-bit weight has no dtype of its own); {DTYPES}"
            + (
                f". Or a float32 bias was added without `.to(x.dtype)` (float32 + {short} gives "
                "float32)"
                if with_bias and got_dtype == "torch.float32" and str(dtype) in HALF
                else ""
            ),
        )
        want = _reference(case, dtype, with_bias)
        want_y = want["y"].double()
        require(
            tuple(got.shape) == tuple(want_y.shape),
            f"{call} returned shape {tuple(got.shape)}: the output is x's shape with in_features "
            f"replaced by out_features, {tuple(want_y.shape)}",
        )
        require(bool(torch.isfinite(got).all()), f"{call} contains NaN or inf")
        if not _close(got, want_y, TOLERANCE[key]):
            if key == "float32":
                for wrong, message in _forward_mistakes(case):
                    require(not _close(got, wrong, 1e-4), f"{call}: {message}")
            gap = float((got - want_y).abs().max())
            raise AssertionError(
                f"{call} differs from the package's LoRALinear around an NF4Linear (largest "
                f"difference {gap:.3g}): W = levels[code] * its block's absmax, in x's dtype; "
                "y = x W^T + bias + scaling * (x A^T) B^T"
            )
        if backward:
            _judge_gradients(observations, key, call, want)
        other = [d for d in observations.get(f"{key}_weight_dtypes", []) if d != str(dtype)]
        require(
            not other,
            f"{call}: the weight reached the product as {' and '.join(other)}, not x's {dtype} "
            f"(the result was then cast to {dtype}): dequantize the weight in x's dtype and "
            "multiply in it"
            + (
                " (bitsandbytes warns of this: a compute dtype other than the input's is slow and "
                "holds a full-size copy of the weight and activations)"
                if str(dtype) in HALF
                else ""
            ),
        )
        if backward:
            _judge_inputs_unchanged(observations, case, call)


def _judge_call_error(observations, key: str, call: str, with_bias: bool, case) -> None:
    error = observations.get(f"{key}_error")
    if error is None or error.startswith("NotImplementedError"):
        return
    lowered = error.lower()
    require(
        not (error.startswith("IndexError") and "mask" in lowered)
        and "indexing with dtype torch.uint8" not in lowered,  # the warning, raised as an error
        f"{call} raised {error}: levels[codes] with codes of torch.uint8 reads them as a mask "
        "of booleans, not as indices: index with codes.long()",
    )
    require(
        "dtype" not in lowered and "scalar type" not in lowered,
        f"{call} raised {error}: a dtype mismatch. Dequantize the weight in x.dtype ({key} "
        f"here) and cast the bias to it; {DTYPES}",
    )
    require(
        with_bias or "nonetype" not in lowered,
        f"{call} raised {error}: bias is None here (Llama's projections have no bias): add it "
        "only when there is one",
    )
    shapes = (
        f"x is (..., {case['in']}), the weight ({case['out']}, {case['in']}), lora_A "
        f"({case['r']}, {case['in']}), lora_B ({case['out']}, {case['r']})"
    )
    require(
        not error.startswith("RuntimeError")
        or not any(word in lowered for word in ("size", "shape")),
        f"{call} raised {error}: the matrices do not line up. {shapes}: view the dequantized "
        "weight as `shape` (out, in), and multiply x by the transposes, x W^T and (x A^T) B^T",
    )


def _judge_gradients(observations, key: str, call: str, want: dict) -> None:
    error = observations.get(f"{key}_backward_error")
    missing = [name for name in ("A", "B") if observations.get(f"{key}_grad_{name}_missing")]
    require(
        error is None or "does not require grad" not in error,
        f"no gradient reaches lora_A and lora_B through {call}: the branch must stay in the "
        "autograd graph (no torch.no_grad(), no .detach()), A and B are what QLoRA trains",
    )
    raised(observations, f"{key}_backward", f"backward through the output of {call}")
    require(
        not missing,
        f"no gradient reaches {' and '.join('lora_' + m for m in missing)} through {call}: the "
        "branch must stay in the autograd graph (no torch.no_grad(), no .detach())",
    )
    for name in ("A", "B"):
        raised(observations, f"{key}_grad_{name}", f"reading lora_{name}.grad after backward")
        got, wanted = observations[f"{key}_grad_{name}"], want[name].double()
        require(
            _close(got, wanted, 1e-4),
            f"the gradient of lora_{name} through {call} differs from the package layer's: the "
            "output is right, so something in the branch is cut from the graph or counted twice",
        )


def _judge_inputs_unchanged(observations, case, call: str) -> None:
    t = _forward_inputs(case)
    weight = to_nf4(t["W"], case["block_size"])
    given = {"x": t["x"], "packed": weight.packed, "absmax": weight.absmax(), "A": t["A"],
             "B": t["B"]}  # fmt: skip
    changed = _changed_inputs(observations, {k: v.double() for k, v in given.items()}, "after_")
    names = [{"A": "lora_A", "B": "lora_B"}.get(name, name) for name in changed]
    require(not changed, _in_place(call, names))


def _forward_variant(rng: random.Random):
    block_size = rng.choice([16, 32, 64])
    batch, seq = rng.randint(2, 3), rng.randint(2, 3)
    x_sizes = {batch, seq, batch * seq}  # x's, also flattened: never the weight's sizes
    while True:
        n_in, n_out = rng.randint(8, 48), rng.randint(4, 12)
        numel = n_in * n_out
        if numel % block_size == 0 and numel >= 3 * block_size and n_in % block_size:
            if n_in != n_out and not {n_in, n_out} & x_sizes:  # never square: no transpose passes
                break
    r = rng.randint(2, min(4, n_out - 1))
    alpha = r * rng.randint(1, 4) + rng.randint(1, r - 1)  # not a multiple of r
    return {"seed": rng.randrange(2**31), "out": n_out, "in": n_in, "block_size": block_size,
            "r": r, "alpha": alpha, "batch": batch, "seq": seq}  # fmt: skip


QLORA_FORWARD = Exercise(
    id="08.4",
    target="qlora_forward",
    observe=observe_qlora_forward,
    judge=judge_qlora_forward,
    visible={
        "seed": 0,
        "out": 8,
        "in": 40,
        "block_size": 64,
        "r": 3,
        "alpha": 8,
        "batch": 2,
        "seq": 3,
    },  # fmt: skip
    variant=_forward_variant,
)


def check_qlora_forward(qlora_forward) -> None:
    """Exercise 08.4: a 4-bit base dequantized in x's dtype, plus a LoRA branch in fp32."""
    QLORA_FORWARD.check(qlora_forward)


EXERCISES = (NF4_LEVELS, QUANTIZE_4BIT, BITS_PER_PARAMETER, QLORA_FORWARD)
