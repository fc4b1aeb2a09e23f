"""Optimizers for the recipes: AdaBalance (every variant), AdamW, and AdaBound/AdaMod if installed.

Every optimizer gets the same transformers-style parameter groups (no weight decay on biases and
LayerNorm weights), built by :func:`adabalance_hf.distributed.param_groups`.
"""

from __future__ import annotations

from typing import Any

import torch

from adabalance_hf.distributed import create_optimizer, param_groups
from adabalance_hf.integrations.transformers import FINE_TUNING_DEFAULTS, adabalance_optimizer_names
from adabalance_hf.integrations.transformers.optim_names import variant_kwargs

__all__ = [
    "ADABALANCE_FINETUNE_DEFAULTS",
    "build_optimizer",
    "default_lr",
    "default_weight_decay",
    "optimizer_names",
]

# AdaBalance's defaults for transformer fine-tuning: the Trainer integration's (chosen with the
# sweep in benchmarks/results/adabalance_defaults_sweep.md; the paper's, made for training from
# scratch at lr 1e-3, are final_lr=0.1, gamma=1e-3, beta3=0.999) and AdamW's usual rate.
ADABALANCE_FINETUNE_DEFAULTS = {"lr": 3e-5, **FINE_TUNING_DEFAULTS}
ADAMW_DEFAULT_LR = 3e-5
_OTHERS = ("adamw", "adabound", "adamod")


def optimizer_names() -> tuple[str, ...]:
    return (*adabalance_optimizer_names(), *_OTHERS)


def default_lr(name: str) -> float:
    return ADAMW_DEFAULT_LR if name == "adamw" else ADABALANCE_FINETUNE_DEFAULTS["lr"]


def default_weight_decay(name: str) -> float:
    """0.01 for decoupled weight decay (AdamW, adabalancew*); 0 where it is an L2 term."""
    return 0.01 if name == "adamw" or name.startswith("adabalancew") else 0.0


def build_optimizer(
    name: str,
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    final_lr: float = ADABALANCE_FINETUNE_DEFAULTS["final_lr"],
    gamma: float = ADABALANCE_FINETUNE_DEFAULTS["gamma"],
    beta3: float = ADABALANCE_FINETUNE_DEFAULTS["beta3"],
) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` (see :func:`optimizer_names`)."""
    if name not in optimizer_names():
        raise ValueError(
            f"--optimizer: unknown optimizer {name!r}; choose one of {', '.join(optimizer_names())}"
        )
    common: dict[str, Any] = {"lr": lr, "betas": betas, "eps": eps}
    if name in adabalance_optimizer_names():
        return create_optimizer(
            model,
            weight_decay=weight_decay,
            final_lr=final_lr,
            gamma=gamma,
            beta3=beta3,
            check_setup="error",
            **common,
            **variant_kwargs(name),
        )
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, **common)
    try:
        if name == "adabound":
            from adabound import AdaBound

            return AdaBound(groups, final_lr=final_lr, gamma=gamma, **common)
        from adamod import AdaMod

        return AdaMod(groups, beta3=beta3, **common)
    except ImportError:
        raise ImportError(
            f"--optimizer {name}: the package {name!r} is not installed; pip install {name}"
        ) from None
