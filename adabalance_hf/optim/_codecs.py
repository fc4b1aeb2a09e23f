"""Block-wise codes of optimizer state: 8- and 4-bit codecs around one fp32 update.

Each block of consecutive elements along a tensor's last dimension shares one scale, the largest
magnitude in the block (fp32 for 8-bit codes; for 4-bit codes one byte, rounded up, relative to
a byte per row: see :func:`pack_byte_scales`), or a group of consecutive blocks does (the
``group`` of :meth:`Codec.encode_blocks`: their codes stay in blocks, packed as any block's);
an element is stored as a code of ``value / scale``. A codec is
the pair ``encode`` (fp32 values and scale -> integer codes) and ``decode``, plus how the codes
are stored (:meth:`Codec.store` / :meth:`Codec.load`); the low-bit step decodes, runs the fp32
update and encodes (``_blockwise_step``), so a new code is a new codec and nothing else.

* :class:`FloatCode`: a small float read off the top bits of the fp32 pattern of
  ``value / scale`` (its exponent and leading mantissa bits *are* a logarithmic code), so
  encoding and decoding are integer shifts and adds, with no table to search and no
  ``log``/``exp``. Code 0 is zero, unless ``zero=False``: then it is the smallest magnitude,
  which keeps a second moment from decoding to 0 (the "zero-point problem" of Li et al., 2023,
  "Memory Efficient Optimizers with 4-bit States": a ``v`` of 0 makes the step ``lr / eps``).
* :class:`LinearCode`: ``value / scale`` in ``2**bits`` equal steps, with no zero (the same
  paper's map for the second moment).

Rounding: encoding adds noise before truncating. Half a code step rounds to nearest; a uniform
draw rounds stochastically, which is unbiased: an average that moves by less than a code step per
step still moves in expectation instead of stalling. :func:`rounding_noise` draws the noise from
a hash of the element's index and the step count, so a step is a deterministic function of the
state (a resumed run ends bitwise where an uninterrupted one ends), eagerly and compiled alike.

Storage: 8-bit codes are one byte each (``int8`` sign and magnitude as a negative integer for
signed codes, ``uint8`` otherwise), shaped like the parameter. 4-bit codes are packed two per
``uint8`` (sign in the nibble's top bit; element ``k`` of a block in the low nibble of byte ``k``,
element ``k + block_size // 2`` in its high nibble), shaped ``(*leading, blocks, block_size //
2)``: one more dimension than their scales, which is how a state dict tells 4-bit state from
8-bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Codec",
    "FloatCode",
    "LinearCode",
    "block_scale",
    "noise_fields",
    "pack_byte_scales",
    "power_of_two_above",
    "rounding_noise",
    "step_seed",
    "unpack_byte_scales",
]

_MANTISSA_BITS_FP32 = 23
_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 0x45D9F3B  # a 32-bit integer hash's (small enough for int64 without overflow)
_NOISE_BITS = 16  # random bits per rounding draw (see noise_fields)


def block_scale(values: Tensor) -> Tensor:
    """Per-block scale of ``values`` shaped ``(..., block_size)``: the largest magnitude.

    Args:
        values (Tensor): fp32 values, one block per slice of the last dimension.
    """
    return values.abs().amax(dim=-1, keepdim=True)


# One-byte block scales: an unsigned float with 5 exponent and 3 mantissa bits relative to the
# power of two above the row's largest block maximum (the row's last byte, that power's fp32
# exponent field). A block byte ``b > 0`` stands for ``2**((b >> 3) - 31) * (1 + (b & 7) / 8)``
# of it, ``2**-30`` to 1; byte 0 for a block of zeros.
_SCALE_MANTISSA_DROP = (1 << (_MANTISSA_BITS_FP32 - 3)) - 1
_SCALE_BIAS = (127 - 31) << 3  # fp32 exponent field 97 (2**-30) is block byte 8
_SMALLEST_RATIO_BITS = 97 << _MANTISSA_BITS_FP32


def power_of_two_above(values: Tensor) -> Tensor:
    """Non-negative fp32 ``values`` rounded up to powers of two (0 stays 0)."""
    return ((values.view(torch.int32) + 0x7FFFFF) & 0x7F800000).view(torch.float32)


def pack_byte_scales(maxima: Tensor) -> tuple[Tensor, Tensor]:
    """Block maxima ``(rows, blocks)`` as one byte each plus a byte a row (QLoRA's double
    quantization with a float code, kept within the row so that a row is never split between
    ranks): ``(scales, stored)`` as :meth:`Codec.pack_scales` returns them.

    Each block's scale is rounded *up* (to at most 1/8 above its maximum, so codes never
    overflow); a block more than ``2**30`` below its row's largest gets ``2**-30`` of it.
    """
    top = power_of_two_above(maxima.amax(dim=-1, keepdim=True))
    ratio = maxima / torch.where(top > 0, top, 1.0)  # exact: top is a power of two
    ratio_bits = (ratio.view(torch.int32) + _SCALE_MANTISSA_DROP) & ~_SCALE_MANTISSA_DROP
    ratio_bits = ratio_bits.clamp(min=_SMALLEST_RATIO_BITS)
    nonzero = maxima > 0
    scales = torch.where(nonzero, ratio_bits.view(torch.float32) * top, 0.0)
    block_bytes = torch.where(nonzero, (ratio_bits >> 20) - _SCALE_BIAS, 0)
    stored = torch.cat([block_bytes, top.view(torch.int32) >> _MANTISSA_BITS_FP32], dim=-1)
    return scales, stored.to(torch.uint8)


def unpack_byte_scales(stored: Tensor) -> Tensor:
    """The fp32 scales ``(rows, blocks)`` of :func:`pack_byte_scales`' stored bytes."""
    stored = stored.to(torch.int32)
    block_bytes, row_byte = stored[..., :-1], stored[..., -1:]
    top = (row_byte << _MANTISSA_BITS_FP32).view(torch.float32)
    ratio = ((block_bytes + _SCALE_BIAS) << 20).view(torch.float32)
    return torch.where(block_bytes > 0, ratio * top, 0.0)


def _per_block(scales: Tensor, blocks: int, group: int) -> Tensor:
    """Scales ``(rows, blocks // group)`` repeated for each of their ``group`` blocks.

    An indexed load (a repeat or an expanded reshape relates the sizes of the scales and the
    codes, which leaves inductor storing the elements' indices and values between its loops).
    """
    if group == 1:
        return scales
    return scales[..., torch.arange(blocks, device=scales.device) // group]


def _ratio(values: Tensor, scale: Tensor) -> Tensor:
    # A block of zeros has scale 0 (its codes decode to 0 whatever they are); min() keeps a ratio
    # that rounds above 1 in the largest code. Multiplying by the reciprocal costs one division
    # per block instead of one per element.
    inverse = torch.where(scale > 0, scale, 1.0).reciprocal()
    return (values.abs() * inverse).clamp_(max=1.0)


@dataclass(frozen=True)
class Codec:
    """What every code shares: its width, its sign, its rounding, and how it is stored.

    Args:
        bits (int): bits per element, 8 or 4.
        signed (bool): whether values may be negative (a sign bit, the rest magnitude).
        stochastic (bool): round stored values stochastically instead of to nearest.
    """

    bits: int
    signed: bool
    stochastic: bool

    @property
    def scale_dtype(self) -> torch.dtype:
        """The dtype of the stored scales: fp32 for 8-bit codes, one byte for 4-bit ones."""
        return torch.uint8 if self.bits < 8 else torch.float32

    @property
    def row_columns(self) -> int:
        """Stored scale columns a row has besides its blocks' (its exponent byte, at 4 bits)."""
        return int(self.bits < 8)

    def pack_scales(self, maxima: Tensor) -> tuple[Tensor, Tensor]:
        """The scales of blocks whose largest magnitudes are ``maxima`` ``(rows, blocks)``.

        Returns:
            tuple: the fp32 scales ``(rows, blocks)``, at least ``maxima`` and exactly what
            :meth:`unpack_scales` gives back, and their stored form ``(rows, blocks +``
            :attr:`row_columns` ``)``: at 8 bits the maxima themselves; at 4 bits one byte a
            block (see :func:`pack_byte_scales`).
        """
        if self.bits == 8:
            return maxima, maxima
        return pack_byte_scales(maxima)

    def unpack_scales(self, stored: Tensor) -> Tensor:
        """The fp32 scales ``(rows, blocks)`` of stored scales (inverse of :meth:`pack_scales`)."""
        if self.bits == 8:
            return stored.to(torch.float32)
        return unpack_byte_scales(stored)

    def encode_blocks(
        self, values: Tensor, noise: Tensor | int | float | None, group: int = 1
    ) -> tuple[Tensor, Tensor]:
        """The stored codes and stored scales of fp32 ``values`` ``(rows, blocks, block_size)``:
        the scale of each ``group`` consecutive blocks from their largest magnitude
        (:meth:`pack_scales`), then :meth:`encode` (``noise`` as there) and :meth:`store`.

        Args:
            values (Tensor): fp32 values, one block per slice of the last dimension.
            noise (Tensor, number or None): rounding noise, as :meth:`encode` takes it.
            group (int, optional): consecutive blocks that share one scale; it divides the
                blocks of a row. Default: ``1``
        """
        maxima = block_scale(values).squeeze(-1)
        blocks = maxima.shape[-1]
        if group > 1:
            first = torch.arange(blocks // group, device=values.device) * group
            maxima = functools.reduce(torch.maximum, (maxima[..., first + k] for k in range(group)))
            # Each block reads its scale back from the stored ones (exactly what pack_scales
            # gives): in a compiled kernel one load, where the packed scales would inline the
            # maxima's pairing into every element's code (minutes more of compile).
            stored_scales = self.pack_scales(maxima)[1]
            scales = _per_block(self.unpack_scales(stored_scales), blocks, group)
        else:
            scales, stored_scales = self.pack_scales(maxima)
        codes = self.encode(values, scales.unsqueeze(-1), noise)
        return self.store(codes), stored_scales

    def decode_blocks(self, stored: Tensor, stored_scales: Tensor, group: int = 1) -> Tensor:
        """The fp32 values ``(rows, blocks, block_size)`` of stored codes ``(rows, blocks, ·)``
        and stored scales ``(rows, blocks // group +`` :attr:`row_columns` ``)``: the inverse of
        :meth:`encode_blocks` (with the same ``group``) up to rounding."""
        scales = _per_block(self.unpack_scales(stored_scales), stored.shape[-2], group)
        return self.decode(self.load(stored), scales.unsqueeze(-1))

    @property
    def levels(self) -> int:
        """The largest magnitude code (code ``levels`` stands for the block's scale)."""
        return (1 << (self.bits - self.signed)) - 1

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the codes are stored in."""
        return torch.int8 if self.bits == 8 and self.signed else torch.uint8

    def codes_shape(self, shape: tuple[int, ...], block_size: int) -> tuple[int, ...]:
        """The shape of the stored codes of a tensor of ``shape`` with blocks of ``block_size``."""
        if self.bits == 8:
            return tuple(shape)
        return (*shape[:-1], shape[-1] // block_size, block_size // 2)

    def store(self, codes: Tensor) -> Tensor:
        """Integer codes ``(blocks, block_size)`` (int32, signed as :meth:`encode` makes them)
        as stored: ``(blocks, block_size)`` bytes, or ``(blocks, block_size // 2)`` packed."""
        if self.bits == 8:
            return codes.to(self.dtype)
        if self.signed:
            codes = torch.where(codes < 0, 8 - codes, codes)  # sign bit 3, magnitude bits 0-2
        # Element k and element k + block_size // 2 share byte k: two contiguous halves, which
        # the encoding loop reads with vector loads (even and odd elements would need strided
        # ones, which inductor leaves scalar in a loop over rows and blocks).
        half = codes.shape[-1] // 2
        return (codes[..., :half] | (codes[..., half:] << 4)).to(torch.uint8)

    def load(self, stored: Tensor) -> Tensor:
        """The int32 codes ``(blocks, block_size)`` of stored codes (inverse of :meth:`store`)."""
        if self.bits == 8:
            return stored.to(torch.int32)
        # Element k reads byte k (or k - block_size // 2) and shifts by 0 (or 4): an indexed load
        # in the kernel's own loop (a cat or an expanded reshape makes inductor store every code
        # in between).
        half = stored.shape[-1]
        index = torch.arange(2 * half, device=stored.device)
        high = (index >= half).to(torch.int32)
        byte = stored[..., index - high * half].to(torch.int32)
        codes = (byte >> (high * 4)) & 15
        if self.signed:
            codes = torch.where(codes >= 8, 8 - codes, codes)
        return codes

    def _signed_code(self, magnitude: Tensor, values: Tensor) -> Tensor:
        return torch.where(values < 0, -magnitude, magnitude) if self.signed else magnitude

    def encode(self, values: Tensor, scale: Tensor, noise: Tensor | int | float | None) -> Tensor:
        """int32 codes of fp32 ``values`` ``(blocks, block_size)`` relative to ``scale``.

        Args:
            values (Tensor): fp32 values (``>= 0`` for an unsigned code).
            scale (Tensor): per-block scale, at least the block's largest magnitude,
                ``(blocks, 1)``.
            noise (Tensor, number or None): rounding noise from :meth:`noise`; ``None``
                rounds to nearest.
        """
        raise NotImplementedError

    def decode(self, codes: Tensor, scale: Tensor) -> Tensor:
        """fp32 values of int32 codes made by :meth:`encode`.

        Args:
            codes (Tensor): int32 codes, ``(blocks, block_size)``.
            scale (Tensor): per-block scale, ``(blocks, 1)``.
        """
        raise NotImplementedError

    def noise(self, random: Tensor) -> Tensor:
        """Rounding noise for :meth:`encode` from 16 uniform random bits per element.

        Args:
            random (Tensor): int32 values in ``[0, 2**16)`` (one field of :func:`noise_fields`).
        """
        raise NotImplementedError


@dataclass(frozen=True)
class FloatCode(Codec):
    """A small float relative to the block's scale: ``mantissa_bits`` of mantissa, the rest
    exponent.

    8 bits, signed, 3 mantissa bits: 15 binades below the scale; unsigned: 31. A code step is at
    most ``2**-mantissa_bits`` of the smaller value.

    Args:
        mantissa_bits (int): mantissa bits kept.
        zero (bool): code 0 is zero (else the smallest magnitude). Default: ``True``
    """

    mantissa_bits: int = 3
    zero: bool = True

    @property
    def _dropped(self) -> int:
        return _MANTISSA_BITS_FP32 - self.mantissa_bits

    @property
    def _offset(self) -> int:
        # The fp32 pattern of 1.0 with the dropped bits shifted out is the largest code.
        return (127 << self.mantissa_bits) - self.levels

    def encode(self, values: Tensor, scale: Tensor, noise: Tensor | int | float | None) -> Tensor:
        if noise is None:
            noise = 1 << (self._dropped - 1)
        bits = _ratio(values, scale).view(torch.int32) + noise
        magnitude = ((bits >> self._dropped) - self._offset).clamp_(0, self.levels)
        return self._signed_code(magnitude, values)

    def decode(self, codes: Tensor, scale: Tensor) -> Tensor:
        magnitude = codes.abs() if self.signed else codes
        value = ((magnitude + self._offset) << self._dropped).view(torch.float32)
        if self.zero:
            value = torch.where(magnitude > 0, value, 0.0)
        value = value * scale
        return torch.where(codes < 0, -value, value) if self.signed else value

    def noise(self, random: Tensor) -> Tensor:
        shift = self._dropped - _NOISE_BITS
        return (random << shift) + (1 << (shift - 1))  # centred in its unit


@dataclass(frozen=True)
class LinearCode(Codec):
    """``value / scale`` in ``2**bits`` equal steps ``1/2**bits .. 1``, with no zero (unsigned).

    A value below the first step is stored as the first step, so a second moment never decodes
    to 0; a block of zeros (scale 0) still decodes to zeros.
    """

    def encode(self, values: Tensor, scale: Tensor, noise: Tensor | int | float | None) -> Tensor:
        steps = 1 << self.bits
        level = _ratio(values, scale) * steps + (0.5 if noise is None else noise)
        return level.to(torch.int32).clamp_(1, steps) - 1

    def decode(self, codes: Tensor, scale: Tensor) -> Tensor:
        return (codes + 1).to(torch.float32) * (scale / (1 << self.bits))

    def noise(self, random: Tensor) -> Tensor:
        return (random.to(torch.float32) + 0.5) * 2.0**-_NOISE_BITS


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

    Split it with :func:`noise_fields` into the random bits of two states. Arithmetic stays
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
    """Two independent 16-bit random fields (int32 in ``[0, 2**16)``) of one hash value.

    Args:
        hashed (Tensor): values of :func:`rounding_noise`.
    """
    return (hashed & 0xFFFF).to(torch.int32), (hashed >> 16).to(torch.int32)
