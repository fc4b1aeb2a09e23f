"""Block-wise low-bit state of one parameter: the layouts, which parameters get them, conversions.

A quantized state keeps AdaBalance's key names for the codes and puts each code tensor's
per-block scales under ``<key>_scale``, shaped like the parameter with its last dimension divided
by the block size: fp32 for 8-bit codes; for 4-bit ones a byte a block and one more a row (the
last column, see ``_codecs.pack_byte_scales``). A state may share one scale between consecutive
blocks (``AdaBalance4bit``'s second moments: one per two blocks, where a row holds an even
number); its scales' shape says so, with that many times fewer. 8-bit codes are shaped like the
parameter; 4-bit codes, packed two per byte, ``(*leading, blocks, block_size // 2)`` (see
``_codecs``). Both follow the parameter's leading dimensions, so a DTensor parameter sharded on
any dimension but its last has its state sharded the same way, and DCP re-shards it (2 ranks
saved, 1 loads) like fp32 state. A saved state says its own layout (the codes' shape against
their scales'), so any optimizer class loads any other's state dict.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._codecs import Codec, FloatCode
from ._dtensor import local_tensor

__all__ = [
    "CODECS",
    "MIN_BLOCK_SIZE",
    "MIN_QUANTIZED_NUMEL",
    "STATE_KEYS",
    "decoded_state",
    "dequantize_state",
    "is_quantized_state",
    "new_quantized_state",
    "quantize_state",
    "saved_block_size",
    "saved_codes",
    "saved_scale_groups",
    "scale_group",
    "state_codec",
    "tensor_block_size",
]

#: Parameters with fewer elements keep fp32 state (biases, norm weights, small heads): their state
#: is a negligible share of the total and low bits would cost them the most accuracy.
MIN_QUANTIZED_NUMEL = 4096
#: The smallest block :func:`tensor_block_size` falls back to.
MIN_BLOCK_SIZE = 32
#: The states that get codes.
STATE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_lr", "max_exp_avg_sq")

#: The codec of each state at each width. At 8 bits ``exp_avg`` rounds to nearest; ``exp_avg_sq``
#: and ``exp_avg_lr`` stochastically (their averages move by less than a code step per step);
#: ``max_exp_avg_sq`` (amsbound), a maximum, to nearest. At 4 bits every average rounds
#: stochastically (``m`` rounded to nearest cost +3.2% perplexity in the ablation, stochastically
#: +0.7%): ``exp_avg`` is a sign and a float with 2 exponent and 1 mantissa bits (E2M1, as the
#: FP4 element of the MX formats but without its subnormal); the second moments an unsigned float
#: with 3 exponent and 1 mantissa bits and no zero (its code 0 is the smallest value, so ``v``
#: never decodes to 0 and the step never becomes ``lr / eps``: Li et al.'s "zero-point
#: problem"); ``exp_avg_lr`` an unsigned float with 2 exponent and 2 mantissa bits and no zero
#: (with a zero code, or 3 exponent bits, it cost +2% to +26%). Their linear zero-free map
#: (``LinearCode``) measured worse here; see ``benchmarks/results/lowbit_ablation.md``.
CODECS: dict[int, dict[str, Codec]] = {
    8: {
        "exp_avg": FloatCode(8, signed=True, stochastic=False, mantissa_bits=3),
        "exp_avg_sq": FloatCode(8, signed=False, stochastic=True, mantissa_bits=3),
        "exp_avg_lr": FloatCode(8, signed=False, stochastic=True, mantissa_bits=3),
        "max_exp_avg_sq": FloatCode(8, signed=False, stochastic=False, mantissa_bits=3),
    },
    4: {
        "exp_avg": FloatCode(4, signed=True, stochastic=True, mantissa_bits=1),
        "exp_avg_sq": FloatCode(4, signed=False, stochastic=True, mantissa_bits=1, zero=False),
        "exp_avg_lr": FloatCode(4, signed=False, stochastic=True, mantissa_bits=2, zero=False),
        "max_exp_avg_sq": FloatCode(4, signed=False, stochastic=False, mantissa_bits=1, zero=False),
    },
}


def _scale_key(key: str) -> str:
    return key + "_scale"


def _last_dim_sharded(param: Tensor) -> bool:
    placements = getattr(param, "placements", ())
    return any(getattr(p, "dim", None) in (-1, param.dim() - 1) for p in placements)


def tensor_block_size(param: Tensor, block_size: int) -> int | None:
    """The block size of ``param``'s low-bit state, or ``None`` if its state stays fp32.

    It is ``block_size`` if that divides the last dimension, else their greatest common divisor
    if it is at least :data:`MIN_BLOCK_SIZE` (or ``block_size``, if smaller): ``block_size=128``
    gives a last dimension of 96 blocks of 32. The parameter must be a real floating-point
    tensor of at least :data:`MIN_QUANTIZED_NUMEL` elements whose last dimension is not sharded
    (for a DTensor); a 1-D one (DeepSpeed ZeRO's flat partitions) gets blocks if its length has
    such a divisor.

    Args:
        param (Tensor): the parameter.
        block_size (int): the requested elements per block.
    """
    if not (
        param.is_floating_point()
        and param.dim() >= 1
        and param.numel() >= MIN_QUANTIZED_NUMEL
        and not _last_dim_sharded(param)
    ):
        return None
    block = math.gcd(param.shape[-1], block_size)
    return block if block >= min(block_size, MIN_BLOCK_SIZE) else None


def is_quantized_state(state: dict[str, Any]) -> bool:
    """Whether a parameter's state holds low-bit codes (it has ``exp_avg_scale``)."""
    return _scale_key("exp_avg") in state


def _packed(codes: Tensor, scale: Tensor) -> bool:
    return codes.dim() == scale.dim() + 1


def state_codec(state: dict[str, Any], key: str) -> Codec:
    """The codec of a saved quantized state ``key``, read off its shapes.

    Args:
        state (dict): one parameter's optimizer state, with ``key`` and ``<key>_scale``.
        key (str): one of :data:`STATE_KEYS`.
    """
    return CODECS[4 if _packed(state[key], state[_scale_key(key)]) else 8][key]


def saved_block_size(state: dict[str, Any]) -> int:
    """The block size a quantized state was made with, read off its shapes."""
    codes, scale = state["exp_avg"], state[_scale_key("exp_avg")]
    if _packed(codes, scale):
        return 2 * codes.shape[-1]
    return codes.shape[-1] // scale.shape[-1]


def scale_group(codes: Tensor, scale: Tensor, codec: Codec) -> int:
    """How many consecutive blocks of ``codes`` share each of its stored scales ``scale``."""
    if not _packed(codes, scale):
        return 1
    return codes.shape[-2] // max(scale.shape[-1] - codec.row_columns, 1)


def saved_scale_groups(state: dict[str, Any]) -> dict[str, int]:
    """How many consecutive blocks share a scale in each quantized state of ``state``, by key."""
    return {
        key: scale_group(state[key], state[_scale_key(key)], state_codec(state, key))
        for key in STATE_KEYS
        if key in state
    }


def saved_bits(state: dict[str, Any]) -> dict[str, int]:
    """The width of each quantized state in ``state``, by key."""
    return {key: state_codec(state, key).bits for key in STATE_KEYS if key in state}


def _like(param: Tensor, local: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``local`` (this rank's part) as a tensor of ``shape`` laid out like ``param``."""
    if not hasattr(param, "placements"):
        return local
    from torch.distributed.tensor import DTensor

    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=shape, stride=stride
    )


def _scale_shape(
    shape: torch.Size | tuple[int, ...], block_size: int, codec: Codec, group: int
) -> tuple[int, ...]:
    return (*shape[:-1], shape[-1] // (block_size * group) + codec.row_columns)


def _store(
    state: dict[str, Any],
    key: str,
    param: Tensor,
    codes: Tensor,
    scale: Tensor,
    block_size: int,
    group: int,
) -> None:
    """Put local ``codes`` (stored form) and ``scale`` of ``key`` into ``state`` as ``param``'s."""
    codec = CODECS[8 if codes.dim() == scale.dim() else 4][key]
    state[key] = _like(param, codes, codec.codes_shape(tuple(param.shape), block_size))
    scale_shape = _scale_shape(param.shape, block_size, codec, group)
    state[_scale_key(key)] = _like(param, scale, scale_shape)


def new_quantized_state(
    param: Tensor, key: str, block_size: int, bits: int, group: int = 1
) -> dict[str, Tensor]:
    """Zero codes and scales of state ``key`` for ``param`` (they decode to 0, as fp32 state).

    Args:
        param (Tensor): the parameter (a DTensor gets DTensor state, sharded alike).
        key (str): the state's name, one of :data:`STATE_KEYS`.
        block_size (int): elements per block.
        bits (int): the codes' width, 8 or 4.
        group (int, optional): consecutive blocks that share a scale. Default: ``1``
    """
    codec = CODECS[bits][key]
    local = local_tensor(param)
    codes = torch.zeros(codec.codes_shape(local.shape, block_size), dtype=codec.dtype,
                        device=local.device)  # fmt: skip
    scale_shape = _scale_shape(local.shape, block_size, codec, group)
    scale = torch.zeros(scale_shape, dtype=codec.scale_dtype, device=local.device)
    state: dict[str, Tensor] = {}
    _store(state, key, param, codes, scale, block_size, group)
    return state


def quantize_state(
    state: dict[str, Any],
    param: Tensor,
    block_size: int,
    bits: dict[str, int],
    groups: dict[str, int] | None = None,
) -> None:
    """Replace the fp32 moments in ``state`` by their codes (rounded to nearest), in place.

    Args:
        state (dict): the parameter's optimizer state, with fp32 (or other floating) moments.
        param (Tensor): the parameter.
        block_size (int): elements per block.
        bits (dict): the width of each state's codes, by key.
        groups (dict, optional): consecutive blocks that share a scale, by key (1 if missing).
    """
    for key in STATE_KEYS:
        if key not in state:
            continue
        codec = CODECS[bits[key]][key]
        values = local_tensor(state[key]).to(torch.float32)
        rows, blocks = values.numel() // values.shape[-1], values.shape[-1] // block_size
        # Sizes spelled out: a shard with no rows (FSDP2, fewer rows than ranks) has no -1.
        blocked = values.reshape(rows, blocks, block_size)
        group = (groups or {}).get(key, 1)
        stored, stored_scale = codec.encode_blocks(blocked, None, group)
        codes = stored.view(codec.codes_shape(values.shape, block_size))
        stored_scale = stored_scale.view(_scale_shape(values.shape, block_size, codec, group))
        _store(state, key, param, codes, stored_scale, block_size, group)


def dequantize_state(state: dict[str, Any], param: Tensor, dtype: torch.dtype) -> None:
    """Replace low-bit codes in ``state`` by their values in ``dtype``, in place.

    Args:
        state (dict): the parameter's optimizer state, with codes and ``*_scale`` entries.
        param (Tensor): the parameter.
        dtype (torch.dtype): the dtype of the fp32 (or compute-dtype) state to make.
    """
    for key in STATE_KEYS:
        if key in state:
            values = decoded_state(state, key).to(dtype)
            del state[_scale_key(key)]
            state[key] = _like(param, values, tuple(param.shape))


def saved_codes(param_groups: list[dict], state_dict: dict) -> dict[Tensor, dict[str, Tensor]]:
    """Copies of the codes and scales in a state dict being loaded, on each parameter's device.

    ``Optimizer.load_state_dict`` casts every state tensor of a floating-point parameter to the
    parameter's dtype, codes included (``int8`` 37 would become 37.0) and the fp32 scales of a
    bf16 parameter; the copies made here are put back after loading.

    Args:
        param_groups (list of dict): the param groups of the optimizer that loads.
        state_dict (dict): the state dict being loaded.
    """
    restored: dict[Tensor, dict[str, Tensor]] = {}
    for saved, group in zip(state_dict["param_groups"], param_groups, strict=True):
        for param_id, param in zip(saved["params"], group["params"], strict=True):
            saved_state = state_dict["state"].get(param_id)
            if not saved_state or not is_quantized_state(saved_state):
                continue
            restored[param] = {
                name: saved_state[name].to(device=param.device, copy=True)
                for key in STATE_KEYS
                if key in saved_state
                for name in (key, _scale_key(key))
            }
    return restored


def decoded_state(state: dict[str, Any], key: str) -> Tensor:
    """The values of state ``key`` of one parameter in fp32, whether low-bit or not.

    For :class:`~adabalance_hf.AdaBalance8bit` and :class:`~adabalance_hf.AdaBalance4bit` state
    the codes are decoded (a DTensor's local shard: what this rank holds), shaped like the
    parameter's shard; other state is returned as it is.

    Args:
        state (dict): one parameter's optimizer state.
        key (str): ``"exp_avg"``, ``"exp_avg_sq"``, ``"exp_avg_lr"`` or ``"max_exp_avg_sq"``.
    """
    if _scale_key(key) not in state:
        return state[key]
    codec = state_codec(state, key)
    codes, scale = local_tensor(state[key]), local_tensor(state[_scale_key(key)])
    rows = scale.numel() // scale.shape[-1]
    group = scale_group(codes, scale, codec)
    blocks = (scale.shape[-1] - codec.row_columns) * group
    # Sizes spelled out: a shard with no rows (FSDP2, fewer rows than ranks) has no -1.
    block_bytes = codes.shape[-1] if _packed(codes, scale) else codes.shape[-1] // blocks
    stored = codes.reshape(rows, blocks, block_bytes)
    values = codec.decode_blocks(stored, scale.reshape(rows, scale.shape[-1]), group)
    return values.view(*scale.shape[:-1], blocks * values.shape[-1])
