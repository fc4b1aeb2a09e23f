"""Checks of AdaBalance's hyper-parameters, shared by the constructor and ``add_param_group``."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import torch

__all__ = ["validate_before_step", "validate_hyperparameters", "validate_param_group"]

# "1e-3" (no dot in the mantissa): YAML 1.1 loaders such as PyYAML read it as a string.
_YAML_STRING_FLOAT = re.compile(r"^[+-]?[0-9]+[eE][+-]?[0-9]+$")


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


def _as_real_number(name: str, value: Any, *, tensors: bool = True) -> float | None:
    """Return ``value`` as a float, or raise a ``ValueError`` that names ``name``.

    Strings (for example ``"1e-3"`` read from a config file) and booleans are rejected rather than
    silently converted, so that a typo never becomes a hyper-parameter. With ``tensors=False`` a
    tensor is not read (no device synchronisation) and ``None`` is returned.
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


def _check_range(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    high_inclusive: bool = False,
    tensors: bool = True,
) -> None:
    number = _as_real_number(name, value, tensors=tensors)
    if number is None:
        return
    above_low = number >= low
    below_high = number <= high if high_inclusive else number < high
    # NaN fails both comparisons, so it is reported here too.
    if not (above_low and below_high):
        closing = "]" if high_inclusive else ")"
        upper = "inf" if math.isinf(high) else repr(high)
        raise ValueError(f"Invalid {name}: {value!r}; it must lie in [{low!r}, {upper}{closing}")


# Every key a group's check reads, in the order they are checked (the first invalid is named).
_CHECKED_KEYS = (
    "lr",
    "base_lr",
    "eps",
    "betas",
    "beta3",
    "final_lr",
    "gamma",
    "weight_decay",
    "amsbound",
    "decoupled_weight_decay",
    "maximize",
    "master_weights",
    "bf16_stochastic_round",
    "skip_nonfinite_grads",
    "foreach",
    "fused",
)
_RANGES: dict[str, dict[str, Any]] = {
    "lr": {"low": 0.0},
    "base_lr": {"low": 0.0},
    "eps": {"low": 0.0},
    "beta3": {"low": 0.0, "high": 1.0},
    "final_lr": {"low": 0.0},
    "gamma": {"low": 0.0, "high": 1.0},
    "weight_decay": {"low": 0.0},
}
_FLAGS = ("amsbound", "decoupled_weight_decay", "maximize", "master_weights")
_FLAGS += ("bf16_stochastic_round",)


def _check_key(group: dict[str, Any], key: str, tensors: bool) -> None:
    """Raise a ``ValueError`` if ``group[key]`` is invalid (see validate_hyperparameters)."""
    if key in _RANGES:
        if key != "base_lr" or "base_lr" in group:
            _check_range(key, group[key], **_RANGES[key], tensors=tensors)
    elif key == "betas":
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(
                f"Invalid betas: {betas!r}; pass a pair (beta1, beta2) such as (0.9, 0.999)"
            )
        _check_range("betas[0]", betas[0], low=0.0, high=1.0, tensors=tensors)
        _check_range("betas[1]", betas[1], low=0.0, high=1.0, tensors=tensors)
    elif key in _FLAGS:
        if not isinstance(group[key], bool):
            raise ValueError(
                f"Invalid {key}: {group[key]!r} (type {type(group[key]).__name__}); "
                f"pass True or False"
            )
    elif key == "skip_nonfinite_grads":
        skip = group.get(key, False)
        if not isinstance(skip, bool):
            raise ValueError(
                f"Invalid skip_nonfinite_grads: {skip!r} (type {type(skip).__name__}); pass "
                f"True or False (a string such as 'yes' from a config file must be converted "
                f"first)"
            )
    else:  # foreach, fused
        value = group.get(key)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"Invalid {key}: {value!r}; pass None, True or False")


def validate_hyperparameters(group: dict[str, Any], *, tensors: bool = True) -> None:
    """Raise a ``ValueError`` naming the first invalid hyper-parameter of a param group.

    Args:
        group (dict): a param group (or the optimizer's defaults) holding ``lr``, ``betas``,
            ``beta3``, ``final_lr``, ``gamma``, ``eps``, ``weight_decay``, the boolean options
            and optionally ``base_lr``.
        tensors (bool, optional): also check values held in tensors (reads them: a device
            synchronisation for accelerator tensors). Default: ``True``
    """
    for key in _CHECKED_KEYS:
        _check_key(group, key, tensors)


def validate_param_group(
    param_group: dict[str, Any], defaults: dict[str, Any], group_index: int
) -> None:
    """Check a param group's hyper-parameters (its own, else the defaults) before it is added.

    Args:
        param_group (dict): the group being added (``"params"`` and per-group options).
        defaults (dict): the optimizer's defaults, for the options the group does not set.
        group_index (int): the position the group will take, named in the error.

    Raises:
        ValueError: naming the group, the hyper-parameter and its value.
    """
    try:
        validate_hyperparameters({**defaults, **param_group})
    except ValueError as error:
        raise ValueError(f"AdaBalance param group {group_index}: {error}") from None


_MISSING = object()


def _snapshot(value: Any) -> Any:
    # Lists are copied, so that an element written in place (betas[0] = 1.0) is seen as a change.
    return tuple(value) if type(value) is list else value


def _unchanged(old: Any, new: Any) -> bool:
    """Whether ``new`` is the value ``old`` (of the same type), without reading any tensor."""
    if old is new:
        return True
    if type(new) is list:  # snapshots hold lists as tuples
        new = tuple(new)
    elif type(old) is not type(new):  # True == 1, but an int flag is invalid
        return False
    if type(new) is tuple:
        return len(old) == len(new) and all(map(_unchanged, old, new))
    if isinstance(new, torch.Tensor):
        return False  # another tensor: not read here (see validate_before_step)
    return bool(old == new)  # nan != nan: a nan is found invalid again at every step


def validate_before_step(
    param_groups: list[dict[str, Any]], validated: list[list[Any]] | None = None
) -> None:
    """Check every group's hyper-parameters again before a step updates anything.

    Catches values written into ``param_groups`` after construction (a buggy scheduler setting
    ``group["lr"] = nan``, ``betas`` set to ``(1.0, 0.999)``, a string from a config file). Only
    Python numbers are checked: a tensor ``lr`` is not read, so a step never synchronises.

    With ``validated``, only the values that differ from the ones last found valid are checked
    (``validated[i]`` holds group ``i``'s, updated here): the checks depend on the values alone,
    so a step whose groups nobody changed costs a comparison of each value, and a scheduler's
    new ``lr`` one check of it.

    Args:
        param_groups (list of dict): the optimizer's param groups.
        validated (list, optional): the optimizer's record of values found valid; ``None``
            checks everything. Default: ``None``

    Raises:
        ValueError: naming the group, the hyper-parameter and its value; no parameter and no
            state has been changed.
    """
    if validated is not None:  # one entry per group; an empty one until it is checked
        del validated[len(param_groups) :]
        validated.extend([] for _ in range(len(param_groups) - len(validated)))
    for group_index, group in enumerate(param_groups):
        record = validated[group_index] if validated is not None else []
        try:
            if not record:
                validate_hyperparameters(group, tensors=False)
                record.extend(_snapshot(group.get(key, _MISSING)) for key in _CHECKED_KEYS)
                continue
            for position, key in enumerate(_CHECKED_KEYS):
                value = group.get(key, _MISSING)
                if not _unchanged(record[position], value):
                    _check_key(group, key, tensors=False)
                    record[position] = _snapshot(value)
        except ValueError as error:
            raise ValueError(
                f"AdaBalance.step: param group {group_index} holds an invalid value, set after "
                f"the optimizer was built (by a scheduler or by code that writes "
                f"optimizer.param_groups[{group_index}][...]); nothing was updated. {error}"
            ) from None
