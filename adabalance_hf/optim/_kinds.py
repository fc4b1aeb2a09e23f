"""What each kind of AdaBalance option holds: its check and its conversion from a string.

The checks name the option, the value and the fix (a YAML ``1e-3`` read as a string is named as
such); :class:`~.options.Option` picks them by its ``kind``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CHECKS", "FROM_STRING", "check_block_size"]

# "1e-3" (no dot in the mantissa): YAML 1.1 loaders such as PyYAML read it as a string.
_YAML_STRING_FLOAT = re.compile(r"^[+-]?[0-9]+[eE][+-]?[0-9]+$")
_TRUE, _FALSE, _NONE = {"true", "1", "yes"}, {"false", "0", "no"}, {"none", "null"}


def _string_message(name: str, value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return f"Invalid {name}: {value!r} is a str, not a number; pass a float, e.g. {name}=0.1"
    hint = (
        " (YAML reads 1e-3 without a dot as a string: write 1.0e-3 in the config file)"
        if _YAML_STRING_FLOAT.match(value.strip())
        else " (convert values read from a config file or the command line with float(...))"
    )
    return (
        f"Invalid {name}: {value!r} is a str, not a number; pass a float: {name}={number!r}{hint}"
    )


def _as_real_number(name: str, value: Any, tensors: bool) -> float | None:
    """``value`` as a float, or raise a ``ValueError`` that names ``name``.

    Strings (``"1e-3"`` read from a config file) and booleans are rejected rather than converted,
    so that a typo never becomes a hyper-parameter. With ``tensors=False`` a tensor is not read
    (no device synchronisation) and ``None`` is returned.
    """
    if isinstance(value, torch.Tensor):
        if not tensors:
            return None
        if value.numel() != 1 or value.is_complex():
            raise ValueError(
                f"Invalid {name}: {value!r}; a tensor {name} must hold one real number "
                f"(a 0-dim tensor such as torch.tensor(1e-3))"
            )
        return float(value.detach().cpu().item())
    if isinstance(value, str):
        raise ValueError(_string_message(name, value))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Invalid {name}: {value!r} (type {type(value).__name__}); pass a number, "
            f"e.g. {name}=float(...) if it was read from a config file"
        )
    return float(value)


def _check_range(name: str, value: Any, high: float, tensors: bool) -> None:
    number = _as_real_number(name, value, tensors)
    # NaN fails both comparisons, so it is reported here too.
    if number is not None and not (0.0 <= number < high):
        upper = "inf" if math.isinf(high) else repr(high)
        raise ValueError(f"Invalid {name}: {value!r}; it must lie in [0.0, {upper})")


def _check_betas(name: str, value: Any, high: float, tensors: bool) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(
            f"Invalid {name}: {value!r}; pass a pair (beta1, beta2) such as (0.9, 0.999)"
        )
    _check_range(f"{name}[0]", value[0], 1.0, tensors)
    _check_range(f"{name}[1]", value[1], 1.0, tensors)


def _check_flag(name: str, value: Any, high: float, tensors: bool) -> None:
    if not isinstance(value, bool):
        hint = " (convert a string read from a config file first)" * isinstance(value, str)
        raise ValueError(
            f"Invalid {name}: {value!r} (type {type(value).__name__}); pass True or False{hint}"
        )


def _check_optional_flag(name: str, value: Any, high: float, tensors: bool) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r}; pass None, True or False")


def check_block_size(value: Any, *, even: bool = False) -> int:
    """Return ``value`` if it is a positive (``even``: even) integer, else raise saying so.

    Args:
        value (Any): the ``block_size``.
        even (bool, optional): two codes share a byte (4-bit state). Default: ``False``
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
        or (even and value % 2)
    ):
        kind = "a positive even integer (two 4-bit codes share a byte)" if even else (
            "a positive integer")  # fmt: skip
        raise ValueError(
            f"Invalid block_size: {value!r}; it must be {kind}: the number of elements that "
            f"share one scale, e.g. block_size=128. Parameters whose last dimension is a "
            f"multiple of it get low-bit state"
        )
    return int(value)


def _check_block_size(name: str, value: Any, high: float, tensors: bool) -> None:
    if value is not None:  # None: the class's default
        check_block_size(value)  # the class's own check adds evenness (AdaBalance4bit)


#: The check of each kind: ``check(name, value, high, tensors)`` raises a ``ValueError``.
CHECKS: dict[str, Callable[[str, Any, float, bool], None]] = {
    "number": _check_range,
    "betas": _check_betas,
    "flag": _check_flag,
    "flag or None": _check_optional_flag,
    "block size": _check_block_size,
}


# ---- conversion from a string (optim_args), by kind -----------------------------------------


def _float_from_string(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"{key}={text!r} is not a finite float; write a number such as {key}=0.05 or {key}=1e-3"
        )
    return value


def _flag_from_string(key: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise ValueError(f"{key}={text!r} is not a bool; write {key}=true or {key}=false")


def _optional_flag_from_string(key: str, text: str) -> bool | None:
    lowered = text.lower()
    if lowered in _NONE:
        return None
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise ValueError(
        f"{key}={text!r} is not a bool or none; write {key}=true, {key}=false or {key}=none"
    )


def _block_size_from_string(key: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{key}={text!r} is not a positive integer; write e.g. {key}=256")
    return int(text)


def _no_string_form(key: str, text: str) -> Any:
    raise ValueError(f"{key} cannot be given as a string ({key}={text!r})")


#: The conversion of each kind: ``from_string(key, text)`` returns the value or raises a
#: ``ValueError`` naming the key, the text and how to write it.
FROM_STRING: dict[str, Callable[[str, str], Any]] = {
    "number": _float_from_string,
    "betas": _no_string_form,
    "flag": _flag_from_string,
    "flag or None": _optional_flag_from_string,
    "block size": _block_size_from_string,
}
