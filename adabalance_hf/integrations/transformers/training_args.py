"""The AdaBalance optimizer names for any ``TrainingArguments`` class.

transformers converts ``optim`` with ``OptimizerNames(...)`` in ``TrainingArguments.__post_init__``
and ``HfArgumentParser`` builds the ``--optim`` choices from that enum, so a new name cannot pass
through the stock class. :class:`AdaBalanceArgumentsMixin` redeclares ``optim`` as a ``str`` with
its own choices (and the other class's default), lets the other class validate everything else
with a built-in placeholder name, and then puts the AdaBalance name back. Built-in names go
through unchanged. AdaBalance's options live in ``optim_args``, as for transformers' own
optimizers: one place per option.
"""

# No ``from __future__ import annotations``: HfArgumentParser reads the field types at runtime.

import dataclasses
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from ._mixin import OrderFreeMixin, declare_field
from .kwargs import adabalance_optimizer_kwargs
from .optim_names import (
    adabalance_optimizer_names,
    all_optimizer_names,
    check_optimizer_name,
    is_adabalance_name,
    optimizer_class,
    optimizer_name_value,
)

__all__ = ["AdaBalanceArgumentsMixin", "AdaBalanceTrainingArguments"]

# Any built-in name works as the placeholder: the other class only converts and stores it.
_PLACEHOLDER = OptimizerNames.ADAMW_TORCH.value


class _Choices(list):
    """The ``--optim`` choices; its type marks the ``optim`` field this module declares.

    (HfArgumentParser passes a field's metadata to ``add_argument``, so no extra key can mark it.)
    """


def _optim_field(default: Any) -> dataclasses.Field:
    return dataclasses.field(
        default=optimizer_name_value(default),
        metadata={
            "help": "The optimizer to use: one of transformers' names or an AdaBalance name ("
            + ", ".join(adabalance_optimizer_names())
            + "). AdaBalance's options go in --optim_args, e.g. 'beta3=0.9,gamma=1e-4'.",
            "choices": _Choices(all_optimizer_names()),
        },
    )


def _check_adabalance_options(args: TrainingArguments) -> None:
    """Build the optimizer's kwargs and a throw-away optimizer now, at argument-parsing time."""
    try:
        kwargs = adabalance_optimizer_kwargs(args)
        probe = torch.zeros(1, requires_grad=True)
        # AdaBalance's own range checks run here instead of at the first training step. Its
        # warnings repeat at the real construction.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer_class(args.optim)([probe], **kwargs)
    except (ValueError, RuntimeError) as error:
        raise ValueError(
            f"{type(args).__name__}(optim={args.optim!r}, optim_args={args.optim_args!r}): "
            f"{error}. AdaBalance's arguments come from learning_rate, adam_beta1, adam_beta2, "
            f"adam_epsilon, weight_decay, the name and optim_args."
        ) from error


def _post_init(self: TrainingArguments, parent: Any) -> None:
    name = check_optimizer_name(self.optim)
    if not is_adabalance_name(name):
        parent()
        return
    self.optim = _PLACEHOLDER
    try:
        parent()
    finally:
        self.optim = name
    _check_adabalance_options(self)


def _set_optimizer(
    self: TrainingArguments,
    parent: Any,
    name: str | OptimizerNames = "adamw_torch",
    *args: Any,
    **kwargs: Any,
) -> TrainingArguments:
    """Set the optimizer and its hyper-parameters, accepting the AdaBalance names too.

    Takes the arguments of ``TrainingArguments.set_optimizer``: ``name``, ``learning_rate``,
    ``weight_decay``, ``beta1``, ``beta2``, ``epsilon`` and ``args`` (``optim_args``).
    """
    value = check_optimizer_name(name)
    adabalance = is_adabalance_name(value)
    parent(_PLACEHOLDER if adabalance else value, *args, **kwargs)
    if adabalance:
        self.optim = value
        _check_adabalance_options(self)
    return self


def _taken_optim_field(cls: type) -> dataclasses.Field | None:
    """The ``optim`` field ``@dataclass`` will give ``cls`` (its own, else the first base's)."""
    own = cls.__dict__.get("optim")
    if "optim" in inspect.get_annotations(cls):
        return own if isinstance(own, dataclasses.Field) else None
    return next(
        (
            base.__dataclass_fields__["optim"]
            for base in cls.__mro__[1:]
            if "optim" in getattr(base, "__dataclass_fields__", {})
        ),
        None,
    )


class AdaBalanceArgumentsMixin(OrderFreeMixin):
    """Give a ``TrainingArguments`` class the AdaBalance optimizer names.

    Mix it into any ``TrainingArguments`` subclass, in either order, under ``@dataclass``::

        @dataclass
        class MyConfig(AdaBalanceArgumentsMixin, trl.KTOConfig):
            pass

    The result keeps every default of the other class (``KTOConfig``'s ``learning_rate``,
    ``logging_steps``, ...) and accepts, besides transformers' built-in names, ``optim``
    ``adabalance`` (the paper's AdaBalance: weight decay as an L2 term), ``adabalance_amsbound``,
    ``adabalancew`` (decoupled weight decay, as AdamW), ``adabalancew_amsbound`` and
    ``adabalance_fused`` / ``adabalancew_fused``. With an AdaBalance name the optimizer gets
    ``lr=learning_rate``, ``betas=(adam_beta1, adam_beta2)``, ``eps=adam_epsilon``,
    ``weight_decay`` (the Trainer exempts biases and norm weights), the fine-tuning defaults
    ``FINE_TUNING_DEFAULTS`` and the options in ``optim_args`` (e.g.
    ``"final_lr=0.1,gamma=1e-3,beta3=0.999,amsbound=true"``), typed. An unknown name, a bad
    ``optim_args`` key or value, or a hyper-parameter AdaBalance rejects raises ``ValueError``
    when the arguments are created (so at argument-parsing time). Pair it with
    :class:`AdaBalanceTrainerMixin`, which builds the optimizer for those names.
    """

    _order_free: ClassVar[dict[str, Any]] = {
        "__post_init__": _post_init,
        "set_optimizer": _set_optimizer,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not any(dataclasses.is_dataclass(base) for base in cls.__mro__[1:]):
            return
        taken = _taken_optim_field(cls)
        if taken is not None and isinstance(taken.metadata.get("choices"), _Choices):
            return
        default = taken.default if taken is not None else OptimizerNames.ADAMW_TORCH
        declare_field(cls, "optim", str, _optim_field(default))


@dataclass
class AdaBalanceTrainingArguments(AdaBalanceArgumentsMixin, TrainingArguments):
    """``transformers.TrainingArguments`` with the AdaBalance optimizer names.

    ``optim="adabalance"`` (or ``--optim adabalance`` through ``HfArgumentParser``), options in
    ``optim_args``; see :class:`AdaBalanceArgumentsMixin`. Use with :class:`AdaBalanceTrainer`.

    Args:
        optim (str, optional): an optimizer name: transformers' or AdaBalance's.
            Default: transformers' default
        **kwargs: the other arguments of ``transformers.TrainingArguments``.

    Raises:
        ValueError: at construction for an unknown ``optim`` (the message lists the valid
            names), a bad ``optim_args`` key or value, or a hyper-parameter AdaBalance rejects.
    """
