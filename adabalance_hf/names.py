"""The AdaBalance optimizer names, and the one place where a name becomes a class and kwargs.

``optim="adabalance"`` (transformers' ``TrainingArguments``, TRL's configs, ``--optim`` on a
command line), the recipes' ``--optimizer`` and :func:`adabalance_cls_and_kwargs` all read the
table below. Each name maps to the keyword arguments that define its variant; a variant that
needs a keyword the installed :class:`~adabalance_hf.AdaBalance` does not accept is left out, so
registering a future variant is one line in ``_VARIANTS``.

Every name also carries :data:`FINE_TUNING_DEFAULTS`: the options a name gets where
``optim_args`` leaves them open. The :class:`~adabalance_hf.AdaBalance` class itself keeps the
paper's defaults. Nothing here imports transformers.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from .optim import AdaBalance, AdaBalance4bit, AdaBalance8bit
from .optim._low_bit import LowBitAdaBalance, check_block_size
from .optim._validation import validate_hyperparameters
from .optim_args import parse_optim_args

__all__ = [
    "FINE_TUNING_DEFAULTS",
    "PAPER_OPTIM_ARGS",
    "OptionError",
    "adabalance_cls_and_kwargs",
    "adabalance_optimizer_names",
    "check_adabalance_kwargs",
    "is_adabalance_name",
    "optimizer_class",
    "optimizer_name_value",
    "variant_kwargs",
]

#: AdaBalance's options under every optimizer name, where ``optim_args`` leaves them open. The
#: paper's ``beta3=0.999`` smooths the step size over about 1,000 steps (after 100 steps it holds
#: 10% of Adam's rate: a short fine-tune barely moves) and its ``gamma=1e-3`` closes the bounds
#: in 10x faster; measured in benchmarks/results/adabalance_defaults_sweep.md and
#: benchmarks/results/name_defaults.md.
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
    "adabalance_4bit": {},
    "adabalancew_4bit": {"decoupled_weight_decay": True},
}
# Names whose optimizer is not AdaBalance itself.
_CLASSES: dict[str, type[AdaBalance]] = {
    "adabalance_8bit": AdaBalance8bit,
    "adabalancew_8bit": AdaBalance8bit,
    "adabalance_4bit": AdaBalance4bit,
    "adabalancew_4bit": AdaBalance4bit,
}


# The optimizer's own messages: "Invalid lr: -0.001; it must lie in [0.0, inf)",
# "Invalid lr: '1e-3' is a str, not a number; pass a float: lr=0.001 (...)".
_INVALID = re.compile(r"Invalid (?P<key>[\w\[\]]+): (?P<detail>.*?); (?:it )?(?P<fix>.*)", re.S)


class OptionError(ValueError):
    """An AdaBalance option is invalid.

    Attributes:
        key (str): what is wrong: an AdaBalance keyword (``"lr"``, ``"betas[0]"``,
            ``"final_lr"``, ``"fused"``, ...) or ``"optim_args"`` for the options string. Callers
            map it to the flag the user set (``lr`` is transformers' ``--learning_rate``).
        reason (str): what is wrong with it and the fix, e.g. ``"must lie in [0.0, inf)"`` (the
            value itself is the caller's to show, with the flag that set it).
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.key, self.reason)


def _accepted_keywords(optimizer_cls: type) -> set[str]:
    return set(inspect.signature(optimizer_cls).parameters)


def adabalance_optimizer_names() -> tuple[str, ...]:
    """Return the AdaBalance optimizer names, in registry order.

    A name is listed only if its class accepts every keyword its variant sets.
    """
    return tuple(
        name
        for name, kwargs in _VARIANTS.items()
        if set(kwargs) <= _accepted_keywords(_CLASSES.get(name, AdaBalance))
    )


def optimizer_name_value(name: Any) -> str:
    """Return the plain string of an optimizer name (a ``str`` or an ``OptimizerNames`` member).

    Args:
        name (str or enum member): the optimizer name.
    """
    return str(getattr(name, "value", name))


def is_adabalance_name(name: Any) -> bool:
    """Return whether ``name`` is one of the AdaBalance optimizer names.

    Args:
        name (str or enum member): the optimizer name.
    """
    return optimizer_name_value(name) in adabalance_optimizer_names()


def variant_kwargs(name: Any) -> dict[str, Any]:
    """Return the AdaBalance keyword arguments that the optimizer name ``name`` stands for.

    Args:
        name (str or enum member): an AdaBalance optimizer name, e.g. ``"adabalance_amsbound"``.

    Raises:
        ValueError: if ``name`` is not an AdaBalance optimizer name (the message lists them).
    """
    value = optimizer_name_value(name)
    if value not in adabalance_optimizer_names():
        raise ValueError(
            f"optim={value!r} is not an AdaBalance optimizer name; valid AdaBalance names: "
            f"{', '.join(adabalance_optimizer_names())}"
        )
    return dict(_VARIANTS[value])


def optimizer_class(name: Any) -> type[AdaBalance]:
    """Return the optimizer class of an AdaBalance optimizer name.

    Args:
        name (str or enum member): an AdaBalance optimizer name, e.g. ``"adabalance_8bit"``.

    Returns:
        type: :class:`~adabalance_hf.AdaBalance8bit` for the ``*_8bit`` names,
        :class:`~adabalance_hf.AdaBalance4bit` for the ``*_4bit`` names, else
        :class:`~adabalance_hf.AdaBalance`.

    Raises:
        ValueError: if ``name`` is not an AdaBalance optimizer name.
    """
    variant_kwargs(name)
    return _CLASSES.get(optimizer_name_value(name), AdaBalance)


def check_adabalance_kwargs(optimizer_cls: type[AdaBalance], kwargs: dict[str, Any]) -> None:
    """Check keyword arguments as ``optimizer_cls``'s constructor does, without building one.

    Args:
        optimizer_cls (type): :class:`~adabalance_hf.AdaBalance` or a subclass.
        kwargs (dict): its keyword arguments (without ``params``).

    Raises:
        OptionError: naming the first invalid keyword, the reason and the fix.
    """
    parameters = inspect.signature(optimizer_cls).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
    try:
        validate_hyperparameters({**defaults, **kwargs})
    except ValueError as error:
        match = _INVALID.match(str(error))
        if match is None:
            raise OptionError("optim_args", str(error)) from None
        detail = match["detail"]  # the bare value, or what is wrong with it
        reason = match["fix"] if " " not in detail else f"{detail}; {match['fix']}"
        raise OptionError(match["key"], reason) from None
    if "block_size" in kwargs and issubclass(optimizer_cls, LowBitAdaBalance):
        try:
            check_block_size(kwargs["block_size"], optimizer_cls.__name__, optimizer_cls._packs())
        except ValueError as error:
            reason = str(error).split("Invalid block_size: ", 1)[1]
            raise OptionError("block_size", reason) from None
    if kwargs.get("fused") and kwargs.get("foreach"):
        raise OptionError(
            "fused",
            "fused=True and foreach=True cannot both be set; pick one (the *_fused names set "
            "fused=True: drop foreach)",
        )


def adabalance_cls_and_kwargs(
    optim: Any,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    optim_args: str | None = None,
    **overrides: Any,
) -> tuple[type[AdaBalance], dict[str, Any]]:
    """Return the optimizer class and keyword arguments that an AdaBalance name stands for.

    The kwargs hold ``lr``, ``betas``, ``eps`` and ``weight_decay``, then
    :data:`FINE_TUNING_DEFAULTS`, then the name's variant (``adabalancew``: decoupled weight
    decay), then the typed options of ``optim_args``, then ``overrides``: each later source
    replaces what the earlier ones set; the result is checked as the class's constructor checks
    it. transformers' handler for the names, ``create_optimizer``, the recipes and
    ``AdaBalanceTrainer`` all build AdaBalance through this function.

    Args:
        optim (str or enum member): an AdaBalance optimizer name, e.g. ``"adabalancew_8bit"``.
        lr (float): the learning rate (transformers' ``learning_rate``).
        betas (tuple, optional): ``(adam_beta1, adam_beta2)``. Default: ``(0.9, 0.999)``
        eps (float, optional): ``adam_epsilon``. Default: ``1e-8``
        weight_decay (float, optional): weight decay. Default: ``0.0``
        optim_args (str, optional): comma-separated ``key=value`` options, e.g.
            ``"final_lr=0.05,amsbound=true"`` (see :func:`~adabalance_hf.optim_args.
            parse_optim_args`). Default: ``None``
        **overrides: keyword arguments of the class that replace everything above.

    Returns:
        tuple: ``(AdaBalance, AdaBalance8bit or AdaBalance4bit; kwargs)``.

    Raises:
        ValueError: for a name that is not AdaBalance's, or an override the class does not take.
        OptionError: (a ``ValueError``) for a bad ``optim_args`` key or value, ``optim_args``
            that contradict the name (``adabalancew`` with ``decoupled_weight_decay=false``),
            or a value the class rejects; its ``key`` names what is wrong.
    """
    name = optimizer_name_value(optim)
    optimizer_cls = optimizer_class(name)
    variant = variant_kwargs(name)
    try:
        options = parse_optim_args(optim_args, optimizer_cls)
    except ValueError as error:
        raise OptionError("optim_args", str(error).removeprefix("optim_args: ")) from None
    for key, value in options.items():
        if key in variant and variant[key] != value:
            raise OptionError(
                "optim_args",
                f"it sets {key}={value!r} but optim={name!r} means {key}={variant[key]!r}; choose "
                f"the optimizer name that has the variant you want "
                f"({', '.join(adabalance_optimizer_names())}) and drop {key} from optim_args",
            )
    valid = [key for key in inspect.signature(optimizer_cls).parameters if key != "params"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown {optimizer_cls.__name__} argument(s) {unknown}; valid arguments: "
            f"{', '.join(valid)}"
        )
    kwargs: dict[str, Any] = {
        "lr": lr,
        "betas": tuple(betas),
        "eps": eps,
        "weight_decay": weight_decay,
        **FINE_TUNING_DEFAULTS,
        **variant,
        **options,
        **overrides,
    }
    check_adabalance_kwargs(optimizer_cls, kwargs)
    return optimizer_cls, kwargs
