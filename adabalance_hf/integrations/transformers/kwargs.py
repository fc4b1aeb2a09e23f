"""Keyword arguments and parameter groups for AdaBalance, built from ``TrainingArguments``."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from transformers import Trainer, TrainingArguments

from ...optim import AdaBalance
from .optim_args import parse_optim_args
from .optim_names import (
    FINE_TUNING_DEFAULTS,
    adabalance_optimizer_names,
    is_adabalance_name,
    optimizer_class,
    optimizer_name_value,
    variant_kwargs,
)

__all__ = ["adabalance_optimizer_kwargs", "trainer_param_groups"]


def adabalance_optimizer_kwargs(args: TrainingArguments, **overrides: Any) -> dict[str, Any]:
    """Build AdaBalance's keyword arguments from training arguments.

    Use with ``Trainer(optimizer_cls_and_kwargs=(AdaBalance, adabalance_optimizer_kwargs(args)))``
    (stock transformers passes those kwargs unchanged and does not add ``lr``: without this
    helper AdaBalance would silently run at its default ``lr=1e-3``) or to construct an
    AdaBalance object for ``Trainer(optimizers=(optimizer, None))``.

    The result holds ``lr=args.learning_rate``, ``betas=(args.adam_beta1, args.adam_beta2)``,
    ``eps=args.adam_epsilon``, ``weight_decay=args.weight_decay``, the fine-tuning defaults
    :data:`FINE_TUNING_DEFAULTS` and, when ``args.optim`` is an AdaBalance name (arguments with
    :class:`AdaBalanceArgumentsMixin`), that name's variant and the options of
    ``args.optim_args``, each later source replacing what the earlier ones set. With another
    ``optim`` (stock ``TrainingArguments``), ``optim_args`` belong to that optimizer and are
    not read: pass AdaBalance's options as ``overrides``.

    Args:
        args (TrainingArguments): the training arguments.
        **overrides: AdaBalance keyword arguments that replace the values above, e.g.
            ``final_lr=0.05``.

    Raises:
        ValueError: if an override is not an AdaBalance keyword argument (the message lists
            them), ``optim_args`` has an unknown key or a bad value, or ``optim_args`` contradicts
            the name's variant (``optim="adabalancew"`` with ``decoupled_weight_decay=false``).
    """
    kwargs: dict[str, Any] = {
        "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "weight_decay": args.weight_decay,
        **FINE_TUNING_DEFAULTS,
    }
    name = optimizer_name_value(args.optim)
    optimizer_cls = optimizer_class(name) if is_adabalance_name(name) else AdaBalance
    if is_adabalance_name(name):
        variant = variant_kwargs(name)
        options = parse_optim_args(args.optim_args, optimizer_cls)
        for key, value in options.items():
            if key in variant and variant[key] != value:
                raise ValueError(
                    f"optim_args sets {key}={value!r} but optim={name!r} means {key}="
                    f"{variant[key]!r}; choose the optimizer name that has the variant you "
                    f"want ({', '.join(adabalance_optimizer_names())}) and drop {key} from "
                    f"optim_args"
                )
        kwargs.update(variant)
        kwargs.update(options)
    valid = [key for key in inspect.signature(optimizer_cls).parameters if key != "params"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"adabalance_optimizer_kwargs: unknown {optimizer_cls.__name__} argument(s) "
            f"{unknown}; valid "
            f"arguments: {', '.join(valid)}"
        )
    kwargs.update(overrides)
    return kwargs


def trainer_param_groups(
    model: nn.Module, weight_decay: float, *, trainer_cls: type[Trainer] = Trainer
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into decay and no-decay groups as the Trainer does.

    The decay names come from ``trainer_cls.get_decay_parameter_names`` (biases and
    LayerNorm/RMSNorm weights get no weight decay), so an optimizer object built before the
    Trainer groups its parameters exactly like ``Trainer.create_optimizer``.

    Args:
        model (nn.Module): the model to optimize.
        weight_decay (float): weight decay of the decay group (usually ``args.weight_decay``).
        trainer_cls (type, optional): the Trainer class whose ``get_decay_parameter_names`` is
            used, for a subclass that overrides it. Default: ``transformers.Trainer``

    Returns:
        list[dict]: ``[{"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0}]``.
    """
    # get_decay_parameter_names is an instance method that reads nothing from the instance
    # (transformers 4.x to 5.23); calling it unbound avoids building a Trainer just for it.
    decay_names = set(trainer_cls.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in named if name in decay_names], "weight_decay": weight_decay},
        {"params": [p for name, p in named if name not in decay_names], "weight_decay": 0.0},
    ]
