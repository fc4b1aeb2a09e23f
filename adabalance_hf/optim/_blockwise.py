"""Block-wise 8-bit codes for optimizer state: floating-point codes read off the fp32 bit pattern.

Each block of ``block_size`` consecutive elements along a tensor's last dimension shares one fp32
scale, the largest magnitude in the block. An element is stored as a small float relative to its
block's scale, taken from the top bits of ``value / scale`` (whose fp32 exponent and leading
mantissa bits *are* a logarithmic code), so encoding and decoding are integer shifts and adds: no
code table to search (bitsandbytes' and torchao's dynamic maps cost a search per element) and no
``log``/``exp``.

* :func:`encode_signed` / :func:`decode_signed` (``int8``, for ``exp_avg``): a sign and 4 exponent
  and 3 mantissa bits: 16 binades below the scale, relative error at most 1/16 rounding to nearest.
* :func:`encode_unsigned` / :func:`decode_unsigned` (``uint8``, for ``exp_avg_sq`` and the
  smoothed rate ``exp_avg_lr``, positive and spanning orders of magnitude): 5 exponent and 3
  mantissa bits: 32 binades below the scale, the same relative error.

Code 0 is zero; magnitudes below the lowest code are flushed to it. Encoding adds ``noise`` in
units of 2**-20 of the fp32 bit pattern before truncating: ``2**19`` rounds to nearest, a uniform
integer in ``[0, 2**20)`` rounds stochastically, which is unbiased: a moving average whose step
is smaller than the code's resolution still moves in expectation instead of stalling.
:func:`rounding_noise` makes such integers from a hash of the element's index and a per-step seed,
so a step is a deterministic function of the state (a resumed run ends bitwise where an
uninterrupted one ends) and the same in eager and compiled code.

Every function is plain tensor arithmetic, run eagerly or traced into the fused kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "NEAREST",
    "SIGNED_LEVELS",
    "UNSIGNED_LEVELS",
    "block_scale",
    "decode_signed",
    "decode_unsigned",
    "encode_signed",
    "encode_unsigned",
    "noise_fields",
    "relative_step",
    "rounding_noise",
    "step_seed",
]

# The fp32 bit pattern of 1.0, shifted right by the 20 bits that the code drops (8 exponent and
# 3 mantissa bits remain): the largest code stands for the block's scale itself.
_ONE = 127 << 3
SIGNED_LEVELS = 127  # magnitude codes 1..127 (4 exponent bits, 3 mantissa bits)
UNSIGNED_LEVELS = 255  # codes 1..255 (5 exponent bits, 3 mantissa bits)
_SIGNED_OFFSET = _ONE - SIGNED_LEVELS
_UNSIGNED_OFFSET = _ONE - UNSIGNED_LEVELS
_DROPPED_BITS = 20
NEAREST = 1 << (_DROPPED_BITS - 1)  # the noise that rounds to nearest
_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 0x45D9F3B  # a 32-bit integer hash's (small enough for int64 without overflow)


def relative_step(mantissa_bits: int = 3) -> float:
    """The spacing of adjacent codes relative to the smaller one, at most: ``2**-mantissa_bits``.

    Args:
        mantissa_bits (int, optional): mantissa bits of the code. Default: ``3``
    """
    return 2.0**-mantissa_bits


def block_scale(values: Tensor) -> Tensor:
    """Per-block scale of ``values`` shaped ``(blocks, block_size)``: the largest magnitude.

    Args:
        values (Tensor): fp32 values, one block per row.
    """
    return values.abs().amax(dim=-1, keepdim=True)


def _magnitude_code(ratio: Tensor, noise: Tensor | int, offset: int, levels: int) -> Tensor:
    """Codes ``0..levels`` of ``ratio`` in ``[0, 1]`` (int32)."""
    bits = ratio.view(torch.int32) + noise
    return ((bits >> _DROPPED_BITS) - offset).clamp_(0, levels)


def _magnitude_value(code: Tensor, offset: int) -> Tensor:
    """The fp32 value in ``[0, 1]`` of int32 magnitude codes (code 0 is zero)."""
    value = ((code + offset) << _DROPPED_BITS).view(torch.float32)
    return torch.where(code > 0, value, 0.0)


def _ratio(values: Tensor, scale: Tensor) -> Tensor:
    # A block of zeros has scale 0 (its codes are 0 whatever the ratio); min() keeps a ratio that
    # rounds above 1 in the largest code.
    # Multiplying by the reciprocal costs one division per block instead of one per element.
    inverse = torch.where(scale > 0, scale, 1.0).reciprocal()
    return (values.abs() * inverse).clamp_(max=1.0)


def encode_signed(values: Tensor, scale: Tensor, noise: Tensor | int = NEAREST) -> Tensor:
    """``int8`` codes of ``values``, shaped ``(blocks, block_size)``, relative to ``scale``.

    Args:
        values (Tensor): fp32 values.
        scale (Tensor): per-block scale, at least the block's largest magnitude, ``(blocks, 1)``.
        noise (Tensor or int, optional): rounding noise in ``[0, 2**20)``. Default: round to
            nearest
    """
    code = _magnitude_code(_ratio(values, scale), noise, _SIGNED_OFFSET, SIGNED_LEVELS)
    return torch.where(values < 0, -code, code).to(torch.int8)


def decode_signed(codes: Tensor, scale: Tensor) -> Tensor:
    """fp32 values of ``int8`` codes made by :func:`encode_signed`.

    Args:
        codes (Tensor): ``int8`` codes, ``(blocks, block_size)``.
        scale (Tensor): per-block scale, ``(blocks, 1)``.
    """
    code = codes.to(torch.int32)
    magnitude = _magnitude_value(code.abs(), _SIGNED_OFFSET) * scale
    return torch.where(code < 0, -magnitude, magnitude)


def encode_unsigned(values: Tensor, scale: Tensor, noise: Tensor | int = NEAREST) -> Tensor:
    """``uint8`` codes of non-negative ``values`` relative to ``scale``.

    Args:
        values (Tensor): fp32 values ``>= 0``, ``(blocks, block_size)``.
        scale (Tensor): per-block scale, at least the block's largest value, ``(blocks, 1)``.
        noise (Tensor or int, optional): rounding noise in ``[0, 2**20)``. Default: round to
            nearest
    """
    code = _magnitude_code(_ratio(values, scale), noise, _UNSIGNED_OFFSET, UNSIGNED_LEVELS)
    return code.to(torch.uint8)


def decode_unsigned(codes: Tensor, scale: Tensor) -> Tensor:
    """fp32 values of ``uint8`` codes made by :func:`encode_unsigned`.

    Args:
        codes (Tensor): ``uint8`` codes, ``(blocks, block_size)``.
        scale (Tensor): per-block scale, ``(blocks, 1)``.
    """
    return _magnitude_value(codes.to(torch.int32), _UNSIGNED_OFFSET) * scale


def step_seed(step: int, offset: int = 0) -> int:
    """The 32-bit seed of :func:`rounding_noise` for a tensor at step count ``step``.

    The noise depends on the step and the element's index only, so a tensor rounds the same
    whichever optimizer, param group or rank (ZeroRedundancyOptimizer) holds it.

    Args:
        step (int): the tensor's step count after this step's increment.
        offset (int, optional): the index of the tensor's first element in the whole tensor (a
            DTensor shard's offset), so that a shard draws the noise the whole tensor would.
            Default: ``0``
    """
    return (step * 0x9E3779B1 + offset) & _MASK32


def rounding_noise(index: Tensor, seed: Tensor | int) -> Tensor:
    """A pseudo-random 32-bit integer (int64) per element index, from a hash of index and seed.

    Split it with :func:`noise_fields` into the rounding noise of two states. Arithmetic stays
    below 2**63, so int64 never overflows, eagerly or compiled.

    Args:
        index (Tensor): int64 element indices.
        seed (Tensor or int): the step's seed (:func:`step_seed`), a Python int or 0-dim int64.
    """
    x = (index + seed) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    return (x >> 16) ^ x


def noise_fields(hashed: Tensor) -> tuple[Tensor, Tensor]:
    """Two independent rounding noises in ``[0, 2**20)`` from one :func:`rounding_noise` value.

    Each takes 16 of the 32 bits, in units of 16 (the lowest 4 bits of 2**20 matter little),
    centred in their unit.

    Args:
        hashed (Tensor): values of :func:`rounding_noise`.
    """
    low = ((hashed & 0xFFFF) << 4) + 8
    high = ((hashed >> 16) << 4) + 8
    return low.to(torch.int32), high.to(torch.int32)
