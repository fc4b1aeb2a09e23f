"""Registry of the optimizer names this package adds to transformers' ``optim`` argument.

Each name maps to the AdaBalance keyword arguments that define its variant. A variant that needs
a keyword the installed :class:`~adabalance_hf.AdaBalance` does not accept (e.g. ``fused`` before
it exists) is left out, so registering a future variant is one line in ``_VARIANTS``.

Every name also carries :data:`FINE_TUNING_DEFAULTS`: the options a name gets where ``optim_args``
leaves them open. The :class:`~adabalance_hf.AdaBalance` class itself keeps the paper's defaults.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers.training_args import OptimizerNames, TrainingArguments

from ...optim import AdaBalance, AdaBalance8bit

__all__ = [
    "FINE_TUNING_DEFAULTS",
    "PAPER_OPTIM_ARGS",
    "adabalance_optimizer_names",
    "all_optimizer_names",
    "builtin_optimizer_names",
    "check_optimizer_name",
    "default_optimizer_name",
    "is_adabalance_name",
    "optimizer_class",
    "optimizer_name_value",
    "variant_kwargs",
]

#: AdaBalance's options under every optimizer name of the Trainer integration, where
#: ``optim_args`` leaves them open. The paper's ``beta3=0.999`` smooths the step size over about
#: 1,000 steps (after 100 steps it holds 10% of Adam's rate: a short fine-tune barely moves) and
#: its ``gamma=1e-3`` closes the bounds in 10x faster; measured in
#: benchmarks/results/adabalance_defaults_sweep.md and benchmarks/results/name_defaults.md.
FINE_TUNING_DEFAULTS: dict[str, float] = {"final_lr": 0.1, "gamma": 1e-4, "beta3": 0.9}
#: ``optim_args`` that give a name the paper's (and the ``AdaBalance`` class's) settings.
PAPER_OPTIM_ARGS = "final_lr=0.1,gamma=1e-3,beta3=0.999"

# name -> AdaBalance keyword arguments of that variant, in the order shown in --help.
_VARIANTS: dict[str, dict[str, Any]] = {
    "adabalance": {},
    "adabalance_amsbound": {"amsbound": True},
    "adabalancew": {"decoupled_weight_decay": True},
    "adabalancew_amsbound": {"decoupled_weight_decay": True, "amsbound": True},
    "adabalance_fused": {"fused": True},
    "adabalancew_fused": {"decoupled_weight_decay": True, "fused": True},
    "adabalance_8bit": {},
    "adabalancew_8bit": {"decoupled_weight_decay": True},
}
# Names whose optimizer is not AdaBalance itself.
_CLASSES: dict[str, type] = {
    "adabalance_8bit": AdaBalance8bit,
    "adabalancew_8bit": AdaBalance8bit,
}


def _accepted_keywords(optimizer_cls: type) -> set[str]:
    return set(inspect.signature(optimizer_cls).parameters)


def adabalance_optimizer_names(optimizer_cls: type = AdaBalance) -> tuple[str, ...]:
    """Return the AdaBalance optimizer names usable as ``optim``, in registry order.

    Args:
        optimizer_cls (type, optional): the optimizer class whose constructor decides which
            variants exist (a variant is listed only if every keyword it sets is accepted).
            Default: :class:`~adabalance_hf.AdaBalance`
    """
    return tuple(
        name
        for name, kwargs in _VARIANTS.items()
        if set(kwargs) <= _accepted_keywords(_CLASSES.get(name, optimizer_cls))
    )


def optimizer_class(name: str | OptimizerNames) -> type:
    """Return the optimizer class of an AdaBalance optimizer name.

    Args:
        name (str or OptimizerNames): an AdaBalance optimizer name, e.g. ``"adabalance_8bit"``.

    Returns:
        type: :class:`~adabalance_hf.AdaBalance8bit` for the ``*_8bit`` names, else
        :class:`~adabalance_hf.AdaBalance`.
    """
    variant_kwargs(name)  # raises for a name that is not ours
    return _CLASSES.get(optimizer_name_value(name), AdaBalance)


def builtin_optimizer_names() -> tuple[str, ...]:
    """Return transformers' own optimizer names (the values of ``OptimizerNames``)."""
    return tuple(member.value for member in OptimizerNames)


def all_optimizer_names() -> tuple[str, ...]:
    """Return every name ``AdaBalanceTrainingArguments.optim`` accepts (built-in, then ours)."""
    return builtin_optimizer_names() + adabalance_optimizer_names()


def optimizer_name_value(name: str | OptimizerNames) -> str:
    """Return the plain string of an optimizer name given as a string or an ``OptimizerNames``.

    Args:
        name (str or OptimizerNames): the optimizer name.
    """
    return name.value if isinstance(name, OptimizerNames) else str(name)


def is_adabalance_name(name: str | OptimizerNames) -> bool:
    """Return whether ``name`` is one of the AdaBalance optimizer names.

    Args:
        name (str or OptimizerNames): the optimizer name.
    """
    return optimizer_name_value(name) in adabalance_optimizer_names()


def variant_kwargs(name: str | OptimizerNames) -> dict[str, Any]:
    """Return the AdaBalance keyword arguments that the optimizer name ``name`` stands for.

    Args:
        name (str or OptimizerNames): an AdaBalance optimizer name, e.g. ``"adabalance_amsbound"``.

    Raises:
        ValueError: if ``name`` is not an AdaBalance optimizer name.
    """
    value = optimizer_name_value(name)
    if value not in adabalance_optimizer_names():
        raise ValueError(
            f"optim={value!r} is not an AdaBalance optimizer name; valid AdaBalance names: "
            f"{', '.join(adabalance_optimizer_names())}"
        )
    return dict(_VARIANTS[value])


def check_optimizer_name(name: str | OptimizerNames) -> str:
    """Return ``name`` as a plain string if it is a built-in or AdaBalance optimizer name.

    Args:
        name (str or OptimizerNames): the value of ``optim``.

    Raises:
        ValueError: naming the value and listing every valid name.
    """
    value = optimizer_name_value(name)
    if value not in all_optimizer_names():
        raise ValueError(
            f"optim={value!r} is not a known optimizer name. AdaBalance names: "
            f"{', '.join(adabalance_optimizer_names())}; transformers' built-in names: "
            f"{', '.join(builtin_optimizer_names())}"
        )
    return value


def default_optimizer_name() -> str:
    """Return the default of ``TrainingArguments.optim`` in the installed transformers."""
    default = TrainingArguments.__dataclass_fields__["optim"].default
    return optimizer_name_value(default)
