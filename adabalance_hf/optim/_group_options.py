"""A param group's options: the defaults of those added after the reference, and their values
as the functional step takes them."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._nonfinite import OPTION

__all__ = ["OPTION_DEFAULTS", "as_float", "group_hyperparameters"]

# Options added after the reference code, with the values that reproduce it.
OPTION_DEFAULTS = {
    "amsbound": False,
    "decoupled_weight_decay": False,
    "maximize": False,
    "foreach": None,
    "fused": None,
    "master_weights": True,
    "bf16_stochastic_round": False,
    "differentiable": False,
    OPTION: False,
}


def as_float(value: float | Tensor) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def group_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """A param group's options as the functional step takes them (floats, betas split)."""
    beta1, beta2 = group["betas"]
    return dict(
        amsbound=group["amsbound"],
        lr=as_float(group["lr"]),
        base_lr=as_float(group["base_lr"]),
        beta1=as_float(beta1),
        beta2=as_float(beta2),
        beta3=as_float(group["beta3"]),
        final_lr=as_float(group["final_lr"]),
        gamma=as_float(group["gamma"]),
        eps=as_float(group["eps"]),
        weight_decay=as_float(group["weight_decay"]),
        decoupled_weight_decay=group["decoupled_weight_decay"],
        maximize=group["maximize"],
        stochastic_round=group["bf16_stochastic_round"],
    )
