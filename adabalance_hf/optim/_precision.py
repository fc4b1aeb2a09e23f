"""Low-precision parameters: which dtypes get fp32 state, and how results are written back."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "LOW_PRECISION_DTYPES",
    "compute_dtype",
    "full_precision_state",
    "stochastic_round_to_bf16",
    "write_back",
]

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)

# Clears the 16 low bits of an fp32 bit pattern: what remains is exactly a bf16 value.
_BF16_HIGH_BITS_MASK = -65536  # 0xFFFF0000 as a signed int32


def compute_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of AdaBalance's state and arithmetic for a parameter of ``param_dtype``.

    Args:
        param_dtype (torch.dtype): the parameter's dtype.
    """
    return torch.float32 if param_dtype in LOW_PRECISION_DTYPES else param_dtype


def stochastic_round_to_bf16(value: Tensor) -> Tensor:
    """Round an fp32 tensor to bf16 stochastically (unbiased in expectation).

    A random 16-bit integer is added to the fp32 bit pattern before the low 16 bits are cut, so a
    value rounds up with probability equal to its distance from the lower bf16 neighbour. Sizes
    and signs need no special case: the bit pattern is sign and magnitude.

    Args:
        value (Tensor): fp32 values to round.
    """
    bits = value.view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    rounded = (bits + noise).bitwise_and_(_BF16_HIGH_BITS_MASK)
    return rounded.view(torch.float32).to(torch.bfloat16)


def write_back(param: Tensor, value: Tensor, stochastic_round: bool) -> None:
    """Store the fp32 result ``value`` into the low-precision ``param``.

    Args:
        param (Tensor): the model's parameter (bf16 or fp16), updated in place.
        value (Tensor): the new value in fp32.
        stochastic_round (bool): round stochastically (bf16 only) instead of to nearest.
    """
    if stochastic_round and param.dtype == torch.bfloat16:
        param.copy_(stochastic_round_to_bf16(value))
    else:
        param.copy_(value)


def full_precision_state(
    param_groups: list[dict], state_dict: dict
) -> dict[Tensor, dict[str, Tensor]]:
    """Copies, in fp32, of the saved state of every low-precision parameter.

    ``Optimizer.load_state_dict`` casts each floating state tensor to its parameter's dtype, which
    would round fp32 moments and master weights of a bf16 parameter to bf16. The copies made here
    are put back after loading.

    Args:
        param_groups (list of dict): the param groups of the optimizer that loads.
        state_dict (dict): the state dict being loaded.
    """
    restored: dict[Tensor, dict[str, Tensor]] = {}
    saved_groups = state_dict["param_groups"]
    for saved, group in zip(saved_groups, param_groups, strict=True):
        for param_id, param in zip(saved["params"], group["params"], strict=True):
            saved_state = state_dict["state"].get(param_id)
            if not saved_state or param.dtype not in LOW_PRECISION_DTYPES:
                continue
            restored[param] = {
                key: value.to(device=param.device, dtype=torch.float32, copy=True)
                for key, value in saved_state.items()
                if key != "step" and isinstance(value, Tensor) and value.is_floating_point()
            }
    return restored
