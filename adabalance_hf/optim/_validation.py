"""Checks of AdaBalance's hyper-parameters, shared by the constructor and ``add_param_group``."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = ["validate_hyperparameters"]


def _as_real_number(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise a ``ValueError`` that names ``name``.

    Strings (for example ``"1e-3"`` read from a config file) and booleans are rejected rather than
    silently converted, so that a typo never becomes a hyper-parameter.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(
                f"Invalid {name}: {value!r}; a tensor {name} must hold one real number "
                f"(a 0-dim tensor such as torch.tensor(1e-3))"
            )
        return float(value.detach().cpu().item())
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
) -> None:
    number = _as_real_number(name, value)
    above_low = number >= low
    below_high = number <= high if high_inclusive else number < high
    # NaN fails both comparisons, so it is reported here too.
    if not (above_low and below_high):
        closing = "]" if high_inclusive else ")"
        upper = "inf" if math.isinf(high) else repr(high)
        raise ValueError(f"Invalid {name}: {value!r}; it must lie in [{low!r}, {upper}{closing}")


def validate_hyperparameters(group: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the first invalid hyper-parameter of a param group.

    Args:
        group (dict): a param group (or the optimizer's defaults) holding ``lr``, ``betas``,
            ``beta3``, ``final_lr``, ``gamma``, ``eps``, ``weight_decay``, the boolean options
            and optionally ``base_lr``.
    """
    _check_range("lr", group["lr"], low=0.0)
    if "base_lr" in group:
        _check_range("base_lr", group["base_lr"], low=0.0)
    _check_range("eps", group["eps"], low=0.0)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(
            f"Invalid betas: {betas!r}; pass a pair (beta1, beta2) such as (0.9, 0.999)"
        )
    _check_range("betas[0]", betas[0], low=0.0, high=1.0)
    _check_range("betas[1]", betas[1], low=0.0, high=1.0)
    _check_range("beta3", group["beta3"], low=0.0, high=1.0)
    _check_range("final_lr", group["final_lr"], low=0.0)
    _check_range("gamma", group["gamma"], low=0.0, high=1.0)
    _check_range("weight_decay", group["weight_decay"], low=0.0)
    flags = ("amsbound", "decoupled_weight_decay", "maximize")
    for flag in (*flags, "master_weights", "bf16_stochastic_round"):
        if not isinstance(group[flag], bool):
            raise ValueError(
                f"Invalid {flag}: {group[flag]!r} (type {type(group[flag]).__name__}); "
                f"pass True or False"
            )
    for option in ("foreach", "fused"):
        value = group.get(option)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"Invalid {option}: {value!r}; pass None, True or False")
