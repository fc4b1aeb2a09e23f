"""Block-wise 8-bit state of one parameter: which parameters get it, making it, converting it.

A quantized state keeps AdaBalance's key names for the codes (``exp_avg`` ``int8``, ``exp_avg_sq``
and ``exp_avg_lr`` ``uint8``, ``max_exp_avg_sq`` ``uint8`` with amsbound), shaped like the
parameter, and puts each code tensor's per-block scales under ``<key>_scale``: fp32, shaped like
the parameter with its last dimension divided by the block size. Both shapes follow the
parameter's leading dimensions, so a DTensor parameter sharded on any dimension but its last has
its state sharded the same way, and DCP re-shards it (2 ranks saved, 1 loads) like fp32 state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._blockwise import decode_signed, decode_unsigned, encode_signed, encode_unsigned
from ._dtensor import local_tensor

__all__ = [
    "CODE_DTYPES",
    "MIN_BLOCK_SIZE",
    "MIN_QUANTIZED_NUMEL",
    "decoded_state",
    "dequantize_state",
    "is_quantized_state",
    "new_quantized_state",
    "quantize_state",
    "saved_block_size",
    "saved_codes",
    "tensor_block_size",
]

#: Parameters with fewer elements keep fp32 state (biases, norm weights, small heads): their state
#: is a negligible share of the total and 8 bits would cost them the most accuracy.
MIN_QUANTIZED_NUMEL = 4096
#: The dtype of each state's codes.
CODE_DTYPES = {
    "exp_avg": torch.int8,
    "exp_avg_sq": torch.uint8,
    "exp_avg_lr": torch.uint8,
    "max_exp_avg_sq": torch.uint8,
}


def _scale_key(key: str) -> str:
    return key + "_scale"


def _last_dim_sharded(param: Tensor) -> bool:
    placements = getattr(param, "placements", ())
    return any(getattr(p, "dim", None) in (-1, param.dim() - 1) for p in placements)


#: The smallest block :func:`tensor_block_size` falls back to.
MIN_BLOCK_SIZE = 32


def tensor_block_size(param: Tensor, block_size: int) -> int | None:
    """The block size of ``param``'s 8-bit state, or ``None`` if its state stays fp32.

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
    """Whether a parameter's state holds 8-bit codes (it has ``exp_avg_scale``)."""
    return _scale_key("exp_avg") in state


def saved_block_size(state: dict[str, Any]) -> int:
    """The block size a quantized state was made with, read off its shapes."""
    codes, scale = state["exp_avg"], state[_scale_key("exp_avg")]
    return codes.shape[-1] // scale.shape[-1]


def _like(param: Tensor, local: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``local`` (this rank's part) as a tensor of ``shape`` laid out like ``param``."""
    if not hasattr(param, "placements"):
        return local
    from torch.distributed.tensor import DTensor

    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=shape, stride=stride
    )


def _scale_shape(shape: torch.Size | tuple[int, ...], block_size: int) -> tuple[int, ...]:
    return (*shape[:-1], shape[-1] // block_size)


def new_quantized_state(param: Tensor, key: str, block_size: int) -> dict[str, Tensor]:
    """Zero codes and scales of state ``key`` for ``param`` (zero decodes to 0, as fp32 state).

    Args:
        param (Tensor): the parameter (a DTensor gets DTensor state, sharded alike).
        key (str): the state's name, one of :data:`CODE_DTYPES`.
        block_size (int): elements per block.
    """
    local = local_tensor(param)
    codes = torch.zeros_like(local, dtype=CODE_DTYPES[key], memory_format=torch.contiguous_format)
    scale = torch.zeros(_scale_shape(local.shape, block_size), device=local.device)
    return {
        key: _like(param, codes, tuple(param.shape)),
        _scale_key(key): _like(param, scale, _scale_shape(param.shape, block_size)),
    }


def quantize_state(state: dict[str, Any], param: Tensor, block_size: int) -> None:
    """Replace the fp32 moments in ``state`` by their 8-bit codes (round to nearest), in place.

    Args:
        state (dict): the parameter's optimizer state, with fp32 (or other floating) moments.
        param (Tensor): the parameter.
        block_size (int): elements per block.
    """
    for key in CODE_DTYPES:
        if key not in state:
            continue
        values = local_tensor(state[key]).to(torch.float32)
        blocks = values.reshape(-1, block_size)
        scale = blocks.abs().amax(dim=-1, keepdim=True)
        encode = encode_signed if key == "exp_avg" else encode_unsigned
        codes = encode(blocks, scale).view(values.shape)
        state[key] = _like(param, codes, tuple(param.shape))
        scale_shape = _scale_shape(values.shape, block_size)
        state[_scale_key(key)] = _like(
            param, scale.view(scale_shape), _scale_shape(param.shape, block_size)
        )


def dequantize_state(state: dict[str, Any], param: Tensor, dtype: torch.dtype) -> None:
    """Replace 8-bit codes in ``state`` by their values in ``dtype``, in place.

    Args:
        state (dict): the parameter's optimizer state, with codes and ``*_scale`` entries.
        param (Tensor): the parameter.
        dtype (torch.dtype): the dtype of the fp32 (or compute-dtype) state to make.
    """
    for key in CODE_DTYPES:
        if key in state:
            values = decoded_state(state, key).to(dtype)
            del state[_scale_key(key)]
            state[key] = _like(param, values, tuple(param.shape))


def saved_codes(param_groups: list[dict], state_dict: dict) -> dict[Tensor, dict[str, Tensor]]:
    """Copies of the 8-bit codes in a state dict being loaded, on each parameter's device.

    ``Optimizer.load_state_dict`` casts every state tensor of a floating-point parameter to the
    parameter's dtype, codes included (``int8`` 37 would become 37.0); the copies made here are
    put back after loading.

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
                key: saved_state[key].to(device=param.device, copy=True)
                for key in CODE_DTYPES
                if key in saved_state
            }
    return restored


def decoded_state(state: dict[str, Any], key: str) -> Tensor:
    """The values of state ``key`` of one parameter in fp32, whether 8-bit or not.

    For :class:`~adabalance_hf.AdaBalance8bit` state the codes are decoded (a DTensor's local
    shard: what this rank holds); other state is returned as it is.

    Args:
        state (dict): one parameter's optimizer state.
        key (str): ``"exp_avg"``, ``"exp_avg_sq"``, ``"exp_avg_lr"`` or ``"max_exp_avg_sq"``.
    """
    if _scale_key(key) not in state:
        return state[key]
    codes, scale = local_tensor(state[key]), local_tensor(state[_scale_key(key)])
    block_size = codes.shape[-1] // scale.shape[-1]
    decode = decode_signed if key == "exp_avg" else decode_unsigned
    blocks = codes.reshape(-1, block_size)
    return decode(blocks, scale.reshape(-1, 1).to(torch.float32)).view(codes.shape)
