"""A 4-bit base, by hand: blockwise absmax quantization, NF4's levels, packing, double quantization.

The package code of lesson 08 (QLoRA, introduced in notebook 08). Names follow the QLoRA
paper (Dettmers et al., 2023) and bitsandbytes: a block of 64 weights shares one absmax scale;
NF4's 16 levels are quantiles of a standard normal with an exact zero; two 4-bit codes are packed
into a byte, high nibble first; double quantization stores the per-block scales in 8 bits, in
blocks of 256, after subtracting their mean. Every format here is one table of levels in [-1, 1]:
a weight is stored as the index of the level nearest to weight / (its block's absmax).

Hand-written because the lesson teaches it; tests compare it with two independent implementations
(tests/test_quantization.py): single-quantized NF4 equals bitsandbytes' `quantize_4bit` bit for bit,
and the codes equal torchao's `to_nf4`. Double quantization follows torchao's scheme (mean-centred
scales in evenly spaced 8-bit integers); bitsandbytes quantizes the scales with its own "dynamic"
8-bit map instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_SIZE = 64  # weights that share one absmax scale (QLoRA, bitsandbytes, torchao)
SCALE_BLOCK_SIZE = 256  # scales that share one scale of their own under double quantization

# NF4 as bitsandbytes ships it (`bitsandbytes.functional.get_4bit_type("nf4")`): the published
# values that `nf4_levels()` must reproduce.
BITSANDBYTES_NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip


def nf4_levels() -> torch.Tensor:
    """NF4's 16 levels (16,): normal quantiles, 8 above 0, 7 below, an exact 0 (notebook 08).

    The outermost quantile sits at probability 0.9677083, bitsandbytes' default offset in
    `create_normal_map` (equal to 1 - (1/30 + 1/32) / 2), so the end levels are finite. The two
    halves get 8 and 7 evenly spaced probabilities: asymmetric, so that 0 is a level exactly.
    Computed as bitsandbytes does (probabilities in fp32, quantiles in fp64, scaled in fp32), it
    gives its table bit for bit.
    """
    offset = 0.9677083  # 1 - (1/30 + 1/32) / 2, rounded as bitsandbytes writes it
    above = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double()).float()  # (8,)
    below = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double()).float()  # (7,)
    levels = torch.cat([below, torch.zeros(1), above]).sort().values  # (16,)
    return levels / levels.max()


def int_levels(bits: int) -> torch.Tensor:
    """Symmetric absmax integer levels k / top, |k| <= top = 2**(bits-1) - 1 (notebook 08)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be 2 to 8, got {bits}")
    top = 2 ** (bits - 1) - 1  # int8: 127; int4: 7 (the code -8 stays unused, as usual)
    return torch.arange(-top, top + 1, dtype=torch.float32) / top  # (2 * top + 1,)


def fp4_levels() -> torch.Tensor:
    """FP4 E2M1's 15 distinct values, ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} / 6 (OCP MX; notebook 08)."""
    magnitudes = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])  # and 0
    return torch.cat([-magnitudes.flip(0), torch.zeros(1), magnitudes]) / 6  # (15,)


@dataclass(frozen=True)
class Blockwise:
    """A tensor as level indices and one absmax scale per block: what `quantize_blockwise` gives."""

    codes: torch.Tensor  # (numel,) uint8: the index of each weight's level
    absmax: torch.Tensor  # (n_blocks,) fp32: each block's largest |value|
    levels: torch.Tensor  # (n_levels,) sorted, in [-1, 1]
    shape: torch.Size
    block_size: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values the codes stand for, level * absmax, in `shape` and `dtype`."""
        values = self.levels[self.codes.long()]  # (numel,) in [-1, 1]
        scales = per_value(self.absmax, self.block_size, len(values))  # (numel,)
        return (values * scales).view(self.shape).to(dtype)

    def to(self, device: torch.device | str) -> Blockwise:
        """The same codes and scales on `device` (their dtypes never change)."""
        moved = (t.to(device) for t in (self.codes, self.absmax, self.levels))
        return Blockwise(*moved, self.shape, self.block_size)


def quantize_blockwise(
    tensor: torch.Tensor, levels: torch.Tensor, block_size: int = BLOCK_SIZE
) -> Blockwise:
    """Each block of `block_size` values (row-major) to the levels nearest value / block absmax.

    Introduced in notebook 08.

    A last block shorter than `block_size` gets its own absmax, as in bitsandbytes.
    """
    if not torch.isfinite(tensor).all():
        raise ValueError("cannot quantize a tensor with NaN or infinite values")
    if len(levels) > 256 or not bool((levels[1:] > levels[:-1]).all()):
        raise ValueError("levels must be sorted, distinct and at most 256 (one byte per code)")
    flat = tensor.detach().float().reshape(-1)  # (numel,)
    padded = F.pad(flat, (0, -len(flat) % block_size))  # zeros leave every block's absmax as it is
    absmax = padded.view(-1, block_size).abs().amax(dim=1)  # (n_blocks,)
    scales = per_value(absmax.clamp_min(torch.finfo(torch.float32).tiny), block_size, len(flat))
    codes = nearest_level(flat / scales, levels.float())  # (numel,): flat / scales is in [-1, 1]
    return Blockwise(codes, absmax, levels.float(), tensor.shape, block_size)


def relative_error(
    tensor: torch.Tensor, levels: torch.Tensor, block_size: int = BLOCK_SIZE
) -> float:
    """||round trip - tensor|| / ||tensor||, quantized to `levels` blockwise (notebook 08)."""
    round_trip = quantize_blockwise(tensor, levels, block_size).dequantize()
    return float((round_trip - tensor.float()).norm() / tensor.float().norm())


def per_value(scales: torch.Tensor, block_size: int, numel: int) -> torch.Tensor:
    """Each block's scale repeated for every value of the block: (n_blocks,) -> (numel,)."""
    return scales.repeat_interleave(block_size)[:numel]


def nearest_level(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index (uint8) of the level nearest to each value; halfway goes to the lower (notebook 08)."""
    midpoints = (levels[1:] + levels[:-1]) / 2  # (n_levels - 1,): the decision boundaries
    return torch.bucketize(values, midpoints).to(torch.uint8)  # midpoint[i-1] < v <= midpoint[i]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes a byte, (N,) -> (N/2,), the first in the high nibble (notebook 08)."""
    if codes.dtype != torch.uint8 or codes.numel() % 2 or bool((codes > 15).any()):
        raise ValueError("pack_nibbles takes an even number of uint8 codes from 0 to 15")
    pairs = codes.reshape(-1, 2)  # (N/2, 2)
    return pairs[:, 0] << 4 | pairs[:, 1]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_nibbles`: (N/2,) bytes -> (N,) codes, high nibble first."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)  # (N,)


@dataclass(frozen=True)
class NF4Weight:
    """A weight as QLoRA stores it: packed NF4 codes, and 8-bit block scales (double quantization).

    `nbytes` counts every stored tensor; `bits_per_parameter` is 4 + 8/64 + 32/(64 x 256), about
    4.127, where single quantization (an fp32 scale per block of 64) costs 4 + 32/64 = 4.5.
    """

    packed: torch.Tensor  # (numel/2,) uint8: two NF4 codes a byte
    scales: Blockwise  # the per-block absmax scales minus their mean, in 8-bit integer levels
    scale_mean: torch.Tensor  # () fp32
    shape: torch.Size
    block_size: int

    def absmax(self) -> torch.Tensor:
        """The block scales as stored (n_blocks,): each within half an 8-bit step of its value."""
        return self.scales.dequantize() + self.scale_mean

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the codes stand for, in `shape`, computed in fp32 and returned in `dtype`."""
        codes = unpack_nibbles(self.packed)  # (numel,)
        values = nf4_levels().to(codes.device)[codes.long()]  # (numel,) in [-1, 1]
        scales = per_value(self.absmax(), self.block_size, len(values))  # (numel,)
        return (values * scales).view(self.shape).to(dtype)

    def to(self, device: torch.device | str) -> NF4Weight:
        """The same storage on `device` (its dtypes never change)."""
        moved = (self.packed.to(device), self.scales.to(device), self.scale_mean.to(device))
        return NF4Weight(*moved, self.shape, self.block_size)

    @property
    def nbytes(self) -> int:
        stored = (self.packed, self.scales.codes, self.scales.absmax, self.scale_mean)
        return sum(t.numel() * t.element_size() for t in stored)

    @property
    def bits_per_parameter(self) -> float:
        return 8 * self.nbytes / self.shape.numel()


def to_nf4(
    weight: torch.Tensor, block_size: int = BLOCK_SIZE, scale_block_size: int = SCALE_BLOCK_SIZE
) -> NF4Weight:
    """Quantize `weight` to NF4 with double-quantized scales: QLoRA's storage (notebook 08)."""
    if weight.numel() % 2:
        raise ValueError(f"NF4 packs two codes a byte: {weight.numel()} values is an odd count")
    codes = quantize_blockwise(weight, nf4_levels(), block_size)
    mean = codes.absmax.mean()  # the scales are all positive: centre them to use both signs
    scales = quantize_blockwise(codes.absmax - mean, int_levels(8), scale_block_size)
    return NF4Weight(pack_nibbles(codes.codes), scales, mean, weight.shape, block_size)


class _NF4Matmul(torch.autograd.Function):
    """x W^T, with W rebuilt from its 4-bit codes in the forward and again in the backward.

    Plain F.linear would keep the dequantized W for the backward pass, so every layer's full-size
    weight would stay in memory until then: the 4 bits would save nothing while training. This
    keeps only the codes, as bitsandbytes' MatMul4Bit does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, nf4: NF4Weight) -> torch.Tensor:
        ctx.nf4, ctx.x_dtype = nf4, x.dtype
        return F.linear(x, nf4.dequantize(x.dtype))  # (..., out); autocast may run it in bf16

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        weight = ctx.nf4.dequantize(grad_out.dtype)  # (out, in): built again, never saved
        return (grad_out @ weight).to(ctx.x_dtype), None  # (..., in)


class NF4Linear(nn.Module):
    """A frozen linear layer stored in NF4, dequantized on the fly in the input's dtype.

    Only the 4-bit storage persists: the forward pass rebuilds W, and so does the backward pass
    (for the gradient that flows on to earlier layers), so no full-size copy is kept in between.

    The base of a QLoRA layer: `LoRALinear(NF4Linear.from_linear(linear))` trains only A and B.
    The 4-bit weight is not a parameter, so no optimizer reaches it; `requires_grad_(True)` on the
    layer is refused (a model-wide `requires_grad_(True)` would still unfreeze its bias).
    """

    def __init__(self, weight: NF4Weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.nf4 = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = BLOCK_SIZE) -> NF4Linear:
        """Quantize an `nn.Linear`'s weight (its bias stays as it is, frozen)."""
        return cls(to_nf4(linear.weight, block_size), linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (out, in) in fp32: what the layer computes with."""
        return self.nf4.dequantize(torch.float32)

    def _apply(self, fn, recurse=True):
        # `.to(device)` moves the 4-bit storage along; `.to(dtype)` must not touch it (nn.Module
        # would cast float buffers: an fp32 scale rounded to bf16 changes every weight of its block)
        device = fn(torch.empty(0, device=self.nf4.packed.device)).device
        self.nf4 = self.nf4.to(device)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _NF4Matmul.apply(x, self.nf4)  # (..., out): W dequantized in x's dtype, not kept
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def requires_grad_(self, requires_grad: bool = True) -> NF4Linear:
        if requires_grad:
            raise RuntimeError("a 4-bit weight cannot be trained: train a LoRA branch on top of it")
        return super().requires_grad_(False)

    def extra_repr(self) -> str:
        bits = self.nf4.bits_per_parameter
        return f"in_features={self.in_features}, out_features={self.out_features}, {bits:.3f} bits"
